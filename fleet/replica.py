"""One replica of the Kubernetes pod as processes: TorchServe with the pod's config.properties
(deploy/k8s/base/config.properties: token auth off, APIs on loopback) and the nginx gateway in
front of it, each replica in its own working directory and on its own ports.

Ports from `port_base`: TorchServe's inference, management, metrics and two gRPC ports (+0..+4,
as serve.config.config_on_ports moves them), the gateway (+5) and its status page (+6).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fleet.gateway import Gateway
from frontend import JAR as AGENT_JAR
from serve.archive import REPO
from serve.client import Client
from serve.config import config_on_ports
from serve.drain import drain
from serve.server import ServerPaths, start, stop, wait_until_serving

POD_CONFIG = REPO / "deploy" / "k8s" / "base" / "config.properties"
METRICS_CONFIG = REPO / "deploy" / "torchserve" / "metrics.yaml"
GATEWAY_OFFSET, STATUS_OFFSET = 5, 6


class ReplicaError(Exception):
    """A replica could not start."""


@dataclass
class Replica:
    name: str
    root: Path  # this replica's working directory
    port_base: int
    model_store: Path  # holds cifar10.mar (this replica's model version)
    tokens: dict[str, str]
    gateway: Gateway = field(init=False)
    paths: ServerPaths = field(init=False)

    def __post_init__(self):
        config = self.root / "config.properties"
        self.paths = ServerPaths(config=config, workdir=self.root, model_store=self.model_store)
        self.gateway = Gateway(
            prefix=self.root / "gateway",
            listen=self.port_base + GATEWAY_OFFSET,
            upstream=self.port_base,
            status=self.port_base + STATUS_OFFSET,
            tokens=self.tokens,
        )

    @property
    def drain_file(self) -> Path:
        return self.root / "draining"

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.port_base}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.port_base + 1}"

    def ports(self) -> list[int]:
        return [self.port_base + offset for offset in range(STATUS_OFFSET + 1)]

    def wait_for_free_ports(self, timeout: float = 30) -> None:
        """Waits until this replica's ports can be bound. The drill's ports lie in Linux's ephemeral
        range (32768-60999): a client connection of this machine may hold one as its own port for a
        while, and TorchServe exits when its gRPC port is taken (seen here once)."""
        deadline = time.monotonic() + timeout
        for port in self.ports():
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

    def start(self, timeout: float = 180) -> float:
        """Starts TorchServe and the gateway; returns the seconds until a prediction answered."""
        self.wait_for_free_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        self.drain_file.unlink(missing_ok=True)
        self.paths.config.write_text(
            config_on_ports(
                POD_CONFIG,
                self.port_base,
                metrics_address=f"http://127.0.0.1:{self.port_base + 2}",
                metrics_config=str(METRICS_CONFIG),
                vmargs=f"-javaagent:{AGENT_JAR}",  # the pod's names the image's path
            )
        )
        start(self.paths, token_auth=False)
        self.gateway.start()
        return wait_until_serving(Client.from_config(self.paths.config, self.root), "cifar10", self.paths, timeout)

    def drain(self, settle: float, quiet: float, timeout: float = 40) -> float:
        """The pod's preStop hook: serve.drain, on this replica's drain file and gateway."""
        return drain(self.drain_file, self.gateway.status_url, settle, quiet, timeout, log=lambda _message: None)

    def stop(self) -> None:
        stop(self.paths)
        self.gateway.stop()

    def processes(self) -> list[psutil.Process]:
        """TorchServe's frontend and workers (the gateway not included)."""
        pid_file = self.paths.runtime / ".model_server.pid"
        try:
            frontend = psutil.Process(int(pid_file.read_text().strip()))
            return [frontend, *frontend.children(recursive=True)]
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return []

    def victims(self) -> list[psutil.Process]:
        """Every process of the replica: TorchServe, its workers and the gateway."""
        victims = self.processes()
        if self.gateway.process is not None:
            nginx = psutil.Process(self.gateway.process.pid)
            victims += [nginx, *nginx.children(recursive=True)]
        return victims

    def kill(self, victims: list[psutil.Process]) -> None:
        """kill -9 of the whole replica (`victims()`), as when a pod's node dies."""
        for process in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        if self.gateway.process is not None:
            self.gateway.process.wait()
            self.gateway.process = None
