"""The systems the serving benchmarks drive: our TorchServe (serve.server.LocalServer, in a scratch
folder of its own), the comparison servers (benchmarks/alternatives) and, for benchmarks.images, a
container; each ready once it answered a real prediction, each able to say how much CPU time its
processes used while wrk drove it.
"""

from __future__ import annotations

import contextlib
import os
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

from benchmarks.load import metric_samples, run_wrk
from serve.archive import REPO, build_archive
from serve.client import Client, ServiceError, sample_jpeg
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
    client: Client | None = None  # a TorchServe's

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def batching(self) -> dict[str, float]:
        """TorchServe's running sums, where its metrics API is reachable: requests, their queue
        time (µs), batches and their requests."""
        if self.client is None or not self.client.metrics_url:
            return {}
        text = self.client.metrics()
        return {name: sum(metric_samples(text, name)) for name in BATCHING_SUMS}

    def loads(self, listing: Path, concurrencies: list[int], seconds: int, warmup: int) -> list[dict]:
        """wrk at each concurrency after a warm-up: its figures, with the CPU time per request of
        the server's processes and of its first one (the frontend), and TorchServe's mean queue
        time and batch size where it has them."""
        run_wrk(self.url, listing, 16, warmup, self.token, self.form)
        rows = []
        for concurrency in concurrencies:
            processes, batching = self.processes(), self.batching()
            cpu_before, frontend_before = cpu_seconds(processes), cpu_seconds(processes[:1])
            result = run_wrk(self.url, listing, concurrency, seconds, self.token, self.form)
            result["server_cpu_seconds"] = cpu_seconds(processes) - cpu_before
            result["frontend_cpu_seconds"] = cpu_seconds(processes[:1]) - frontend_before
            answered = max(result["requests"], 1)
            result["server_cpu_ms_per_request"] = 1e3 * result["server_cpu_seconds"] / answered
            result["frontend_cpu_ms_per_request"] = 1e3 * result["frontend_cpu_seconds"] / answered
            if batching:
                done = {name: value - batching[name] for name, value in self.batching().items()}
                result["queue_ms"] = done["ts_queue_latency_microseconds"] / 1e3 / done["ts_inference_requests_total"]
                result["batch_size"] = done["cifar10_batch_size_sum"] / done["cifar10_batch_size_count"]
            rows.append({"concurrency": concurrency, **result})
            print(
                f"   {self.name} c={concurrency:3d}  {result['rps']:7.1f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}  server cpu "
                f"{result['server_cpu_ms_per_request']:.3f} ms/req",
                flush=True,
            )
        return rows


def process_tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and all its descendants; none once it is gone."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def until(attempt: Callable[[], object], errors: tuple[type[Exception], ...], timeout: float, what: str) -> object:
    """Calls `attempt` until it returns something true without raising one of `errors`; raises
    TimeoutError naming `what` (and the last error) after `timeout` seconds."""
    deadline, last_error = time.monotonic() + timeout, None
    while True:
        try:
            if result := attempt():
                return result
        except errors as error:
            last_error = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s (last error: {last_error})")
        time.sleep(0.25)


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
    client, started = server.client, time.monotonic()
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(server.stop)
        server.start()
        if register:

            def register_archive() -> dict:
                client.refresh_keys()
                return client.register("cifar10.mar", workers=model_config["minWorkers"], **register)

            until(register_archive, (ServiceError, OSError, KeyError), 60, "the management API took no archive")
            wait_until_serving(client, "cifar10", server.paths)
        on_failure.pop_all()
    return System(
        name,
        url=f"{client.inference}/predictions/cifar10",
        stop=server.stop,
        processes=server.processes,
        token=client.keys.get("inference"),
        cold_start_seconds=time.monotonic() - started,
        runtime="onnxruntime" if model_format == "onnx" else "torchscript",
        client=client,
    )


def process_system(name: str, port: int, model_path: Path) -> System:
    """A comparison server, `python -m benchmarks.alternatives.{name}_app`; ready once it answers a
    real prediction."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.alternatives.{name}_app", "--model", str(model_path), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url, image, started = f"http://127.0.0.1:{port}/predict", sample_jpeg(), time.monotonic()

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        return requests.post(url, files={"image": ("x.jpg", image)}, timeout=5).status_code == 200

    try:
        until(answers, (requests.RequestException,), 120, f"{name} did not answer")
    except BaseException:
        stop_group(process)
        raise
    return System(
        name,
        url,
        stop=lambda: stop_group(process),
        processes=lambda: process_tree(process.pid),
        form=True,
        cold_start_seconds=time.monotonic() - started,
    )


def stop_group(process: subprocess.Popen) -> None:
    """Stops a server and every process it started (LitServe's inference workers outlive a SIGTERM)."""
    try:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
