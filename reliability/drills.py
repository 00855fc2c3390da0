"""Fault drills against a real TorchServe, for tests/integration/test_faults.py (which asserts) and
`python -m reliability` (which reports): each makes one fault happen and returns what clients saw
and how long the service took to come back. Also the client threads the hostile drill shares.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.server import LocalServer
from serve.client import Client, sample_jpeg
from serve.errors import ServiceError

SLEEPY_RESPONSE_TIMEOUT = 2  # seconds: the sleepy model's responseTimeout
SLEEPY_QUEUE = 4  # the sleepy model's jobQueueSize: requests waiting beyond the one being served
BROKEN_AT_START = "broken.mar"


class FaultServer(LocalServer):
    """A LocalServer of the drills' own, serving `archive` as cifar10 beside a test model whose handler
    sleeps on request (sleepy_handler.py: one worker, batches of one), with a truncated archive among
    the models to load at start, and the model API on (TorchServe refuses registrations otherwise)."""

    def __init__(self, archive: Path, workdir: Path, port_base: int):
        settings = {"load_models": f"cifar10=cifar10.mar,sleepy=sleepy.mar,broken={BROKEN_AT_START}"}
        store, api = workdir / "model-store", ("--enable-model-api",)
        super().__init__(workdir, store, port_base, settings=settings, extra_args=api, models=("cifar10", "sleepy"))
        store.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, store / "cifar10.mar")
        sleepy_archive(store, "sleepy", batch_size=1, queue=SLEEPY_QUEUE)
        valid = archive.read_bytes()
        (store / BROKEN_AT_START).write_bytes(valid[: len(valid) // 3])


def sleepy_archive(store: Path, name: str, batch_size: int, queue: int) -> None:
    """`store`/`name`.mar: the sleepy handler, one worker, batches of up to `batch_size`, `queue` requests waiting."""
    config = store / f"{name}-config.yaml"
    config.write_text(
        f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {batch_size}\nmaxBatchDelay: 1\n"
        f"responseTimeout: {SLEEPY_RESPONSE_TIMEOUT}\njobQueueSize: {queue}\n"
    )
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    handler = Path(__file__).with_name("sleepy_handler.py")
    options = ["--handler", handler, "--config-file", config, "--export-path", store, "--force"]
    subprocess.run([archiver, "--model-name", name, "--version", "1", *options], check=True)


def worker_pids(client: Client, model: str = "cifar10") -> list[int]:
    """The pids of the model's READY workers."""
    return sorted(worker["pid"] for worker in client.describe(model)[0]["workers"] if worker["status"] == "READY")


def model_names(client: Client) -> list[str]:
    listing = client.request("GET", f"{client.management}/models", "management", timeout=30).json()
    return sorted(model["modelName"] for model in listing["models"])


@dataclass
class Call:
    started: float
    ended: float
    status: int | str  # the HTTP status, or the exception's name when no answer came
    body: str


def call(
    client: Client, payload: bytes, model: str = "cifar10", route: str = "predictions", content_type: str | None = None
) -> Call:
    started = time.monotonic()
    try:
        url, headers = f"{client.inference}/{route}/{model}", client.auth_headers("inference")
        if content_type:
            headers = {**headers, "Content-Type": content_type}
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


def answers(calls: list[Call]) -> dict[str, int]:
    return dict(Counter(f"{c.status} {error_message(c.body)}" for c in calls))


@contextmanager
def clients(client: Client, threads: int, round: Callable[[Client], list[Call]], once: bool = False):
    """`threads` clients, each on a connection of its own, calling `round(client)` back to back until
    the block ends (at least once), or only `once`; yields the list of every Call."""
    calls, stop = [], threading.Event()

    def run() -> None:
        own = client.copy()
        while True:
            started = time.monotonic()
            try:
                calls.extend(round(own))
            except Exception as error:  # an operation that failed: recorded as its answer
                calls.append(Call(started, time.monotonic(), type(error).__name__, str(error)))
            if once or stop.is_set():
                return

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(threads):
            pool.submit(run)
        try:
            yield calls
        finally:
            stop.set()


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


def wait_until_answering(client: Client, model: str, payload: bytes) -> float:
    return wait_for(lambda: call(client, payload, model).status == 200)


def kill_worker_under_load(server: FaultServer, threads: int = 8, before: float = 1.0, after: float = 2.0) -> dict:
    """kill -9 a cifar10 worker while `threads` clients post back to back."""
    old = worker_pids(server.client)
    image = sample_jpeg()
    with clients(server.client, threads, lambda client: [call(client, image)]) as calls:
        time.sleep(before)
        killed_at = time.monotonic()
        os.kill(old[0], signal.SIGKILL)
        back = wait_for(lambda: len(pids := worker_pids(server.client)) == len(old) and old[0] not in pids)
        time.sleep(after)
    failed = [c for c in calls if c.status != 200]
    return {
        "clients": threads,
        "requests": len(calls),
        "failed": len(failed),
        "failed_answers": answers(failed),
        "failed_started_before_kill": sum(c.started <= killed_at for c in failed),
        "in_flight_at_kill": sum(c.started <= killed_at < c.ended for c in calls),
        "seconds_until_workers_back": back,
        "killed_pid": old[0],
        "new_pids": worker_pids(server.client),
    }


def overflow_queue(client: Client, model: str, payload: bytes, burst: int) -> dict:
    """`burst` requests at the same instant: more than the model's job queue holds."""
    gate = threading.Barrier(burst)

    def one(own: Client) -> list[Call]:
        gate.wait()
        return [call(own, payload, model)]

    with clients(client, burst, one, once=True) as calls:
        pass
    refused = next((c.body for c in calls if c.status == 503), "")
    return {
        "burst": burst,
        "statuses": dict(Counter(c.status for c in calls)),
        "503_message": error_message(refused) if refused else None,
        "seconds_until_answering_again": wait_until_answering(client, model, payload),
    }


def flood_a_full_queue_of_large_bodies(server: FaultServer, threads: int = 32, seconds: float = 8) -> dict:
    """Clients keep a small job queue full of bodies so large that every batch stops at the
    frontend's batch-bytes cap, while the model's one worker takes batch after batch: the queue is
    full at the moment a batch is found complete. Every request must be answered, 200 or 503."""
    name = "sleepy-batched"
    sleepy_archive(server.paths.model_store, name, batch_size=8, queue=4)
    server.client.register(f"{name}.mar", workers=1, model_name=name)
    try:
        pids = worker_pids(server.client, name)
        body = b"0.02" + b" " * (1536 * 1024)  # a number the sleepy handler reads, 1.5 MiB long
        with clients(server.client, threads, lambda own: [call(own, body, name)]) as calls:
            time.sleep(seconds)
        return {
            "requests": len(calls),
            "statuses": dict(Counter(c.status for c in calls)),
            "worker_unchanged": worker_pids(server.client, name) == pids,
        }
    finally:
        server.client.unregister("1", name)


def outlast_response_timeout(server: FaultServer) -> dict:
    """One sleepy request that would take 8 s longer than responseTimeout."""
    old = worker_pids(server.client, "sleepy")
    answer = call(server.client, str(SLEEPY_RESPONSE_TIMEOUT + 8).encode(), "sleepy")
    back = wait_until_answering(server.client, "sleepy", b"0")
    return {
        "response_timeout_s": SLEEPY_RESPONSE_TIMEOUT,
        "status": answer.status,
        "answer": error_message(answer.body),
        "seconds_until_answer": round(answer.ended - answer.started, 2),
        "seconds_until_answering_again": back,
        "worker_replaced": worker_pids(server.client, "sleepy") != old,
    }


def register_broken_archives(server: FaultServer) -> dict:
    """Registers damaged copies of cifar10.mar over the management API, while cifar10 serves."""
    client, store, image = server.client, server.paths.model_store, sample_jpeg()
    pids, answer, models = worker_pids(client), client.predict(image), model_names(client)
    valid = (store / "cifar10.mar").read_bytes()
    middle = len(valid) // 2
    broken = {
        "truncated": valid[: len(valid) * 2 // 5],
        "bit-flipped": valid[:middle] + bytes(b ^ 0x5A for b in valid[middle : middle + 4096]) + valid[middle + 4096 :],
        "not-a-zip": np.random.default_rng(0).bytes(len(valid) // 10),
    }
    results = []
    for name, data in broken.items():
        (store / f"{name}.mar").write_bytes(data)
        started = time.monotonic()
        try:
            status, message = 200, client.register(f"{name}.mar", timeout=300, model_name=name)["status"]
        except ServiceError as error:
            status, message = error.status, error_message(error.body)
        seconds = round(time.monotonic() - started, 2)
        results.append({"archive": f"{name}.mar", "status": status, "answer": message, "seconds": seconds})
    return {
        "archives": results,
        "models_before": models,
        "models_after": model_names(client),
        "serving_worker_unchanged": worker_pids(client) == pids,
        "same_answer": client.predict(image) == answer,
    }


def broken_archive_at_start(server: FaultServer) -> dict:
    lines = (server.paths.logs / "ts_log.log").read_text(errors="replace").splitlines()
    failure = next((i for i, line in enumerate(lines) if f"Failed to load model: {BROKEN_AT_START}" in line), None)
    return {
        "archive": BROKEN_AT_START,
        "logged": " ".join(lines[failure : failure + 2]).split(" - ", 1)[-1] if failure is not None else None,
        "models": model_names(server.client),
    }


def restart(server: FaultServer, images: list[bytes]) -> dict:
    """Stops and starts TorchServe: same model version from the store, same answers."""
    version, answers_before = server.client.describe()[0]["modelVersion"], [server.client.predict(i) for i in images]
    started = time.monotonic()
    server.stop()
    server.start()
    after = [server.client.predict(i) for i in images]
    return {
        "seconds_down": round(time.monotonic() - started, 1),
        "version_before": version,
        "version_after": server.client.describe()[0]["modelVersion"],
        "images": len(images),
        "same_answers": sum(a == b for a, b in zip(answers_before, after)),
    }
