"""What the benchmarks drive and how: the systems (our TorchServe, the comparison servers of
benchmarks/alternatives, a container), each able to say how much CPU its processes used; wrk
driving one with real CIFAR-10 test JPEGs (benchmarks/wrk_predict.lua checks every answer); and
the ceiling, the same decode + forward in one process without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import requests
import torch
import yaml

from benchmarks.alternatives import CLASSES, OnnxModel, decode_image, load_model, pixel_batch
from harness.answers import answer_problem
from harness.server import LocalServer, cpu_seconds
from harness.v2 import binary_request
from repo import REPO
from serve.archive import build_archive
from serve.client import Client, sample_jpeg
from serve.errors import ServiceError
from serve.grpc_client import predictions_request
from serve.server import LOG_CONFIG, wait_until_serving
from serve.torchserve_grpc.inference_pb2 import PredictionResponse
from train.data import encoded_images

CPU = "server_cpu_ms_per_request"
# The frames py-spy's samples are counted under: our handler's steps, TorchServe's message loop,
# its metrics logging and the JSON answers.
HANDLER_STEPS = ("preprocess", "inference", "postprocess", "retrieve_msg", "send_intermediate_predict_response")
HANDLER_STEPS += ("emit", "answer_bodies", "decode_batch")
# Where a worker's CPU time goes: each sample counts under the first part whose frame its stack holds.
WORKER_PARTS = {
    "metrics and logging": r"\((?:[^;)]*/)?(?:logging/|metrics/)[^;)]*\)",  # Python's logging, TorchServe's metrics
    "decode": r"(?:^|;)(?:\w+\.)?preprocess \(",
    "forward": r"(?:^|;)(?:\w+\.)?inference \(",
    "answers": r"(?:^|;)(?:\w+\.)?postprocess \(",
    "protocol": r"(?:^|;)(?:\w+\.)?(?:retrieve_msg|send_intermediate_predict_response|create_predict_response|"
    r"handle_connection|_retrieve_\w+|recv\w*) \(",  # reading the batch, writing the answers
}
LUA = Path(__file__).with_name("wrk_predict.lua")
# TorchServe's running sums (requests, their queue and inference time in µs) and the handler's
# (batches, their requests, decode and model seconds)
BATCHING_SUMS = ("ts_inference_requests_total", "ts_queue_latency_microseconds", "ts_inference_latency_microseconds")
BATCHING_SUMS += ("cifar10_batch_size_count", "cifar10_batch_size_sum")
BATCHING_SUMS += ("cifar10_decode_seconds_sum", "cifar10_inference_seconds_sum")


class WrkError(RuntimeError):
    """wrk failed or printed no result."""


def bench_images(data: str, count: int, folder: Path) -> Path:
    """The first test images of each class in turn, `count` in all, as the files a client sends
    (train.data.encoded_images), unpacked once for wrk; returns the list file."""
    listing = folder / f"images-{count}.txt"
    if listing.exists():
        return listing
    files, labels = encoded_images(data)
    of_class = [(labels == label).nonzero().flatten().tolist() for label in range(len(CLASSES))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        label = index % len(CLASSES)
        position = of_class[label][index // len(CLASSES)]
        path = folder / f"{CLASSES[label]}-{position:05d}"
        path.write_bytes(files[position])
        paths.append(str(path.resolve()))
    listing.write_text("\n".join(paths) + "\n")
    return listing


def v2_listing(listing: Path) -> Path:
    """The listed images as v2 request bodies (harness.v2.binary_request), written once beside them; returns the
    list file wrk reads in v2 mode: each body's path and its header's length."""
    v2 = listing.with_suffix(".v2.txt")
    if v2.exists():
        return v2
    lines = []
    for path in listing.read_text().split():
        body, header_length = binary_request([Path(path).read_bytes()])
        Path(f"{path}.v2").write_bytes(body)
        lines.append(f"{path}.v2 {header_length}")
    v2.write_text("\n".join(lines) + "\n")
    return v2


PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


def grpc_request(image: bytes) -> bytes:
    """TorchServe's gRPC Predictions request for one image (serve.grpc_client's), serialized once:
    the load loop sends the bytes as they are."""
    return predictions_request(image).SerializeToString()


def run_grpc(address: str, listing: Path, concurrency: int, seconds: int, token: str | None) -> dict:
    """`concurrency` gRPC clients on one channel (grpc.aio), each sending the listed images in turn
    to TorchServe's Predictions for `seconds`, closed loop, as wrk does over HTTP: run_wrk's figures,
    with this process's own CPU as the load generator's. Each answer is checked for its class (the
    first whole, against the answer contract); a refused call counts as invalid, a broken one as a
    socket error."""
    bodies = [grpc_request(Path(path).read_bytes()) for path in listing.read_text().split()]
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        first = PredictionResponse.FromString(
            channel.unary_unary(PREDICTIONS)(bodies[0], metadata=metadata, timeout=30)
        )
    if problem := answer_problem(json.loads(first.prediction)):
        raise WrkError(f"{address} answered the sample image wrongly over gRPC: {problem}")
    latencies, counts = [], Counter()

    async def client(index: int, call, deadline: float) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                answer = await call(bodies[index % len(bodies)], metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as error:
                counts["invalid" if error.code() != grpc.StatusCode.UNAVAILABLE else "socket_errors"] += 1
                continue
            latencies.append(time.monotonic() - started)
            counts["valid" if b'"prediction"' in answer[:64] else "invalid"] += 1
            index += concurrency

    async def load() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(
                PREDICTIONS, response_deserializer=lambda raw: PredictionResponse.FromString(raw).prediction
            )
            started = time.monotonic()
            await asyncio.gather(*(client(i, call, started + seconds) for i in range(concurrency)))
            return time.monotonic() - started

    cpu = time.process_time()
    elapsed = asyncio.run(load())
    cpu = time.process_time() - cpu
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    result = {"requests": len(latencies) + counts["invalid"] + counts["socket_errors"], "seconds": elapsed}
    result |= {"invalid": counts["invalid"], "socket_errors": counts["socket_errors"]}
    result |= {f"p{q}_ms": 1e3 * quantiles[q - 1] for q in (50, 90, 99)}
    result["rps"] = result["requests"] / elapsed
    result["errors"] = result["invalid"] + result["socket_errors"]
    result["wrk_cpu_percent"] = 100 * cpu / elapsed
    return result


def run_wrk(
    url: str, listing: Path, concurrency: int, seconds: int, token: str | None, form: bool, threads: int = 1, v2=False
) -> dict:
    """One wrk run; returns its figures plus the CPU wrk itself used (percent of one core). `v2`:
    `listing` is v2_listing's, `url` a v2 infer path. The Lua script's per-answer check is cheap
    (status 200 and the answer's key); the answer to the listing's first image is first checked
    whole: against the answer contract (harness.answers), or in v2 for its outputs."""
    check_sample_answer(url, listing, token, form, v2)
    env = {**os.environ, "WRK_IMAGES": str(listing), "WRK_FORM": "1" if form else "0", "WRK_TOKEN": token or ""}
    env["WRK_V2"] = "1" if v2 else "0"
    threads = min(threads, concurrency)  # wrk wants at least one connection per thread
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    process = subprocess.Popen(
        [*command, "-s", str(LUA), url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    match = re.search(r"^WRK_RESULT (.*)$", output, re.MULTILINE)
    if returncode != 0 or not match:
        raise WrkError(f"wrk failed ({returncode}):\n{output}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["seconds"]
    result["errors"] = result["invalid"] + result["socket_errors"]
    result["wrk_cpu_percent"] = 100 * (usage.ru_utime + usage.ru_stime) / result["seconds"]
    return result


def check_sample_answer(url: str, listing: Path, token: str | None, form: bool, v2: bool = False) -> None:
    """Raises WrkError unless the server answers the listing's first image with a valid prediction."""
    first = listing.read_text().split("\n", 1)[0].split()
    image = Path(first[0]).read_bytes()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if v2:
            headers |= {"Inference-Header-Content-Length": first[1], "Content-Type": "application/octet-stream"}
            answer = requests.post(url, data=image, headers=headers, timeout=30)
        elif form:
            files = {"image": ("image.jpg", image, "image/jpeg")}
            answer = requests.post(url, files=files, headers=headers, timeout=30)
        else:
            answer = requests.post(url, data=image, headers={**headers, "Content-Type": "image/jpeg"}, timeout=30)
    except requests.RequestException as error:
        raise WrkError(f"{url} did not answer the sample image: {error}") from None
    try:
        if answer.status_code != 200:
            problem = f"HTTP {answer.status_code}"
        elif v2:
            names = [output.get("name") for output in answer.json().get("outputs", [])]
            problem = None if {"label", "confidence", "probabilities"} <= set(names) else f"v2 outputs {names}"
        else:
            problem = answer_problem(answer.json())
    except ValueError:
        problem = f"not JSON: {answer.text[:200]}"
    if problem:
        raise WrkError(f"{url} answered the sample image wrongly: {problem}")


def metric_samples(metrics_text: str, name: str) -> list[float]:
    """The values of a metric's samples, over all its label sets, from Prometheus text."""
    return [float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", metrics_text, re.M)]


def time_breakdown(sums: dict[str, float]) -> dict[str, float]:
    """Where a request's time went, from BATCHING_SUMS (totals, or their growth over a load): mean
    queue wait and frontend-measured inference per request, mean batch size, and the handler's
    decode and model time per batch (milliseconds); {} before any batch."""
    requests, batches = sums["ts_inference_requests_total"], sums["cifar10_batch_size_count"]
    if not requests or not batches:
        return {}
    return {
        "queue_ms_per_request": sums["ts_queue_latency_microseconds"] / requests / 1e3,
        "inference_ms_per_request": sums["ts_inference_latency_microseconds"] / requests / 1e3,
        "batch_size_mean": sums["cifar10_batch_size_sum"] / batches,
        "decode_ms_per_batch": sums["cifar10_decode_seconds_sum"] / batches * 1e3,
        "model_ms_per_batch": sums["cifar10_inference_seconds_sum"] / batches * 1e3,
    }


@dataclass
class System(contextlib.AbstractContextManager):
    name: str
    url: str
    stop: Callable[[], object]
    processes: Callable[[], list[psutil.Process]]  # the server's processes, its workers included
    token: str | None = None
    form: bool = False  # multipart `image` field (the Flask service's form) instead of a raw body
    v2: bool = False  # the Open Inference Protocol v2 (v2_request) instead of a raw body
    grpc: str | None = None  # TorchServe's gRPC Predictions at this address (run_grpc) instead of HTTP
    cold_start_seconds: float = 0.0
    runtime: str = "torchscript"  # which ceiling its efficiency is measured against
    client: Client | None = None  # a TorchServe's

    def __exit__(self, *exc) -> None:
        self.stop()

    def batching(self) -> dict[str, float]:
        """BATCHING_SUMS, where TorchServe's metrics API is reachable."""
        if self.client is None or not self.client.metrics_url:
            return {}
        metrics = self.client.metrics()
        return {name: sum(metric_samples(metrics, name)) for name in BATCHING_SUMS}

    def loads(
        self, listing: Path, concurrencies: list[int], seconds: int, warmup: int, profile_at: int | None = None
    ) -> list[dict]:
        """wrk at each concurrency after a warm-up: its figures, with the CPU time per request of
        the server's processes and of its first one (the frontend), and TorchServe's mean queue
        time and batch size where it has them; at `profile_at` connections, where one TorchServe
        worker's CPU time went (py-spy, `worker_parts`)."""
        listing = v2_listing(listing) if self.v2 else listing
        self.drive(listing, 16, warmup)
        rows = []
        for concurrency in concurrencies:
            processes, batching = self.processes(), self.batching()
            groups = {"server": processes, "frontend": processes[:1]}
            before = {group: cpu_seconds(members) for group, members in groups.items()}
            profiled = concurrency == profile_at and self.client is not None
            with ThreadPoolExecutor(1) as profiler:
                if profiled:
                    worker = int(self.client.describe()[0]["workers"][0]["pid"])
                    profile = profiler.submit(profile_worker, worker, max(1, seconds // 2))
                result = self.drive(listing, concurrency, seconds)
                if profiled:
                    result["worker_parts"] = profile.result().get("parts")
            for group, members in groups.items():
                result[f"{group}_cpu_seconds"] = spent = cpu_seconds(members) - before[group]
                result[f"{group}_cpu_ms_per_request"] = 1e3 * spent / max(result["requests"], 1)
            if batching:
                done = time_breakdown({name: value - batching[name] for name, value in self.batching().items()})
                result["queue_ms"], result["batch_size"] = done.get("queue_ms_per_request"), done.get("batch_size_mean")
            rows.append({"concurrency": concurrency, **result})
            figures = f"{result['rps']:7.1f} req/s  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.1f} ms"
            figures += f"  errors {result['errors']}  server cpu {result[CPU]:.3f} ms/req"
            print(f"   {self.name} c={concurrency:3d}  {figures}", flush=True)
        return rows

    def drive(self, listing: Path, concurrency: int, seconds: int) -> dict:
        """One closed-loop load: wrk over HTTP, or the gRPC loop."""
        if self.grpc:
            return run_grpc(self.grpc, listing, concurrency, seconds, self.token)
        return run_wrk(self.url, listing, concurrency, seconds, self.token, self.form, v2=self.v2)


def profile_worker(pid: int, seconds: int, top: int = 15) -> dict:
    """After a second (in the middle of a load), py-spy samples one TorchServe worker's Python stacks
    for `seconds`; returns the functions where its samples ended (self time) and the handler steps
    they ran under, as shares of samples."""
    beside = Path(sys.executable).with_name("py-spy")  # installed in this Python's environment
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    time.sleep(1)
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "stacks.txt"
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--nonblocking"]
        completed = subprocess.run([*command, "--format", "raw", "--output", str(raw)], capture_output=True, text=True)
        if completed.returncode != 0 or not raw.exists():
            return {"error": f"py-spy exited {completed.returncode}: {completed.stderr.strip()[-500:]}"}
        stacks = raw.read_text().splitlines()
    leaves, steps = Counter(), Counter()
    for line in stacks:
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            leaves[frames.split(";")[-1]] += int(count)
            # a step's frame reads "Cifar10Handler.preprocess (file:line)"
            steps.update(
                {step: int(count) for step in HANDLER_STEPS if re.search(rf"(?:^|;)(?:\w+\.)?{step} \(", frames)}
            )
    total = leaves.total()
    if not total:
        return {"error": "py-spy recorded no samples"}

    def shares(counts: Counter, most: int | None = None) -> dict:
        return {name: round(count / total, 3) for name, count in counts.most_common(most)}

    parts = Counter()
    for line in stacks:
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            parts[next((part for part, frame in WORKER_PARTS.items() if re.search(frame, frames)), "other")] += int(
                count
            )
    return {"samples": total, "self": shares(leaves, top), "under": shares(steps), "parts": shares(parts)}


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
    v2: bool = False,
    grpc: bool = False,
    **settings: str,
) -> System:
    """The repository's config.properties (ports moved, `settings` set) serving an archive of
    `run_dir` packed with `model_config`, in scratch/name; `v2`: driven through the Open Inference
    Protocol v2 (/v2/models/cifar10/infer) instead of /predictions; `grpc`: through TorchServe's gRPC
    Predictions (run_grpc).

    `register`: register the archive through the management API with these batching settings
    instead of loading it at start: the only way TorchServe 0.12 takes max_batch_delay 0.
    `log_config`: a log4j2 file (None: TorchServe's built-in logging).
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
        url=f"{client.inference}/v2/models/cifar10/infer" if v2 else f"{client.inference}/predictions/cifar10",
        stop=server.stop,
        processes=server.processes,
        token=client.keys.get("inference"),
        cold_start_seconds=time.monotonic() - started,
        runtime="onnxruntime" if model_format == "onnx" else "torchscript",
        client=client,
        v2=v2,
        grpc=f"127.0.0.1:{port_base + 3}" if grpc else None,
    )


def process_system(name: str, port: int, model_path: Path) -> System:
    """A comparison server, `python -m benchmarks.alternatives.{name}_app`."""
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

    def stop() -> None:
        """The server and every process it started (LitServe's inference workers outlive a SIGTERM)."""
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(15)
            os.killpg(process.pid, signal.SIGKILL)

    try:
        until(answers, (requests.RequestException,), 120, f"{name} did not answer")
    except BaseException:
        stop()
        raise
    cold_start = time.monotonic() - started
    return System(name, url, stop, lambda: process_tree(process.pid), form=True, cold_start_seconds=cold_start)


def ceiling_work(runtime: str, run_dir: Path, listing: Path, seconds: float) -> tuple[int, float, float]:
    """Decode + batch of 64 + forward + top-3 of the listed images in turn for `seconds`, in this
    process on one thread, as a worker does it without HTTP or queues: (images, wall s, CPU s)."""
    torch.set_num_threads(1)
    if runtime == "onnxruntime":
        model = OnnxModel(str(run_dir / "model.onnx"), threads=1)
    else:
        model = load_model(str(run_dir / "model.pt"))
    blobs = [Path(p).read_bytes() for p in listing.read_text().split()]
    done, started, cpu_started = 0, time.monotonic(), time.process_time()
    with torch.inference_mode():
        while time.monotonic() - started < seconds:
            for first in range(0, len(blobs), 64):
                chunk = blobs[first : first + 64]
                model(pixel_batch([decode_image(b) for b in chunk])).softmax(1).topk(3)
                done += len(chunk)
    return done, time.monotonic() - started, time.process_time() - cpu_started


def ceiling_rate(runtime: str, run_dir: Path, listing: Path, seconds: float) -> float:
    """Images/s of the ceiling's work in one single-threaded process per core, all at once: what
    this machine can do at most, right now, with nothing spent on serving."""
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = pool.map(ceiling_work, *zip(*[(runtime, run_dir, listing, seconds)] * cores))
        return sum(done / wall for done, wall, _ in runs)
