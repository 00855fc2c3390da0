"""Soak test (a Locust file): steady load at a fraction (70 %) of a measured capacity against a running
deployment, for 10 minutes by default, while the resident memory of the Java frontend and of each
worker is sampled every 10 s (psutil; run it beside the server).

    .venv/bin/locust -f loadtests/soak.py --headless --only-summary --capacity 500 [--duration 60]  # `make soak`

The load: `ceil(rate / 2)` users, each at a constant throughput, all started at once and stopped
after --duration (Locust's --run-time). At the end it writes reports/soak.json and reports/soak.png,
prints the figures, and exits with status 1 if a request failed, a worker was replaced, or a
process's memory grew by --max-growth (5 %) or more from the end of the warm-up to the end.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace

import gevent
import psutil
from locust import FastHttpUser, constant_throughput, events, task

from serve.archive import REPO
from serve.client import Client, sample_jpeg

PER_USER_RATE = 2.0  # requests/s a user sends at most: each has 500 ms for an answer before the rate sags
SOAK = SimpleNamespace(options=None, samples=[])  # the run's options, server client, images, users and samples


@events.init_command_line_parser.add_listener
def add_options(parser):
    soak = parser.add_argument_group("soak")
    soak.add_argument("--capacity", type=float, required=True, help="requests/s the deployment sustains (benchmark)")
    soak.add_argument("--load-fraction", type=float, default=0.7, help="of --capacity (default 0.7)")
    soak.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    soak.add_argument("--warmup", type=float, help="seconds before the memory baseline (default: min(60, duration/5))")
    soak.add_argument("--sample-every", type=float, default=10, help="seconds between memory samples (default 10)")
    soak.add_argument("--max-growth", type=float, default=0.05, help="allowed growth after warm-up (default 0.05)")
    soak.add_argument("--ts-config", default=str(REPO / "config.properties"), help="the server's config.properties")
    soak.add_argument("--ts-workdir", default=str(REPO), help="the server's working directory (key_file.json)")
    soak.add_argument("--model", default="cifar10")
    soak.add_argument("--data", help="CIFAR-10 copy: send its test images (default: made-up images)")
    soak.add_argument("--report-dir", default=str(REPO / "reports"))


@events.init.add_listener
def configure(environment, **_):
    options = environment.parsed_options
    if options is None:
        return
    client = Client.from_config(Path(options.ts_config), Path(options.ts_workdir))
    environment.host = environment.host or client.inference
    rate = options.capacity * options.load_fraction
    users = max(1, math.ceil(rate / PER_USER_RATE))
    options.num_users = options.spawn_rate = users
    options.run_time = options.duration
    PredictionUser.wait_time = constant_throughput(rate / users)
    if options.data:
        from train.data import encoded_images

        images = encoded_images(options.data)[0][:1000]
    else:
        images = [sample_jpeg((i * 2, 255 - i * 2, 90)) for i in range(100)]
    vars(SOAK).update(options=options, client=client, users=users, images=images)


class PredictionUser(FastHttpUser):
    wait_time = constant_throughput(1)  # replaced by configure()

    def on_start(self):
        self.headers = SOAK.client.auth_headers("inference")
        self.images = itertools.cycle(SOAK.images)
        # Out of phase: users started together at a constant throughput would otherwise stay in
        # lockstep and send all at once every period, bursts bigger than TorchServe's job queue.
        gevent.sleep(random.uniform(0, 1 / PER_USER_RATE))

    @task
    def predict(self):
        image = next(self.images)
        self.client.post(f"/predictions/{SOAK.options.model}", data=image, headers=self.headers, name="/predictions")


def take_sample(environment) -> None:
    """The resident memory of each worker of the model and of the Java frontend (the workers' parent)."""
    workers = [psutil.Process(worker["pid"]) for worker in SOAK.client.describe(SOAK.options.model)[0]["workers"]]
    rss = {f"worker {worker.pid}": worker.memory_info().rss for worker in workers}
    if workers:
        rss["java frontend"] = workers[0].parent().memory_info().rss
    stats = environment.stats.total
    t = round(time.monotonic() - SOAK.started, 1)
    SOAK.samples.append({"t": t, "rss": rss, "requests": stats.num_requests, "failures": stats.num_failures})


def sample_memory(environment):
    every = SOAK.options.sample_every
    while True:
        take_sample(environment)
        gevent.sleep(every - (time.monotonic() - SOAK.started) % every)


@events.test_start.add_listener
def start_sampling(environment, **_):
    SOAK.samples, SOAK.started = [], time.monotonic()
    SOAK.sampler = gevent.spawn(sample_memory, environment)


@events.test_stop.add_listener
def stop_sampling(environment, **_):
    SOAK.sampler.kill()
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
    memory.set(title=title, ylabel="resident memory (MiB)")
    memory.legend(loc="best", fontsize="small")
    pairs = [(a, b) for a, b in itertools.pairwise(samples) if b["t"] - a["t"] >= 1]
    rates = [(b["t"], (b["requests"] - a["requests"]) / (b["t"] - a["t"])) for a, b in pairs]
    if rates:
        load.plot(*zip(*rates), marker=".", color="tab:green")
    load.set(xlabel="seconds", ylabel="requests/s")
    for axis in (memory, load):
        axis.axvline(warmup, color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@events.quitting.add_listener
def write_soak_report(environment, **_):
    options, samples = SOAK.options, SOAK.samples
    if options is None or not samples:
        return
    warmup = options.warmup if options.warmup is not None else min(60.0, options.duration / 5)
    stats = environment.stats.total
    duration = samples[-1]["t"] or options.duration
    by_process = growth(samples, warmup)
    workers_seen = {name for s in samples for name in s["rss"] if name.startswith("worker")}
    result = {
        "capacity_rps": options.capacity,
        "target_rps": round(options.capacity * options.load_fraction, 1),
        "achieved_rps": round(stats.num_requests / duration, 1),
        "users": SOAK.users,
        "duration_s": duration,
        "warmup_s": warmup,
        "requests": stats.num_requests,
        "failures": stats.num_failures,
        "latency_ms": {f"p{q}": stats.get_response_time_percentile(q / 100) for q in (50, 95, 99)},
        "memory": by_process,
        "workers_replaced": len(workers_seen) > len([n for n in samples[0]["rss"] if n.startswith("worker")]),
        "max_growth_allowed": options.max_growth,
        "samples": samples,
    }
    out = Path(options.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    rates = f"{result['achieved_rps']} req/s ({options.load_fraction:.0%} of {options.capacity:g})"
    plot(samples, warmup, out / "soak.png", f"soak: {rates}, {duration:.0f} s")
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
    growths = [figures["growth"] for figures in by_process.values()]
    passed = not stats.num_failures and not result["workers_replaced"] and max(growths, default=0) < options.max_growth
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}: {'PASS' if passed else 'FAIL'}")
    if not passed:
        environment.process_exit_code = 1
