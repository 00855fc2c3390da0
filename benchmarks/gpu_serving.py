"""The GPU check's serve stage, one configuration at a time: TorchServe with a GPU config, its
answers against the offline model's, wrk at several loads with the GPU's utilization and memory,
where a worker's time goes (py-spy, TorchServe's counters), and one connection right after a scale-up.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.alternatives import CLASSES, decode_image, pixel_batch
from benchmarks.systems import metric_samples, profile_worker, run_wrk, time_breakdown, torchserve_system

PROFILED_CONCURRENCY = 256  # the load of the throughput target: where does a worker's CPU time go


@contextlib.contextmanager
def gpu_use() -> Iterator[dict]:
    """nvidia-smi's utilization and memory, sampled every 200 ms while in the block; yields a dict
    that holds their mean and peak once the block is left (empty without nvidia-smi)."""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
    figures, samples, stop = {}, [], threading.Event()

    def sample():
        while shutil.which("nvidia-smi") and not stop.wait(0.2):
            with contextlib.suppress(ValueError):
                busy, memory = map(float, subprocess.run(query, capture_output=True, text=True).stdout.split(","))
                samples.append((busy, memory))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join()
    if samples:
        figures["gpu_busy_percent"] = round(sum(busy for busy, _ in samples) / len(samples), 1)
        figures["gpu_memory_mib"] = max(memory for _, memory in samples)


def served_equals_offline(client, listing: Path, model_path: Path, clients: int = 128) -> dict:
    """The served class of every benchmark image against the TorchScript model run on the CPU. Sent
    by `clients` threads at once, so that batches form and a GPU worker decodes them on the GPU."""
    blobs = [Path(path).read_bytes() for path in listing.read_text().split()]
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    with torch.inference_mode():
        offline = model(pixel_batch([decode_image(blob) for blob in blobs])).argmax(1).tolist()
    local = threading.local()

    def served_class(blob: bytes) -> str:
        if not hasattr(local, "client"):
            local.client = client.copy()
        return local.client.predict(blob)["prediction"]

    with ThreadPoolExecutor(clients) as pool:
        served = list(pool.map(served_class, blobs))
    return {"images": len(blobs), "mismatches": sum(CLASSES[o] != s for o, s in zip(offline, served))}


def serve_one(
    config: dict, run_dir: Path, listing: Path, seconds: int, concurrencies: list[int], port_base: int
) -> dict:
    """One served configuration: answers, the loads, GPU memory (where the workers are on a GPU), a scale-up."""
    settings = {"job_queue_size": str(config["jobQueueSize"])}
    with (
        tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch,
        torchserve_system("gpu-check", run_dir, config, Path(scratch), port_base, **settings) as system,
        ThreadPoolExecutor(1) as profiler,
    ):
        client, url, token = system.client, system.url, system.token
        part = {"config": config, "cold_start_seconds": round(system.cold_start_seconds, 1)}
        part["served = offline"] = served_equals_offline(client, listing, run_dir / "model.pt")
        run_wrk(url, listing, 64, 3, token, False, threads=4)  # warm-up
        for concurrency in concurrencies:
            if concurrency == PROFILED_CONCURRENCY:  # a worker's stacks in the middle of this load
                pid = int(client.describe()[0]["workers"][0]["pid"])
                profile = profiler.submit(profile_worker, pid, max(1, seconds // 2))
            with gpu_use() as gpu:
                result = run_wrk(url, listing, concurrency, seconds, token, False, 4)
            if concurrency == PROFILED_CONCURRENCY:
                part[f"py-spy of one worker at c={concurrency}"] = profile.result()
            part[f"c={concurrency}"] = {**pick(result), **gpu}
            print(f"   c={concurrency}: {json.dumps(part[f'c={concurrency}'])}", flush=True)
        metrics_text = client.metrics()
        worker_bytes = metric_samples(metrics_text, "cifar10_gpu_memory_bytes")
        part["worker_gpu_mib"] = [round(value / 2**20, 1) for value in worker_bytes]
        over_all_loads = time_breakdown(system.batching())
        part["time_breakdown"] = {name: round(value, 3) for name, value in over_all_loads.items()}
        scaled = config["minWorkers"] + max(1, config["minWorkers"] // 4)
        client.scale(scaled)  # synchronous: returns once the new workers are up
        result = run_wrk(url, listing, 1, max(5, seconds // 2), token, False)
        part["c=1 after scale-up"] = {**pick(result), "workers": scaled}
        print(f"   c=1 after scale-up to {scaled}: {json.dumps(part['c=1 after scale-up'])}", flush=True)
    return part


def pick(wrk_result: dict) -> dict:
    """The figures of a wrk run that the results keep, rounded."""
    figures = {key: round(wrk_result[key], 2) for key in ("rps", "p50_ms", "p90_ms", "p99_ms")}
    return {**figures, "errors": wrk_result["errors"], "requests": wrk_result["requests"]}
