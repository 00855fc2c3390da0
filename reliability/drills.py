"""Fault drills against a real TorchServe, shared by tests/integration/test_faults.py (which asserts) and
reliability/__main__.py (which prints figures). Each drill makes one fault happen and returns
what clients saw and how long the service took to come back.

They run on a `FaultServer`: a TorchServe of their own (never the one `make serve` started),
serving the real cifar10.mar beside a test-only model whose handler sleeps on request
(reliability/sleepy_handler.py), with a truncated archive listed among the models to load at start,
and the model API on (TorchServe refuses registrations otherwise) to register broken archives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.client import Client, ServiceError, sample_jpeg
from serve.server import LocalServer

SLEEPY_HANDLER = Path(__file__).with_name("sleepy_handler.py")
SLEEPY_RESPONSE_TIMEOUT = 2  # seconds: the sleepy model's responseTimeout
SLEEPY_QUEUE = 4  # the sleepy model's jobQueueSize: requests waiting beyond the one being served
BROKEN_AT_START = "broken.mar"


def sleepy_archive(store: Path) -> Path:
    """Archives the sleepy test model into `store` (one worker, batches of one)."""
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "model-config.yaml"
        config.write_text(
            f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nmaxBatchDelay: 1\n"
            f"responseTimeout: {SLEEPY_RESPONSE_TIMEOUT}\njobQueueSize: {SLEEPY_QUEUE}\n"
        )
        subprocess.run(
            [
                str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", "sleepy", "--version", "1",
                "--handler", str(SLEEPY_HANDLER), "--config-file", str(config), "--export-path", str(store), "--force",
            ],
            check=True,
        )  # fmt: skip
    return store / "sleepy.mar"


class FaultServer(LocalServer):
    """A LocalServer serving `archive` as cifar10 beside the sleepy model, with a truncated archive
    among the models to load at start, and the model API on (to register broken archives)."""

    def __init__(self, archive: Path, workdir: Path, port_base: int, **settings: str):
        self.archive = archive
        self.store = workdir / "model-store"
        models = f"cifar10=cifar10.mar,sleepy=sleepy.mar,broken={BROKEN_AT_START}"
        super().__init__(
            workdir,
            self.store,
            port_base,
            settings={"load_models": models, **settings},
            extra_args=("--enable-model-api",),
            models=("cifar10", "sleepy"),
        )

    def __enter__(self) -> FaultServer:
        self.store.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.archive, self.store / "cifar10.mar")
        sleepy_archive(self.store)
        valid = self.archive.read_bytes()
        (self.store / BROKEN_AT_START).write_bytes(valid[: len(valid) // 3])
        return super().__enter__()

    def worker_pids(self, model: str = "cifar10") -> list[int]:
        return worker_pids(self.client, model)

    def model_names(self) -> list[str]:
        listing = self.client.request("GET", f"{self.client.management}/models", "management", timeout=30).json()
        return sorted(model["modelName"] for model in listing["models"])


def worker_pids(client: Client, model: str = "cifar10") -> list[int]:
    """The pids of the model's READY workers (from the management API's describe)."""
    return sorted(worker["pid"] for worker in client.describe(model)[0]["workers"] if worker["status"] == "READY")


@dataclass
class Call:
    started: float
    ended: float
    status: int | str  # the HTTP status, or the exception's name when no answer came
    body: str


def call(client: Client, payload: bytes, model: str = "cifar10", route: str = "predictions") -> Call:
    """One POST of `payload` to /route/model with the inference key."""
    started = time.monotonic()
    try:
        url, headers = f"{client.inference}/{route}/{model}", client.auth_headers("inference")
        response = client.session.post(url, data=payload, headers=headers, timeout=120)
        status, body = response.status_code, response.text
    except OSError as error:  # requests' errors are OSErrors
        status, body = type(error).__name__, str(error)
    return Call(started, time.monotonic(), status, body)


def error_message(body: str) -> str:
    """The `message` of TorchServe's JSON error, else the body on one line."""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return " ".join(body.split())[:300]


class Clients:
    """`threads` clients, each on a connection of its own, calling `round(client)` (a list of Calls)
    back to back until the block ends, or only `once` (the block then waits for it); every call kept."""

    def __init__(self, client: Client, threads: int, round: Callable[[Client], list[Call]], once: bool = False):
        self.client, self.round, self.once = client, round, once
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = self.client.copy()
        while True:  # at least one round, however soon the block ends
            started = time.monotonic()
            try:
                self.calls.extend(self.round(client))
            except Exception as error:  # an operation that failed: recorded as its answer
                self.calls.append(Call(started, time.monotonic(), type(error).__name__, str(error)))
            if self.once or self._stop.is_set():
                return

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def wait_for(condition, timeout: float = 120, interval: float = 0.05, or_else=TimeoutError) -> float | None:
    """Seconds until `condition()` held; after `timeout`: raises TimeoutError, or returns `or_else`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            if or_else is TimeoutError:
                raise TimeoutError(f"not back after {timeout:.0f}s")
            return or_else
        time.sleep(interval)
    return round(time.monotonic() - started, 1)


def wait_until_answering(client: Client, model: str, payload: bytes, timeout: float = 120) -> float:
    return wait_for(lambda: call(client, payload, model).status == 200, timeout)


def kill_worker_under_load(server: FaultServer, threads: int = 8, before: float = 1.0, after: float = 2.0) -> dict:
    """kill -9 a cifar10 worker while `threads` clients post back to back."""
    old = server.worker_pids()
    image = sample_jpeg()
    with Clients(server.client, threads, lambda client: [call(client, image)]) as load:
        time.sleep(before)
        killed_at = time.monotonic()
        os.kill(old[0], signal.SIGKILL)
        back = wait_for(lambda: len(pids := server.worker_pids()) == len(old) and old[0] not in pids)
        time.sleep(after)
    failed = [c for c in load.calls if c.status != 200]
    return {
        "clients": threads,
        "requests": len(load.calls),
        "failed": len(failed),
        "failed_answers": dict(Counter(f"{c.status} {error_message(c.body)}" for c in failed)),
        "failed_started_before_kill": sum(c.started <= killed_at for c in failed),
        "in_flight_at_kill": sum(c.started <= killed_at < c.ended for c in load.calls),
        "seconds_until_workers_back": round(back, 2),
        "killed_pid": old[0],
        "new_pids": server.worker_pids(),
    }


def overflow_queue(client: Client, model: str, payload: bytes, burst: int) -> dict:
    """`burst` requests at the same instant: more than the model's job queue holds."""
    gate = threading.Barrier(burst)

    def one(_):
        own = client.copy()
        gate.wait()
        return call(own, payload, model)

    with ThreadPoolExecutor(max_workers=burst) as pool:
        answers = list(pool.map(one, range(burst)))
    statuses = Counter(answer.status for answer in answers)
    refused = next((answer.body for answer in answers if answer.status == 503), "")
    return {
        "burst": burst,
        "statuses": dict(statuses),
        "503_message": error_message(refused) if refused else None,
        "seconds_until_answering_again": round(wait_until_answering(client, model, payload), 2),
    }


def outlast_response_timeout(server: FaultServer) -> dict:
    """One sleepy request that would take 8 s longer than responseTimeout."""
    old = server.worker_pids("sleepy")
    answer = call(server.client, str(SLEEPY_RESPONSE_TIMEOUT + 8).encode(), "sleepy")
    back = wait_until_answering(server.client, "sleepy", b"0")
    return {
        "response_timeout_s": SLEEPY_RESPONSE_TIMEOUT,
        "status": answer.status,
        "answer": error_message(answer.body),
        "seconds_until_answer": round(answer.ended - answer.started, 2),
        "seconds_until_answering_again": round(back, 2),
        "worker_replaced": server.worker_pids("sleepy") != old,
    }


def broken_archives(valid: bytes) -> dict[str, bytes]:
    middle = len(valid) // 2
    flipped = valid[:middle] + bytes(b ^ 0x5A for b in valid[middle : middle + 4096]) + valid[middle + 4096 :]
    return {
        "truncated": valid[: len(valid) * 2 // 5],
        "bit-flipped": flipped,
        "not-a-zip": np.random.default_rng(0).bytes(len(valid) // 10),
    }


def register_broken_archives(server: FaultServer) -> dict:
    """Registers damaged copies of cifar10.mar over the management API, while cifar10 serves."""
    image = sample_jpeg()
    pids, answer, models = server.worker_pids(), server.client.predict(image), server.model_names()
    results = []
    for name, data in broken_archives((server.store / "cifar10.mar").read_bytes()).items():
        (server.store / f"{name}.mar").write_bytes(data)
        started = time.monotonic()
        try:
            status, message = 200, server.client.register(f"{name}.mar", timeout=300, model_name=name)["status"]
        except ServiceError as error:
            status, message = error.status, error_message(error.body)
        seconds = round(time.monotonic() - started, 2)
        results.append({"archive": f"{name}.mar", "status": status, "answer": message, "seconds": seconds})
    return {
        "archives": results,
        "models_before": models,
        "models_after": server.model_names(),
        "serving_worker_unchanged": server.worker_pids() == pids,
        "same_answer": server.client.predict(image) == answer,
    }


def broken_archive_at_start(server: FaultServer) -> dict:
    log = (server.paths.logs / "ts_log.log").read_text(errors="replace")
    lines = log.splitlines()
    failure = next((i for i, line in enumerate(lines) if f"Failed to load model: {BROKEN_AT_START}" in line), None)
    return {
        "archive": BROKEN_AT_START,
        "logged": " ".join(lines[failure : failure + 2]).split(" - ", 1)[-1] if failure is not None else None,
        "models": server.model_names(),
    }


def restart(server: FaultServer, images: list[bytes]) -> dict:
    """Stops and starts TorchServe: same model version from the store, same answers."""
    version, answers = server.client.describe()[0]["modelVersion"], [server.client.predict(i) for i in images]
    started = time.monotonic()
    server.stop()
    server.start()
    after = [server.client.predict(i) for i in images]
    return {
        "seconds_down": round(time.monotonic() - started, 1),
        "version_before": version,
        "version_after": server.client.describe()[0]["modelVersion"],
        "images": len(images),
        "same_answers": sum(a == b for a, b in zip(answers, after)),
    }
