"""The fleet drill: the Kubernetes Deployment's behaviour played with processes on this machine.

    python -m fleet.drill --run-a models/fleet/a --run-b models/fleet/b     (make fleet-drill)

Replicas of the pod (fleet/pod.py) behind HAProxy playing a Service (fleet/balancer.py), under
Locust's load, a prober telling the versions apart, a CPU/memory sampler and the liveness probe:

1. rolling update A -> B as maxSurge 1 / maxUnavailable 0: start a B replica, wait until readiness
   puts it in service, drain an A replica (readiness takes it out), stop it;
2. kill -9 of a whole replica: it leaves only when readiness has failed, as with a Service;
3. scale from one replica to two under the same load;
4. overload: two replicas, about twice their measured throughput offered, the probes running.

Writes <out>/fleet-drill.md, .csv and .png (fleet/report.py, with the bounds); exits 1 when a bound
is broken, 2 when the drill cannot play.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import psutil
import requests

from container.drain import drain
from container.healthcheck import call, probe_png
from fleet.balancer import Balancer
from fleet.pod import FleetError, Replica, read_pod, stop_process
from fleet.report import read_sent, write_report
from harness.other_work import OtherWork, add_noisy_option, exits_when_busy
from harness.server import cpu_seconds
from loadtests.payloads import DEFAULT_FOLDER as PAYLOADS
from repo import REPO
from serve.archive import build_archive


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module's docstring as written, and each option's default."""


@dataclass
class DrillOptions:
    root: Path
    out: Path
    run_a: Path
    run_b: Path
    port_base: int
    users: int = field(default=16, metadata={"help": "steady users"})
    warm: float = field(default=10.0, metadata={"help": "seconds of load before the first scenario"})
    hold: float = field(default=10.0, metadata={"help": "seconds of load after each change"})
    scale_hold: float = field(default=30.0, metadata={"help": "seconds measured with one, then two replicas"})
    overload_seconds: float = field(default=60.0, metadata={"help": "seconds of overload"})
    overload_users: int = field(default=768, metadata={"help": "overload users (more than the replicas' queues hold)"})
    capacity: float = field(default=0.0, metadata={"help": "two replicas' req/s (0: measured in the scale scenario)"})
    scenarios: tuple[str, ...] = ("rolling", "kill", "scale", "overload")
    replicas: int = 2  # of version A before the rolling update (kill, scale and overload need 2)
    payloads: Path = field(default=PAYLOADS, metadata={"help": "Locust's images (make payloads)"})


class Event(NamedTuple):
    time: float
    what: str
    data: dict


def start_locust(
    url: str, token: str, users: int, payloads: Path, log: Path, user="ClassifierUser", rate=0.0, seconds=1800
):
    """Locust's steady scenario (valid images and 5 % bad payloads): `users` users for `seconds`, each
    with one keep-alive connection (FastHttpUser), as real clients keep theirs; fleet/record.py logs
    every request to `log`. Its own summary goes to its output file only, written whatever the
    machine's load (--noisy): the command that runs it judges the machine, over all its processes."""
    command = [sys.executable, "-m", "locust", "-f", "loadtests/steady.py,fleet/record.py", "--headless", "--noisy"]
    command += ["--only-summary", "-u", str(users), "-r", str(users), "-t", f"{seconds:.0f}s", "--host", url]
    command += ["--key-file", str(log.parent / "no-key-file.json")]
    command += ["--payloads", str(payloads), user] + (["--user-rate", str(rate)] if rate else [])
    # The token in the environment, which only this user can read (a command line, everyone can).
    env = {**os.environ, "FLEET_REQUEST_LOG": str(log), "PYTHONPATH": str(REPO), "LOADTEST_INFERENCE_KEY": token}
    with open(log.with_suffix(".out"), "ab") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output)


class Drill:
    """One run of the scenarios: the balancer, the replicas in service, what runs beside them (Locust,
    a prober telling the versions apart, a sampler, the kubelet's liveness probe) and what happened when."""

    def __init__(self, options: DrillOptions):
        self.options, self.root, self.token, self.pod = options, options.root, secrets.token_hex(32), read_pod()
        self.runs = {"A": options.run_a, "B": options.run_b}
        self.versions = {
            name: json.loads((run / "metadata.json").read_text())["version"] for name, run in self.runs.items()
        }
        self.probe_answers: dict[str, str] = {}  # each version's answer to the probe image, as JSON text
        self.slots = {f"r{index}": options.port_base + 10 * index for index in range(1, 5)}
        self.balancer = Balancer(self.root, options.port_base, self.slots, self.pod.readiness)
        self.replicas: dict[str, Replica] = {}
        self.events: list[Event] = []
        self.windows: dict[str, tuple[float, float]] = {}  # what the report measures: name -> (start, end)
        self.figures: dict = {"versions": self.versions, "pod": self.pod, "retired": {}, "events": self.events}
        self.answers: list[tuple[float, int, str]] = []  # the prober's (time, status, answer text)
        self.samples: list[dict] = []
        self.cpu: dict[str, tuple[float, float]] = {}  # the sampler's last (time, CPU seconds) of each
        self.restarts: list[tuple[float, str]] = []  # liveness restarts due: (time, slot)
        self.liveness_failures: dict[str, int] = {}
        self.liveness_checks = 0
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.log = self.root / "requests.csv"

    def event(self, what: str, **data) -> Event:
        event = Event(time.time(), what, data)
        with self.lock:
            self.events.append(event)
        print(f"[{time.strftime('%H:%M:%S')}] {what} {data if data else ''}", flush=True)
        return event

    def hold(self, seconds: float, window: str, start: float) -> None:
        """Keeps the load on for `seconds`, then records the window `window` from `start` until now."""
        time.sleep(seconds)
        self.windows[window] = (start, time.time())

    def add(self, slot: str, version: str) -> None:
        """Starts a replica of `version` in `slot`; returns once readiness has put it in service."""
        store = self.root / f"store-{version}"
        replica = Replica(slot, self.root / slot, self.slots[slot], store, {"drill": self.token})
        self.event("start", replica=slot, version=version)
        seconds = replica.start()
        self.replicas[slot] = replica
        answer = call(f"{replica.url}/predictions/cifar10", self.token, "POST", probe_png(), timeout=30)
        self.probe_answers.setdefault(version, answer.decode())
        self.balancer.enable(slot)
        self.balancer.wait_status(slot, "UP")
        self.event("in service", replica=slot, version=version, ready_seconds=round(seconds, 1))

    def retire(self, slot: str) -> None:
        """The pod's termination: the preStop drain (readiness fails, the balancer takes it out), then
        SIGTERM: TorchServe stops, then the gateway."""
        replica = self.replicas.pop(slot)
        started = time.monotonic()
        self.event("drain", replica=slot)
        drain(replica.drain_file, replica.status_url, **self.pod.drain, log=lambda _message: None)  # preStop
        status = self.balancer.states()[slot].status
        self.event("SIGTERM", replica=slot, balancer=status)
        replica.stop()
        self.figures["retired"][slot] = {"status": status, "seconds": time.monotonic() - started}
        self.balancer.disable(slot)
        self.event("stopped", replica=slot)

    def rolling(self) -> None:
        """The rolling update A -> B (maxSurge 1, maxUnavailable 0)."""
        start = self.event("rolling update").time
        for new, old in (("r3", "r1"), ("r4", "r2"))[: self.options.replicas]:
            self.add(new, "B")
            self.retire(old)
        self.hold(self.options.hold, "rolling update", start)
        if self.probe_answers["A"] == self.probe_answers["B"]:
            raise FleetError("versions A and B give the same answer to the probe image: cannot tell them apart")

    def kill(self) -> None:
        """kill -9 of a replica (r4); it stays in rotation until its readiness fails."""
        start = self.event("kill scenario").time
        time.sleep(self.options.hold)
        before = self.balancer.states()["r4"]
        killed_at = time.time()
        processes = self.replicas.pop("r4").kill()
        self.event("kill -9", replica="r4", processes=processes, connections=before.connections)
        readiness = self.pod.readiness
        timeout = readiness.period * readiness.failure_threshold + 2 * readiness.timeout + 10
        down_seconds = self.balancer.wait_status("r4", "DOWN", timeout=timeout)
        arrived = self.balancer.states()["r4"].total - before.total
        self.event("out of rotation", replica="r4", seconds=round(down_seconds, 1))
        self.balancer.disable("r4")
        self.figures["kill"] = {"killed_at": killed_at, "open_connections": before.connections, "arrived": arrived}
        self.windows["before kill"] = (start, killed_at)
        self.hold(self.options.hold, "kill -9", killed_at)

    def scale(self) -> None:
        """From one replica (r3) to two."""
        for slot in [slot for slot in self.replicas if slot != "r3"]:
            self.retire(slot)
        self.hold(self.options.scale_hold, "one replica", self.event("one replica").time)
        self.add("r1", "B")
        self.hold(self.options.scale_hold, "two replicas", self.event("two replicas").time)

    def overload(self) -> None:
        """Two replicas, twice their capacity offered by PacedUsers, beside the steady load."""
        capacity, users, seconds = self.options.capacity, self.options.overload_users, self.options.overload_seconds
        if not capacity:  # what two replicas answered in the scale scenario
            start, end = self.windows["two replicas"]
            capacity = sum(start <= s.time < end for s in read_sent(self.log)) / (end - start)
        offered, log = 2 * capacity, self.root / "overload.csv"
        downs = sum(state.downs for state in self.balancer.states().values())
        start = self.event("overload", offered_per_second=round(offered), users=users).time
        args = (self.balancer.url, self.token, users, self.options.payloads, log, "PacedUser", offered / users)
        start_locust(*args, seconds).wait(timeout=seconds + 120)
        end = self.event("overload ends").time
        self.windows["overload"] = (start, end)
        self.hold(self.options.hold * 2, "after overload", end)
        sent, removals = read_sent(log), sum(state.downs for state in self.balancer.states().values()) - downs
        self.figures["overload"] = {"offered": offered, "capacity": capacity, "sent": sent, "removals": removals}

    def every(self, period: float, tick, *args) -> threading.Thread:
        """A thread calling `tick(*args)` every `period` seconds until `stopping` is set."""
        thread = threading.Thread(target=self.repeat, args=(period, tick, *args), daemon=True)
        thread.start()
        return thread

    def repeat(self, period: float, tick, *args) -> None:
        while not self.stopping.wait(period):
            tick(*args)

    def probe(self, session: requests.Session) -> None:
        """The fixed image through the balancer, every 100 ms: which version answers, or that it failed."""
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "image/png"}
            url = f"{self.balancer.url}/predictions/cifar10"
            response = session.post(url, data=probe_png(), headers=headers, timeout=30)
            self.answers.append((time.time(), response.status_code, response.text))
        except requests.RequestException as error:
            self.answers.append((time.time(), 0, str(error)))

    def cores(self, key: str, seconds: float) -> float:
        """CPU cores used by `key` since the last sample, from its CPU seconds so far."""
        now = time.time()
        then, used = self.cpu.get(key, (now, seconds))
        self.cpu[key] = (now, seconds)
        return (seconds - used) / max(now - then, 1e-3)

    def sample(self, locust: psutil.Process) -> None:
        """Replicas in service, each TorchServe's CPU (cores) and RSS (frontend and workers), Locust's
        CPU and the machine's busy cores."""
        replicas = {}
        for slot, replica in list(self.replicas.items()):
            rss = 0
            for process in replica.server.processes():
                with contextlib.suppress(psutil.Error):
                    rss += process.memory_info().rss
            replicas[slot] = {"cpu": self.cores(slot, replica.server.cpu_seconds()), "rss_mb": rss / 2**20}
        self.samples.append(
            {
                "time": time.time(),
                "replicas": replicas,
                "up": sum(s.status.startswith("UP") for s in self.balancer.states().values()),
                "locust_cpu": self.cores("locust", cpu_seconds([locust])),
                "machine_cpu": psutil.cpu_percent() / 100 * psutil.cpu_count(),
            }
        )

    def check_liveness(self) -> None:
        """The liveness probe as the kubelet runs it: the Deployment's command on every replica, with
        its timeout; `failure_threshold` failures in a row would restart the container (counted in
        `restarts`, not done: the drill must show that none is due)."""
        env, probe = {**os.environ, "PYTHONPATH": str(REPO)}, self.pod.liveness
        running = {}
        for slot, replica in list(self.replicas.items()):
            command = probe.on_replica(replica)
            running[slot] = subprocess.Popen(
                command, cwd=replica.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        deadline = time.monotonic() + probe.timeout
        for slot, process in running.items():
            try:
                passed = process.wait(timeout=max(deadline - time.monotonic(), 0.01)) == 0
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                passed = False
            self.liveness_checks += 1
            self.liveness_failures[slot] = 0 if passed else self.liveness_failures.get(slot, 0) + 1
            if self.liveness_failures[slot] >= probe.failure_threshold:
                self.restarts.append((time.time(), slot))
                self.liveness_failures[slot] = 0

    def play(self) -> dict:
        """Runs the scenarios; returns what the report needs."""
        for version, run in self.runs.items():
            build_archive(run, self.root / f"store-{version}")
        if self.versions["A"] == self.versions["B"]:
            raise FleetError(f"runs {self.runs['A']} and {self.runs['B']} have the same version: train two runs")
        load, threads, scenarios = None, [], self.options.scenarios
        try:
            self.balancer.start()
            rolling = "rolling" in scenarios
            for slot in (["r1", "r2"] if rolling else ["r3", "r4"])[: self.options.replicas]:
                self.add(slot, "A" if rolling else "B")
            load = start_locust(self.balancer.url, self.token, self.options.users, self.options.payloads, self.log)
            threads = [
                self.every(0.1, self.probe, requests.Session()),
                self.every(1.0, self.sample, psutil.Process(load.pid)),
                self.every(self.pod.liveness.period, self.check_liveness),
            ]
            load_start = self.event("load", users=self.options.users).time
            time.sleep(self.options.warm)
            if load.poll() is not None:
                raise FleetError(
                    f"Locust exited with {load.returncode} before the first scenario: see {self.log.with_suffix('.out')}"
                )
            for name in DrillOptions.scenarios:  # in this order
                if name in scenarios:
                    getattr(self, name)()
            self.windows["whole run"] = (load_start, time.time())
        finally:
            self.stopping.set()
            for thread in threads:
                thread.join()
            stop_process(load)
            self.close()
        names = {answer: version for version, answer in self.probe_answers.items()}
        probes = [(t, names.get(text, "other") if status == 200 else "failed") for t, status, text in self.answers]
        return {
            **self.figures,
            "windows": self.windows,
            "sent": read_sent(self.log),
            "probes": probes,
            "samples": self.samples,
            "restarts": self.restarts,
            "liveness_checks": self.liveness_checks,
        }

    def close(self) -> None:
        if self.balancer.process is not None:
            states = self.balancer.states().values()
            retries, redispatches = sum(s.retries for s in states), sum(s.redispatches for s in states)
            self.figures["balancer"] = {"retries": retries, "redispatches": redispatches}
        for slot in list(self.replicas):
            self.replicas.pop(slot).stop()
        self.balancer.stop()


def play(options: DrillOptions) -> dict:
    """Plays the scenarios in a fresh `options.root`; returns the figures the report needs."""
    shutil.rmtree(options.root, ignore_errors=True)
    options.root.mkdir(parents=True)
    return Drill(options).play()


@exits_when_busy
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.drill", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--run-a", type=Path, required=True, help="training run of version A")
    parser.add_argument("--run-b", type=Path, required=True, help="training run of version B (another seed)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "fleet", help="the report's folder")
    workdir = REPO / "logs" / "fleet-drill"
    parser.add_argument(
        "--workdir", dest="root", metavar="WORKDIR", type=Path, default=workdir, help="replicas' folders"
    )
    parser.add_argument("--port-base", type=int, default=38500, help="HAProxy's port; replica i at +10*i")
    for option in fields(DrillOptions):
        if "help" in option.metadata:
            name, default = "--" + option.name.replace("_", "-"), option.default
            parser.add_argument(name, type=type(default), default=default, help=option.metadata["help"])
    parser.add_argument("--scenarios", default=",".join(DrillOptions.scenarios), help="comma-separated")
    add_noisy_option(parser)
    args = parser.parse_args(argv)
    args.root, args.scenarios = args.root.resolve(), tuple(args.scenarios.split(","))
    other_work = OtherWork(noisy=vars(args).pop("noisy"))
    options = DrillOptions(**vars(args))
    try:
        with other_work:
            figures = play(options)
    except (FleetError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m fleet.drill " + " ".join(argv if argv is not None else sys.argv[1:])
    results = write_report(figures, options, command, other_work)
    for bound, held, text in results:
        print(f"{'held' if held else 'BROKEN'}: {bound}: {text}")
    return 0 if all(held for _bound, held, _text in results) else 1


if __name__ == "__main__":
    sys.exit(main())
