"""A TorchServe of the harness's own (tests, drills, benchmarks, the fleet's replicas): moved ports,
a scratch folder, started through the product's `serve.server` and adopted as this process's work."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil

from frontend import agent_jar
from harness.other_work import adopt
from repo import REPO
from serve.client import Client
from serve.config import config_on_ports
from serve.server import LOG_CONFIG, ServerPaths, start, stop, wait_until_serving


class LocalServer:
    """A TorchServe of our own: `template` (a config.properties) with its APIs moved to
    port_base..+4 and `settings` set, run from the scratch folder `workdir` (its keys, logs, pid
    file and unpacked archives stay there), serving `model_store`.

    Tests, drills, benchmarks and the fleet's replicas all run theirs through this class, beside
    (never instead of) the one `make serve` started. `with LocalServer(...) as server:` starts it
    and waits until each of `models` answered a real prediction; leaving the block stops it.
    """

    def __init__(
        self,
        workdir: Path,
        model_store: Path,
        port_base: int,
        *,
        template: Path = REPO / "config.properties",
        settings: dict[str, str] | None = None,
        token_auth: bool = True,
        extra_args: tuple[str, ...] = (),
        log_config: Path | None = LOG_CONFIG,
        models: tuple[str, ...] = ("cifar10",),
        timeout: float = 120.0,
    ):
        self.port_base = port_base
        self.template = template
        self.settings = settings or {}
        self.token_auth = token_auth
        self.extra_args = extra_args
        self.log_config = log_config
        self.models = models
        self.timeout = timeout
        self.ready_seconds: float | None = None  # the last start's: process start to first answer
        self.paths = ServerPaths(config=workdir / "config.properties", workdir=workdir, model_store=model_store)
        self.client = Client(
            f"http://127.0.0.1:{port_base}",
            f"http://127.0.0.1:{port_base + 1}",
            f"http://127.0.0.1:{port_base + 2}",
            key_file=workdir / "key_file.json",
        )

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> float:
        """Starts TorchServe; returns the seconds until every model in `models` answered."""
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(config_on_ports(self.template, self.port_base, **self.settings))
        agent_jar()
        started = time.monotonic()
        start(self.paths, self.token_auth, self.extra_args, self.log_config)
        if (pid := self.paths.frontend_pid()) is not None:
            adopt(pid)  # the frontend outlives the launcher: this process's own work all the same
        for model in self.models:
            wait_until_serving(self.client, model, self.paths, self.timeout)
        self.ready_seconds = time.monotonic() - started
        return self.ready_seconds

    def stop(self) -> None:
        stop(self.paths)

    def pid(self) -> int | None:
        """The frontend's (Java) process id while it runs."""
        return self.paths.frontend_pid()

    def processes(self) -> list[psutil.Process]:
        """The frontend and its workers."""
        try:
            frontend = psutil.Process(self.pid())
            return [frontend, *frontend.children(recursive=True)]
        except (TypeError, ValueError, psutil.NoSuchProcess):
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the frontend and its workers."""
        return cpu_seconds(self.processes())


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU time used so far by `processes` (those gone meanwhile count as 0)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total
