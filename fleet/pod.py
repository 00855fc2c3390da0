"""One replica of the Kubernetes pod as processes: TorchServe (harness.server.LocalServer) with the pod's
config.properties and log configuration behind the pod's nginx.conf (Debian's nginx, on loopback, its
ports moved); and the Deployment's probes, drain and grace, read so the drill never plays a copy of them.

Ports from `port_base`: TorchServe's inference, management, metrics and two gRPC ports (+0..+4), the
gateway (+5) and its status page (+6).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from container.keys import write_secret
from frontend import JAR as AGENT_JAR
from harness.server import LocalServer
from repo import REPO
from serve.config import properties

K8S = REPO / "deploy" / "k8s" / "base"
GATEWAY_CONFIG = K8S / "gateway" / "nginx.conf"
# The pod's ports, as nginx.conf has them (tests/integration/test_kubernetes.py checks them against the manifests).
POD_PORTS = {"listen": 8000, "upstream": 8080, "status": 8090}
GATEWAY_OFFSET, STATUS_OFFSET = 5, 6


class FleetError(Exception):
    """The drill cannot play: nginx or HAProxy did not start, a port stays taken, versions answer alike..."""


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Sends `sig` to a process of ours; SIGKILL if it has not exited after `timeout` seconds."""
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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

    def on_replica(self, replica: Replica) -> list[str]:
        client = replica.server.client
        return [*self.local_command(replica.root), "--inference", client.inference, "--management", client.management]


@dataclass(frozen=True)
class Pod:
    startup: Probe
    readiness: Probe
    liveness: Probe
    drain: dict[str, float]  # container.drain's --settle, --quiet, --timeout
    grace: float  # terminationGracePeriodSeconds
    requests: dict[str, str]  # the torchserve container's resource requests (cpu, memory)
    limits: dict[str, str]  # and its limits


def read_pod(path: Path = K8S / "deployment.yaml") -> Pod:
    template = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
    serving = next(c for c in template["containers"] if c["name"] == "torchserve")
    probes = {}
    for name in ("startup", "readiness", "liveness"):
        spec = serving[f"{name}Probe"]
        keys = ("periodSeconds", "timeoutSeconds", "failureThreshold")
        probes[name] = Probe(tuple(spec["exec"]["command"]), *(spec[key] for key in keys))
    drain = serving["lifecycle"]["preStop"]["exec"]["command"]
    return Pod(
        **probes,
        drain={key: float(drain[drain.index(f"--{key}") + 1]) for key in ("settle", "quiet", "timeout")},
        grace=float(template["terminationGracePeriodSeconds"]),
        requests=serving["resources"]["requests"],
        limits=serving["resources"]["limits"],
    )


def gateway_config(listen: int, upstream: int, status: int) -> str:
    """nginx.conf with the gateway on 127.0.0.1:listen, TorchServe at 127.0.0.1:upstream and the
    status page on 127.0.0.1:status (this machine sends traffic to loopback addresses only)."""
    text, ports = GATEWAY_CONFIG.read_text(), POD_PORTS
    for old, new in (
        (f"listen {ports['listen']};", f"listen 127.0.0.1:{listen};"),
        (f"server 127.0.0.1:{ports['upstream']};", f"server 127.0.0.1:{upstream};"),
        (f"listen 127.0.0.1:{ports['status']};", f"listen 127.0.0.1:{status};"),
    ):
        if text.count(old) != 1:
            raise FleetError(f"{GATEWAY_CONFIG}: expected one '{old}' line, found {text.count(old)}")
        text = text.replace(old, new)
    return text


def write_token_map(path: Path, tokens: dict[str, str]) -> None:
    """The Secret's tokens.map, for its owner alone: one `"Bearer <token>" <client name>;` line per client."""
    write_secret(path, "".join(f'"Bearer {token}" {name};\n' for name, token in tokens.items()))


def start_gateway(prefix: Path, listen: int, upstream: int, status: int, tokens: dict[str, str]) -> subprocess.Popen:
    """The pod's gateway: Debian's nginx with nginx.conf's ports moved and `tokens` as its token map,
    its config, token map, pid file and temp folders in `prefix`."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(gateway_config(listen, upstream, status))
    write_token_map(prefix / "tokens.map", tokens)
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        raise FleetError("nginx not found: sudo apt-get install -y nginx")
    # As in the pod, master and workers run as one user: started by root, nginx would hand its
    # workers to `nobody`, who may not reach the prefix (large bodies are buffered there).
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    command = [nginx, "-e", "stderr", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", directives]
    test = subprocess.run([*command, "-t"], capture_output=True, text=True)
    if test.returncode != 0:
        raise FleetError(f"nginx -t: {test.stderr.strip()}")
    with open(prefix / "nginx.out", "ab") as output:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output)


class Replica:
    def __init__(self, name: str, root: Path, port_base: int, model_store: Path, tokens: dict[str, str]):
        self.name, self.root, self.port_base, self.tokens = name, root, port_base, tokens
        vmargs = properties(K8S / "config.properties")["vmargs"].split()  # -javaagent: the image's path
        settings = {
            "metrics_address": f"http://127.0.0.1:{port_base + 2}",
            "metrics_config": str(REPO / "deploy" / "torchserve" / "metrics.yaml"),
            "vmargs": " ".join(f"-javaagent:{AGENT_JAR}" if v.startswith("-javaagent:") else v for v in vmargs),
        }
        self.server = LocalServer(
            root,
            model_store,
            port_base,
            template=K8S / "config.properties",
            settings=settings,
            token_auth=False,
            log_config=K8S / "log4j2.xml",
            timeout=180,
        )
        self.url = f"http://127.0.0.1:{port_base + GATEWAY_OFFSET}"
        self.status_url = f"http://127.0.0.1:{port_base + STATUS_OFFSET}/stub_status"
        self.drain_file = root / "draining"
        self.nginx: subprocess.Popen | None = None

    def wait_for_free_ports(self, timeout: float = 30) -> None:
        """The drill's ports may lie in Linux's ephemeral range (32768-60999), where a client
        connection can hold one as its own port for a while, and TorchServe exits when its gRPC port
        is taken."""
        deadline = time.monotonic() + timeout
        for port in range(self.port_base, self.port_base + STATUS_OFFSET + 1):
            while True:
                try:
                    socket.create_server(("127.0.0.1", port)).close()  # with SO_REUSEADDR, as TorchServe binds
                    break
                except OSError as error:
                    if time.monotonic() > deadline:
                        raise FleetError(f"{self.name}: port {port} stays in use: {error}") from error
                    time.sleep(0.5)

    def start_gateway(self) -> None:
        gateway = self.port_base + GATEWAY_OFFSET
        self.nginx = start_gateway(
            self.root / "gateway", gateway, self.port_base, self.port_base + STATUS_OFFSET, self.tokens
        )

    def start(self) -> float:
        """Starts the gateway (a sidecar: first) and TorchServe; returns the seconds until a prediction answered."""
        self.wait_for_free_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        self.drain_file.unlink(missing_ok=True)
        try:
            self.start_gateway()
            return self.server.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """TorchServe, then the gateway (a sidecar stops after the main container) with SIGQUIT: nginx
        answers what it has, then exits."""
        self.server.stop()
        stop_process(self.nginx, signal.SIGQUIT, timeout=15)
        self.nginx = None

    def kill(self) -> int:
        """kill -9 of every process of the replica (TorchServe, its workers and the gateway), as when
        a pod's node dies; returns how many."""
        victims = self.server.processes()
        if self.nginx is not None:
            with contextlib.suppress(psutil.Error):
                nginx = psutil.Process(self.nginx.pid)
                victims += [nginx, *nginx.children(recursive=True)]
        for process in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        if self.nginx is not None:
            self.nginx.wait()
            self.nginx = None
        return len(victims)
