"""HAProxy (Debian's 2.6) in front of the replicas, playing the Kubernetes Service with readiness.

Its health check of a replica is the pod's readinessProbe command, `python -m serve.healthcheck
--predict --drain-file ...` (HAProxy's external check), so the balancer stops sending to a
replica that is draining, has no READY worker, or cannot predict. A connection refused marks a
replica down at once (observe layer4), as when a pod's node dies. Replicas are slots (`r1`..)
declared in maintenance; `enable` hands one to the checks, which put it in service once they
pass, as Kubernetes adds a pod to the Service's endpoints when its readiness probe passes.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.replica import GATEWAY_OFFSET
from serve.archive import REPO

# As the pod's readinessProbe (periodSeconds 5, timeoutSeconds 5, failureThreshold 2): a check every
# 5 s, each allowed 5 s (HAProxy 2.6 kills an external check after min(inter, timeout connect), as
# seen here: with 1-2 s, a prediction waiting behind a busy queue took the only replica out), and 2
# failures in a row take a replica out; one pass puts it in service.
CHECK_SECONDS = 5.0
FALL = 2
# The longest a drain must wait before the balancer has stopped sending: the drain file is written
# just after a passed check, and FALL checks later the replica is out.
SECONDS_TO_TAKE_OUT = CHECK_SECONDS * FALL + 1


class BalancerError(Exception):
    """HAProxy did not start, or did not answer on its runtime socket."""


CONFIG = """\
# Written by fleet/balancer.py for one drill run.
global
    stats socket {socket} mode 600 level admin
    external-check
    insecure-fork-wanted
    maxconn 4096
    # One thread: HAProxy 2.6.12 (Debian 12) aborted here ("bug condition task->thread_mask")
    # when `on-error mark-down` took a killed replica down while other threads ran streams.
    nbthread 1

defaults
    mode http
    # Also bounds an external check's time (see CHECK_SECONDS).
    timeout connect {inter}ms
    timeout client 60s
    timeout server 60s
    timeout check 5s
    retries 3
    option redispatch 1
    http-reuse safe

frontend fleet
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option external-check
    external-check path "/usr/bin:/bin"
    external-check command {check}
    default-server inter {inter}ms rise 1 fall {fall}
    default-server observe layer4 error-limit 1 on-error mark-down
{servers}
"""

CHECK_SCRIPT = """\
#!/bin/sh
# HAProxy's external check of one replica: the pod's readinessProbe command (deploy/k8s).
# $4 is the replica's gateway port; TorchServe's inference and management ports lie
# {inference_offset} and {management_offset} below it. It runs in the replica's working directory, as the probe
# runs in the pod's (no key_file.json there: token auth is off).
cd "{root}/$HAPROXY_SERVER_NAME" || exit 1
PYTHONPATH={repo} exec {python} -m serve.healthcheck --predict \\
    --inference "http://127.0.0.1:$(($4 - {inference_offset}))" \\
    --management "http://127.0.0.1:$(($4 - {management_offset}))" --drain-file draining >>check.log 2>&1
"""


@dataclass
class ServerState:
    name: str
    status: str  # UP, DOWN, MAINT, "UP 1/2", ...
    in_flight: int  # current sessions on it (HAProxy's scur)
    total: int  # sessions sent to it so far (stot)


class Balancer:
    def __init__(self, root: Path, port: int, slots: dict[str, int]):
        """slots: server name -> the port base of the replica that will run there."""
        self.root, self.port, self.slots = root, port, slots
        self.socket_path = root / "haproxy.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if haproxy is None:
            raise BalancerError("haproxy not found: sudo apt-get install -y haproxy")
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # a last run's: start() waits for the new one
        check = self.root / "check-replica"
        check.write_text(
            CHECK_SCRIPT.format(
                repo=REPO,
                python=sys.executable,
                root=self.root,
                inference_offset=GATEWAY_OFFSET,
                management_offset=GATEWAY_OFFSET - 1,
            )
        )
        check.chmod(0o755)
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{base + GATEWAY_OFFSET} check disabled" for name, base in self.slots.items()
        )
        config = self.root / "haproxy.cfg"
        config.write_text(
            CONFIG.format(
                socket=self.socket_path,
                port=self.port,
                check=check,
                inter=int(CHECK_SECONDS * 1000),
                fall=FALL,
                servers=servers,
            )
        )
        with open(self.root / "haproxy.out", "ab") as output:
            self.process = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BalancerError(f"haproxy did not start: see {self.root / 'haproxy.out'}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            try:
                connection.connect(str(self.socket_path))
                connection.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
            except OSError as error:
                raise BalancerError(f"haproxy runtime API: {error}") from error
        return b"".join(chunks).decode()

    def states(self) -> dict[str, ServerState]:
        text = self.command("show stat").lstrip("# ")
        states = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == "replicas" and row["svname"] in self.slots:
                states[row["svname"]] = ServerState(
                    row["svname"], row["status"], int(row["scur"] or 0), int(row["stot"] or 0)
                )
        return states

    def enable(self, name: str) -> None:
        """Out of maintenance as DOWN (both commands in one call: no request reaches it between them);
        a passed check puts it in service, as the readiness probe adds a pod to the endpoints."""
        self.command(f"enable server replicas/{name}; set server replicas/{name} health down")

    def disable(self, name: str) -> None:
        self.command(f"disable server replicas/{name}")

    def wait_status(self, name: str, status: str, timeout: float = 60) -> float:
        """Seconds until the server's status is `status` (UP or DOWN)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.states()[name].status == status:
                return time.monotonic() - started
            time.sleep(0.05)
        raise BalancerError(f"{name} not {status} after {timeout:.0f}s: {self.states()[name]}")
