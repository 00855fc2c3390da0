"""The serving benchmark's load and its ceiling: real CIFAR-10 test JPEGs, wrk driving a server
with them (benchmarks/wrk_predict.lua checks every answer), and the same decode + forward done in
one process without HTTP.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.alternatives import CLASSES, OnnxModel, decode_image, load_model, pixel_batch
from train.data import encoded_images

LUA = Path(__file__).with_name("wrk_predict.lua")


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


def run_wrk(
    url: str, listing: Path, concurrency: int, seconds: int, token: str | None, form: bool, threads: int = 1
) -> dict:
    """One wrk run; returns its figures plus the CPU wrk itself used (percent of one core)."""
    env = {**os.environ, "WRK_IMAGES": str(listing), "WRK_FORM": "1" if form else "0", "WRK_TOKEN": token or ""}
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


def metric_samples(metrics_text: str, name: str) -> list[float]:
    """The values of a metric's samples, over all its label sets, from Prometheus text."""
    return [float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", metrics_text, re.M)]


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


def cpu_per_image(runtime: str, run_dir: Path, listing: Path, seconds: float) -> float:
    """CPU seconds per image of the ceiling's work on one thread: other load hardly changes it."""
    threads = torch.get_num_threads()
    try:
        done, _, cpu = ceiling_work(runtime, run_dir, listing, seconds)
    finally:
        torch.set_num_threads(threads)
    return cpu / done
