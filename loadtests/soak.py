"""Soak test (a Locust file): steady load at a fraction (70 %) of a measured capacity against a
running deployment, for 10 minutes by default, while the resident memory of the Java frontend and
of each worker is sampled every 10 s (psutil).

    .venv/bin/locust -f loadtests/soak.py --headless --only-summary --capacity 500          # `make soak CAPACITY=500`
    .venv/bin/locust -f loadtests/soak.py --headless --only-summary --capacity 500 --duration 60

The load: `ceil(rate / 2)` users, each at a constant throughput (Locust's constant_throughput),
all started at once and held until --duration (a LoadTestShape). At the end it writes
reports/soak.json and reports/soak.png, prints the figures, and exits with status 1 if a request
failed, a worker was replaced, or a process's memory grew by --max-growth (5 %) or more between
the end of the warm-up and the end of the run. Memory is read on this machine: run it beside the
server.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path
from typing import ClassVar

import gevent
import psutil
from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task

from serve.archive import REPO
from serve.client import Client, sample_jpeg

PER_USER_RATE = 2.0  # requests/s a user sends at most: each has 500 ms for an answer before the rate sags


@events.init_command_line_parser.add_listener
def add_options(parser):
    group = parser.add_argument_group("soak")
    group.add_argument(
        "--capacity", type=float, required=True, help="requests/s the deployment sustains (from the benchmark)"
    )
    group.add_argument("--load-fraction", type=float, default=0.7, help="of --capacity (default 0.7)")
    group.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    group.add_argument(
        "--warmup", type=float, help="seconds before the memory baseline (default: min(60, duration / 5))"
    )
    group.add_argument("--sample-every", type=float, default=10, help="seconds between memory samples (default 10)")
    group.add_argument(
        "--max-growth", type=float, default=0.05, help="allowed memory growth after warm-up (default 0.05)"
    )
    group.add_argument("--ts-config", default=str(REPO / "config.properties"), help="the server's config.properties")
    group.add_argument("--ts-workdir", default=str(REPO), help="the server's working directory (key_file.json)")
    group.add_argument("--model", default="cifar10")
    group.add_argument("--data", default=None, help="CIFAR-10 copy: send its test images (default: made-up images)")
    group.add_argument("--report-dir", default=str(REPO / "reports"))


class Soak:
    """What the run needs beside Locust's own state: the server's client, images, samples."""

    options = None
    client: Client | None = None
    images: ClassVar[list[bytes]] = []
    users = 1
    samples: ClassVar[list[dict]] = []
    started = 0.0
    sampler = None


@events.init.add_listener
def configure(environment, **_):
    options = environment.parsed_options
    if options is None:
        return
    Soak.options = options
    Soak.client = Client.from_config(Path(options.ts_config), Path(options.ts_workdir))
    if not environment.host:
        environment.host = Soak.client.inference
    rate = options.capacity * options.load_fraction
    Soak.users = max(1, math.ceil(rate / PER_USER_RATE))
    PredictionUser.wait_time = constant_throughput(rate / Soak.users)
    if options.data:
        from train.data import encoded_images

        Soak.images = encoded_images(options.data)[0][:1000]
    else:
        Soak.images = [sample_jpeg((i * 2, 255 - i * 2, 90)) for i in range(100)]


class PredictionUser(FastHttpUser):
    wait_time = constant_throughput(1)  # replaced by configure()

    def on_start(self):
        self.headers = Soak.client.auth_headers("inference")
        self.next_image = 0
        # Out of phase: users started together at a constant throughput would otherwise stay in
        # lockstep and send all at once every period, bursts bigger than TorchServe's job queue.
        gevent.sleep(random.uniform(0, 1 / PER_USER_RATE))

    @task
    def predict(self):
        image = Soak.images[self.next_image % len(Soak.images)]
        self.next_image += 1
        self.client.post(f"/predictions/{Soak.options.model}", data=image, headers=self.headers, name="/predictions")


class SoakShape(LoadTestShape):
    """All users at once, held for --duration seconds, then stop."""

    def tick(self):
        if self.get_run_time() >= Soak.options.duration:
            return None
        return Soak.users, Soak.users


def processes() -> dict[str, psutil.Process]:
    """The Java frontend and each worker of the model, by name (the frontend is the workers' parent)."""
    workers = {w["pid"]: psutil.Process(w["pid"]) for w in Soak.client.describe(Soak.options.model)[0]["workers"]}
    found = {f"worker {pid}": process for pid, process in workers.items()}
    if workers:
        found["java frontend"] = next(iter(workers.values())).parent()
    return found


def take_sample(environment) -> None:
    stats = environment.stats.total
    Soak.samples.append(
        {
            "t": round(time.monotonic() - Soak.started, 1),
            "rss": {name: process.memory_info().rss for name, process in processes().items()},
            "requests": stats.num_requests,
            "failures": stats.num_failures,
        }
    )


def sample_memory(environment):
    every = Soak.options.sample_every
    while True:
        take_sample(environment)
        gevent.sleep(every - (time.monotonic() - Soak.started) % every)


@events.test_start.add_listener
def start_sampling(environment, **_):
    Soak.samples, Soak.started = [], time.monotonic()
    Soak.sampler = gevent.spawn(sample_memory, environment)


@events.test_stop.add_listener
def stop_sampling(environment, **_):
    Soak.sampler.kill()
    take_sample(environment)  # the end of the run


def growth(samples: list[dict], warmup: float) -> dict[str, dict]:
    baseline = next((s for s in samples if s["t"] >= warmup), samples[0])
    end = samples[-1]
    return {
        name: {
            "baseline_t": baseline["t"],
            "after_warmup_mb": round(baseline["rss"][name] / 2**20, 1),
            "end_t": end["t"],
            "end_mb": round(end["rss"][name] / 2**20, 1),
            "growth": round(end["rss"][name] / baseline["rss"][name] - 1, 4),
        }
        for name in baseline["rss"]
        if name in end["rss"]
    }


def plot(samples: list[dict], warmup: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, load) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[2, 1])
    for name in sorted({name for s in samples for name in s["rss"]}):
        points = [(s["t"], s["rss"][name] / 2**20) for s in samples if name in s["rss"]]
        memory.plot(*zip(*points), marker=".", label=name)
    memory.set_ylabel("resident memory (MiB)")
    memory.legend(loc="best", fontsize="small")
    rates = [
        (b["t"], (b["requests"] - a["requests"]) / (b["t"] - a["t"]))
        for a, b in itertools.pairwise(samples)
        if b["t"] - a["t"] >= 1
    ]
    if rates:
        load.plot(*zip(*rates), marker=".", color="tab:green")
    load.set_ylabel("requests/s")
    load.set_xlabel("seconds")
    for axis in (memory, load):
        axis.axvline(warmup, color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    memory.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@events.quitting.add_listener
def write_soak_report(environment, **_):
    options = Soak.options
    if options is None or not Soak.samples:
        return
    warmup = options.warmup if options.warmup is not None else min(60.0, options.duration / 5)
    stats = environment.stats.total
    duration = Soak.samples[-1]["t"] or options.duration
    by_process = growth(Soak.samples, warmup)
    workers_seen = {name for s in Soak.samples for name in s["rss"] if name.startswith("worker")}
    result = {
        "capacity_rps": options.capacity,
        "target_rps": round(options.capacity * options.load_fraction, 1),
        "achieved_rps": round(stats.num_requests / duration, 1),
        "users": Soak.users,
        "duration_s": duration,
        "warmup_s": warmup,
        "requests": stats.num_requests,
        "failures": stats.num_failures,
        "latency_ms": {f"p{q}": stats.get_response_time_percentile(q / 100) for q in (50, 95, 99)},
        "memory": by_process,
        "workers_replaced": len(workers_seen) > len([n for n in Soak.samples[0]["rss"] if n.startswith("worker")]),
        "max_growth_allowed": options.max_growth,
        "samples": Soak.samples,
    }
    out = Path(options.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(
        Soak.samples,
        warmup,
        out / "soak.png",
        f"soak: {result['achieved_rps']} req/s ({options.load_fraction:.0%} of {options.capacity:g}), {duration:.0f} s",
    )
    print(
        f"\nsoak: {result['requests']:,} requests in {duration:.0f} s ({result['achieved_rps']} req/s, target "
        f"{result['target_rps']}), {result['failures']} failed; latency p50 {result['latency_ms']['p50']} ms, "
        f"p99 {result['latency_ms']['p99']} ms"
    )
    for name, figures in by_process.items():
        print(
            f"  {name:<14} {figures['after_warmup_mb']:8.1f} MiB after warm-up (t={figures['baseline_t']:.0f} s) -> "
            f"{figures['end_mb']:8.1f} MiB at the end (t={figures['end_t']:.0f} s): {figures['growth']:+.2%}"
        )
    passed = (
        stats.num_failures == 0
        and not result["workers_replaced"]
        and all(f["growth"] < options.max_growth for f in by_process.values())
    )
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}: {'PASS' if passed else 'FAIL'}")
    if not passed:
        environment.process_exit_code = 1
