"""HAProxy (Debian's 2.6) in front of the replicas, with a Kubernetes Service's semantics.

A Service balances connections, never retries or redispatches, and never marks a pod down on its
own: a pod leaves only when its readiness probe has failed `failureThreshold` times. So: `mode tcp`,
`retries 0`, no `option redispatch`, no `observe`; the only health check is the Deployment's
readinessProbe command as an external check. The drill reads `wretr` and `wredis` to prove that no
retry or redispatch happened. Replicas are slots (`r1`..) declared in maintenance; `enable` hands one
to the checks, which put it in service once one passes, as the endpoints controller does.
"""

from __future__ import annotations

import csv
import io
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.pod import GATEWAY_OFFSET, FleetError, Probe, stop_process
from repo import REPO

CONFIG = """\
# Written by fleet/balancer.py for one drill run: a Kubernetes Service's semantics.
global
    stats socket {socket} mode 600 level admin
    external-check
    insecure-fork-wanted
    maxconn 4096

defaults
    mode tcp
    retries 0
    # An external check is killed after min(inter, timeout connect): the probe's timeoutSeconds.
    timeout connect {timeout}ms
    timeout client 120s
    timeout server 120s

frontend fleet
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option external-check
    external-check path "/usr/bin:/bin"
    external-check command {check}
    default-server inter {inter}ms rise 1 fall {fall}
{servers}
"""

# $4 is the replica's gateway port; TorchServe's APIs lie below it. It runs in the replica's folder,
# as the probe runs in the pod's working directory.
CHECK_SCRIPT = """\
#!/bin/sh
cd "{root}/$HAPROXY_SERVER_NAME" || exit 1
inference="http://127.0.0.1:$(($4 - {offset}))" management="http://127.0.0.1:$(($4 - {offset} + 1))"
PYTHONPATH={repo} exec {command} --inference "$inference" --management "$management" >>check.log 2>&1
"""


@dataclass
class ServerState:
    status: str  # UP, DOWN, MAINT, "UP 1/2", ...
    connections: int  # open now (scur)
    total: int  # connections sent to it so far (stot)
    retries: int  # wretr
    redispatches: int  # wredis
    downs: int  # UP -> DOWN transitions by its checks (chkdown)


class Balancer:
    def __init__(self, root: Path, port: int, slots: dict[str, int], readiness: Probe):
        """slots: server name -> the port base of the replica that will run there."""
        self.root, self.port, self.slots, self.readiness = root, port, slots, readiness
        self.url = f"http://127.0.0.1:{port}"
        self.socket_path = root / "haproxy.sock"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if haproxy is None:
            raise FleetError("haproxy not found: sudo apt-get install -y haproxy")
        self.socket_path.unlink(missing_ok=True)  # a last run's: start() waits for the new one
        check = self.root / "check-replica"
        command = shlex.join(self.readiness.local_command(Path(".")))  # run in the replica's folder
        check.write_text(CHECK_SCRIPT.format(root=self.root, offset=GATEWAY_OFFSET, repo=REPO, command=command))
        check.chmod(0o755)
        servers = [
            f"    server {name} 127.0.0.1:{base + GATEWAY_OFFSET} check disabled" for name, base in self.slots.items()
        ]
        config = self.root / "haproxy.cfg"
        config.write_text(
            CONFIG.format(
                socket=self.socket_path,
                port=self.port,
                check=check,
                inter=int(self.readiness.period * 1000),
                timeout=int(self.readiness.timeout * 1000),
                fall=self.readiness.failure_threshold,
                servers="\n".join(servers),
            )
        )
        with open(self.root / "haproxy.out", "ab") as output:
            self.process = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        deadline = time.monotonic() + 10
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"haproxy did not start: see {self.root / 'haproxy.out'}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.process = None

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            try:
                connection.connect(str(self.socket_path))
                connection.sendall(line.encode() + b"\n")
                return b"".join(iter(lambda: connection.recv(65536), b"")).decode()
            except OSError as error:
                raise FleetError(f"haproxy runtime API: {error}") from error

    def states(self) -> dict[str, ServerState]:
        keys = ("scur", "stot", "wretr", "wredis", "chkdown")
        return {
            row["svname"]: ServerState(row["status"], *(int(row[key] or 0) for key in keys))
            for row in csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
            if row["pxname"] == "replicas" and row["svname"] in self.slots
        }

    def enable(self, name: str) -> None:
        """Out of maintenance as DOWN (in one call: no connection reaches it between the two); a
        passed readiness check puts it in service."""
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
        raise FleetError(f"{name} not {status} after {timeout:.0f}s: {self.states()[name]}")
