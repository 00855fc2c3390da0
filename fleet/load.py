"""What runs beside the replicas during the drill: Locust (the load), a prober that tells the model
versions apart, a sampler of CPU and memory, and the kubelet's liveness probe.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from serve.archive import REPO
from serve.healthcheck import probe_png
from serve.server import cpu_seconds


@dataclass(frozen=True)
class Sent:
    time: float  # when the answer came
    ms: float
    failure: str

    @property
    def rejected(self) -> bool:
        """TorchServe's 503 for a full queue (passed through the gateway)."""
        return "HTTP 503" in self.failure


def start_locust(
    url: str, token: str, users: int, payloads: Path, log: Path, *, user="ClassifierUser", rate=0.0, seconds="30m"
):
    """Locust's steady scenario (valid images and 5 % bad payloads): `users` users for `seconds`,
    each with one keep-alive connection (FastHttpUser), as real clients keep theirs."""
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/steady.py,fleet/record.py", "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", seconds, "--host", url, "--inference-key", token,
        "--key-file", str(log.parent / "no-key-file.json"), "--payloads", str(payloads), user,
    ]  # fmt: skip
    env = {**os.environ, "FLEET_REQUEST_LOG": str(log), "FLEET_USER_RATE": str(rate or ""), "PYTHONPATH": str(REPO)}
    with open(log.with_suffix(".out"), "ab") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output)


def stop_locust(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_sent(log: Path) -> list[Sent]:
    with open(log, newline="") as handle:
        return [Sent(float(r["time"]), float(r["milliseconds"]), r["failure"]) for r in csv.DictReader(handle)]


class Periodic(threading.Thread):
    """Calls `tick()` every `period` seconds until stopped."""

    def __init__(self, period: float):
        super().__init__(daemon=True)
        self.period, self.stopping = period, threading.Event()

    def run(self):
        while not self.stopping.wait(self.period):
            self.tick()

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self):
        self.stopping.set()
        self.join()


class Prober(Periodic):
    """Sends the fixed image through the balancer every 100 ms: (time, status, answer text)."""

    def __init__(self, url: str, token: str):
        super().__init__(0.1)
        self.url, self.session, self.answers = f"{url}/predictions/cifar10", requests.Session(), []
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}

    def tick(self):
        try:
            response = self.session.post(self.url, data=probe_png(), headers=self.headers, timeout=30)
            self.answers.append((time.time(), response.status_code, response.text))
        except requests.RequestException as error:
            self.answers.append((time.time(), 0, str(error)))


class Sampler(Periodic):
    """Once a second: replicas in service, each TorchServe's CPU (cores) and RSS (frontend and
    workers), Locust's CPU and the machine's busy cores."""

    def __init__(self, fleet, locust: list[psutil.Process]):
        super().__init__(1.0)
        self.fleet, self.locust, self.rows, self.last = fleet, locust, [], {}

    def cores(self, key, seconds: float) -> float:
        now, (then, used) = time.time(), self.last.get(key, (time.time(), seconds))
        self.last[key] = (now, seconds)
        return (seconds - used) / max(now - then, 1e-3)

    def tick(self):
        replicas = {}
        for slot, replica in list(self.fleet.replicas.items()):
            rss = 0
            for process in replica.server.processes():
                with contextlib.suppress(psutil.Error):
                    rss += process.memory_info().rss
            replicas[slot] = {"cpu": self.cores(slot, replica.server.cpu_seconds()), "rss_mb": rss / 2**20}
        locust = cpu_seconds(self.locust)
        up = sum(s.status.startswith("UP") for s in self.fleet.balancer.states().values())
        busy = psutil.cpu_percent() / 100 * psutil.cpu_count()
        self.rows.append(
            {
                "time": time.time(),
                "replicas": replicas,
                "up": up,
                "locust_cpu": self.cores("locust", locust),
                "machine_cpu": busy,
            }
        )


class Kubelet(Periodic):
    """The liveness probe as the kubelet runs it: the Deployment's command on every replica each
    period, with its timeout; `failure_threshold` failures in a row would restart the container
    (counted in `restarts`, not done: the drill must show that none is due)."""

    def __init__(self, fleet, probe):
        super().__init__(probe.period)
        self.fleet, self.probe, self.failures, self.restarts, self.checks = fleet, probe, {}, [], 0

    def tick(self):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        running = {}
        for slot, replica in list(self.fleet.replicas.items()):
            command = self.probe.on_replica(replica)
            running[slot] = subprocess.Popen(
                command, cwd=replica.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.probe.timeout
        for slot, process in running.items():
            try:
                passed = process.wait(timeout=max(deadline - time.monotonic(), 0.01)) == 0
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                passed = False
            self.checks += 1
            self.failures[slot] = 0 if passed else self.failures.get(slot, 0) + 1
            if self.failures[slot] >= self.probe.failure_threshold:
                self.restarts.append((time.time(), slot))
                self.failures[slot] = 0
