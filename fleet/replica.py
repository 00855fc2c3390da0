"""One replica of the Kubernetes pod as processes: TorchServe run by `serve.server.LocalServer` with
the pod's config.properties and log configuration (token auth off, APIs on loopback, console logs),
and the pod's nginx gateway in front of it, each replica in its own folder and on its own ports.

Ports from `port_base`: TorchServe's inference, management, metrics and two gRPC ports (+0..+4),
the gateway (+5) and its status page (+6).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil

from fleet.gateway import Gateway
from frontend import JAR as AGENT_JAR
from serve.archive import REPO
from serve.config import properties
from serve.drain import drain
from serve.server import LocalServer

K8S = REPO / "deploy" / "k8s" / "base"
METRICS_CONFIG = REPO / "deploy" / "torchserve" / "metrics.yaml"
GATEWAY_OFFSET, STATUS_OFFSET = 5, 6


def local_agent(vmargs: str) -> str:
    """The pod's JVM options with its -javaagent (the image's path) pointed at this repository's jar."""
    return " ".join(
        f"-javaagent:{AGENT_JAR}" if option.startswith("-javaagent:") else option for option in vmargs.split()
    )


class ReplicaError(Exception):
    """A replica's ports stay taken."""


class Replica:
    def __init__(self, name: str, root: Path, port_base: int, model_store: Path, tokens: dict[str, str]):
        self.name, self.root, self.port_base = name, root, port_base
        self.server = LocalServer(
            root,
            model_store,
            port_base,
            template=K8S / "config.properties",
            settings={
                "metrics_address": f"http://127.0.0.1:{port_base + 2}",
                "metrics_config": str(METRICS_CONFIG),
                "vmargs": local_agent(properties(K8S / "config.properties")["vmargs"]),
            },
            token_auth=False,
            log_config=K8S / "log4j2.xml",
            timeout=180,
        )
        self.gateway = Gateway(
            root / "gateway", port_base + GATEWAY_OFFSET, port_base, port_base + STATUS_OFFSET, tokens
        )

    @property
    def drain_file(self) -> Path:
        return self.root / "draining"

    def wait_for_free_ports(self, timeout: float = 30) -> None:
        """The drill's ports may lie in Linux's ephemeral range (32768-60999), where a client
        connection can hold one as its own port for a while, and TorchServe exits when its gRPC port
        is taken."""
        deadline = time.monotonic() + timeout
        for port in range(self.port_base, self.port_base + STATUS_OFFSET + 1):
            while True:
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        probe.bind(("127.0.0.1", port))
                        break
                    except OSError as error:
                        if time.monotonic() > deadline:
                            raise ReplicaError(f"{self.name}: port {port} stays in use: {error}") from error
                time.sleep(0.5)

    def start(self) -> float:
        """Starts the gateway (a sidecar: first) and TorchServe; returns the seconds until a prediction answered."""
        self.wait_for_free_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        self.drain_file.unlink(missing_ok=True)
        self.gateway.start()
        try:
            return self.server.start()
        except BaseException:
            self.stop()
            raise

    def drain(self, settle: float, quiet: float, timeout: float) -> float:
        """The pod's preStop hook: serve.drain, on this replica's drain file and gateway."""
        return drain(self.drain_file, self.gateway.status_url, settle, quiet, timeout, log=lambda _message: None)

    def stop(self) -> None:
        """TorchServe first, then the gateway (a sidecar stops after the main container)."""
        self.server.stop()
        self.gateway.stop()

    def victims(self) -> list[psutil.Process]:
        """Every process of the replica: TorchServe, its workers and the gateway."""
        victims = self.server.processes()
        if self.gateway.process is not None:
            with contextlib.suppress(psutil.Error):
                nginx = psutil.Process(self.gateway.process.pid)
                victims += [nginx, *nginx.children(recursive=True)]
        return victims

    def kill(self, victims: list[psutil.Process]) -> None:
        """kill -9 of the whole replica, as when a pod's node dies."""
        for process in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        if self.gateway.process is not None:
            self.gateway.process.wait()
            self.gateway.process = None
