"""What the drill plays, read from the Deployment (deploy/k8s/base/deployment.yaml): the probes'
commands and timings, the preStop drain's arguments and the termination grace, so that the drill
runs the pod's probes as the kubelet does and never a copy of them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from serve.archive import REPO

DEPLOYMENT = REPO / "deploy" / "k8s" / "base" / "deployment.yaml"


@dataclass(frozen=True)
class Probe:
    command: tuple[str, ...]
    period: float
    timeout: float
    failure_threshold: int

    def local_command(self, run: Path) -> list[str]:
        """The command on this machine: this interpreter for `python`, the drain file in `run` (the
        replica's folder, as the pod's run/ is TorchServe's working directory)."""
        command = [sys.executable if self.command[0] == "python" else self.command[0], *self.command[1:]]
        if "--drain-file" in command:
            index = command.index("--drain-file") + 1
            command[index] = str(run / Path(command[index]).name)
        return command

    def on_replica(self, replica) -> list[str]:
        """The command for a fleet.replica.Replica, with its TorchServe's addresses."""
        client = replica.server.client
        return [*self.local_command(replica.root), "--inference", client.inference, "--management", client.management]


@dataclass(frozen=True)
class Pod:
    startup: Probe
    readiness: Probe
    liveness: Probe
    drain: dict[str, float]  # serve.drain's --settle, --quiet, --timeout
    grace: float  # terminationGracePeriodSeconds
    requests: dict[str, str]  # the torchserve container's resource requests (cpu, memory)

    @property
    def seconds_to_take_out(self) -> float:
        """As the endpoints controller: readiness fails `failure_threshold` checks, `period` apart."""
        return self.readiness.period * self.readiness.failure_threshold


def _probe(spec: dict) -> Probe:
    return Probe(
        tuple(spec["exec"]["command"]), spec["periodSeconds"], spec["timeoutSeconds"], spec["failureThreshold"]
    )


def read_pod(path: Path = DEPLOYMENT) -> Pod:
    template = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
    serving = next(c for c in template["containers"] if c["name"] == "torchserve")
    drain = serving["lifecycle"]["preStop"]["exec"]["command"]
    return Pod(
        startup=_probe(serving["startupProbe"]),
        readiness=_probe(serving["readinessProbe"]),
        liveness=_probe(serving["livenessProbe"]),
        drain={key: float(drain[drain.index(f"--{key}") + 1]) for key in ("settle", "quiet", "timeout")},
        grace=float(template["terminationGracePeriodSeconds"]),
        requests=serving["resources"]["requests"],
    )
