"""The systems the serving benchmark drives: our TorchServe (serve.server.LocalServer, in a scratch
folder of its own) and the comparison servers (benchmarks/alternatives), each ready once it
answered a real prediction, each able to say how much CPU time its processes used.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import yaml

from serve.archive import REPO, build_archive
from serve.client import ServiceError, sample_jpeg
from serve.server import LOG_CONFIG, LocalServer, cpu_seconds, wait_until_serving

BATCHING_SUMS = (
    "ts_inference_requests_total",
    "ts_queue_latency_microseconds",
    "cifar10_batch_size_count",
    "cifar10_batch_size_sum",
)


@dataclass
class System:
    name: str
    url: str
    stop: Callable[[], None]
    processes: Callable[[], list[psutil.Process]]  # the server's processes, its workers included
    token: str | None = None
    form: bool = False  # multipart `image` field (the Flask service's form) instead of a raw body
    cold_start_seconds: float = 0.0
    runtime: str = "torchscript"  # which ceiling its efficiency is measured against
    metrics: Callable[[], str] | None = None  # TorchServe's Prometheus text

    def batching(self) -> dict[str, float]:
        """TorchServe's running sums: requests, their queue time (µs), batches and their requests."""
        if self.metrics is None:
            return {}
        text = self.metrics()
        return {
            name: sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M))
            for name in BATCHING_SUMS
        }

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's processes."""
        return cpu_seconds(self.processes())


def torchserve_system(
    name: str,
    run_dir: Path,
    model_config: dict,
    scratch: Path,
    port_base: int,
    model_format: str = "torchscript",
    register: dict | None = None,
    log_config: Path | None = LOG_CONFIG,
    **settings: str,
) -> System:
    """The repository's config.properties (ports moved, `settings` set) serving an archive of
    `run_dir` packed with `model_config`, in scratch/name.

    `register`: instead of loading the archive at start, register it through the management API
    with these batching settings (batch_size, max_batch_delay): the only way TorchServe 0.12
    accepts max_batch_delay 0. `log_config`: a log4j2 file (None: TorchServe's built-in logging).
    """
    workdir = scratch / name
    store = workdir / "model-store"
    workdir.mkdir(parents=True)
    (workdir / "model-config.yaml").write_text(yaml.safe_dump(model_config))
    build_archive(run_dir, store, model_config=workdir / "model-config.yaml", model_format=model_format)
    if register:
        settings = {"load_models": "", **settings}
    models = () if register else ("cifar10",)
    server = LocalServer(workdir, store, port_base, settings=settings, log_config=log_config, models=models)
    started = time.monotonic()
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(server.stop)
        server.start()
        if register:
            register_when_up(server, model_config["minWorkers"], register)
            wait_until_serving(server.client, "cifar10", server.paths)
        on_failure.pop_all()
    return System(
        name,
        url=f"{server.client.inference}/predictions/cifar10",
        stop=server.stop,
        processes=server.processes,
        token=server.client.keys.get("inference"),
        cold_start_seconds=time.monotonic() - started,
        runtime="onnxruntime" if model_format == "onnx" else "torchscript",
        metrics=server.client.metrics,
    )


def register_when_up(server: LocalServer, workers: int, batching: dict, timeout: float = 60) -> None:
    """Registers cifar10.mar once the management API answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.client.refresh_keys()
            server.client.register("cifar10.mar", workers=workers, **batching)
            return
        except (ServiceError, OSError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def process_system(name: str, module: str, port: int, model_path: Path) -> System:
    """A comparison server run as `python -m module`; ready once it answers a real prediction."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--model", str(model_path), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def processes() -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(process.pid)
            return [root, *root.children(recursive=True)]
        return []

    system = System(
        name, url=f"http://127.0.0.1:{port}/predict", stop=lambda: stop_group(process), processes=processes, form=True
    )
    image, started = sample_jpeg(), time.monotonic()
    while time.monotonic() - started < 120:
        try:
            if requests.post(system.url, files={"image": ("x.jpg", image)}, timeout=5).status_code == 200:
                system.cold_start_seconds = time.monotonic() - started
                return system
        except requests.RequestException:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        time.sleep(0.25)
    system.stop()
    raise TimeoutError(f"{name} did not answer within 120 s")


def stop_group(process: subprocess.Popen) -> None:
    """Stops a server and every process it started (LitServe's inference workers outlive a SIGTERM)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
