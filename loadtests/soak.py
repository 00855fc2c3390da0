"""Soak test: steady load at a fraction (70 %) of a measured capacity against a running deployment,
for 10 minutes by default, while the resident memory of the Java frontend and of each worker is
sampled every 10 s (psutil; run it beside the server).

    python -m locust -f loadtests/soak.py --headless --only-summary --capacity 500 [--duration 60]  # `make soak`

One stage of ceil(rate / 2) PacedUsers, all started at once, sending valid images only (CIFAR-10's
test JPEGs with --data, else made-up ones) as the raw body. Service levels: no request failed, no
worker replaced, no process's memory grew by --max-growth (5 %) or more from the end of the warm-up
to the end. The figures go to reports/soak.json, the memory and requests/s to reports/soak.png.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import psutil
from locust import events

from loadtests.shapes import Level, Stage, StagedShape, no_failures
from loadtests.users import SHARED, PacedUser, prepare  # noqa: F401  (Locust finds the user here)
from serve.client import Client, sample_jpeg

PER_USER_RATE = 2.0  # requests/s a user sends at most: each has 500 ms for an answer before the rate sags
SOAK = SimpleNamespace(samples=[])  # the server's client and the memory samples

# The soak sends its own images with the keys of --ts-workdir: it needs no payload folder.
events.init.remove_listener(prepare)


@events.init.add_listener
def configure(environment, **_):
    options = environment.parsed_options
    if options is None:
        return
    if options.capacity <= 0:
        raise SystemExit("the soak needs --capacity: the requests/s the deployment sustains")
    SOAK.client = Client.from_config(Path(options.ts_config), Path(options.ts_workdir))
    environment.host = environment.host or SOAK.client.inference
    rate = options.capacity * options.load_fraction
    users = max(1, math.ceil(rate / PER_USER_RATE))
    vars(options).update(num_users=users, user_rate=rate / users, management_url=SOAK.client.management)
    options.bad_share = options.multipart_share = 0.0  # valid images only, as the raw body
    if options.warmup < 0:
        options.warmup = min(60.0, options.duration / 5)
    if options.data:
        from train.data import encoded_images

        images = encoded_images(options.data)[0][:1000]
    else:
        images = [sample_jpeg((i * 2, 255 - i * 2, 90)) for i in range(100)]
    headers = {api: SOAK.client.auth_headers(api) for api in ("inference", "management")}
    vars(SHARED).update(options=options, payloads={"jpeg-32": images}, bad={}, headers=headers)


class SoakShape(StagedShape):
    def plan(self, options):
        return [Stage("soak", options.num_users, options.duration, options.num_users, None)]

    def tick(self):
        """Also samples the memory every --sample-every seconds from the start (test_stop takes the last)."""
        if len(SOAK.samples) * SHARED.options.sample_every <= self.get_run_time() < SHARED.options.duration:
            take_sample(self.runner.environment)
        return super().tick()

    def levels(self) -> list[Level]:
        """No request failed, no worker replaced, and each process's memory grew less than --max-growth;
        first writes soak.json and soak.png, whose figures the levels read."""
        self.result = result = write_figures(self.runner.environment)  # sampled before the first stage
        limit, replaced = result["max_growth_allowed"], result["workers_replaced"]
        levels = [
            no_failures("zero failed requests", self.runner.environment.stats.total),
            Level("no worker replaced", not replaced, "a new worker appeared" if replaced else "none"),
        ]
        for name, process in result["memory"].items():
            detail = (
                f"{process['after_warmup_mb']:.1f} MiB after warm-up (t={process['baseline_t']:.0f} s) -> "
                f"{process['end_mb']:.1f} MiB at the end (t={process['end_t']:.0f} s): {process['growth']:+.2%}"
            )
            levels.append(Level(f"{name} grew by less than {limit:.0%}", process["growth"] < limit, detail))
        return levels

    def notes(self) -> list[str]:
        result, fraction = self.result, SHARED.options.load_fraction
        return [
            f"Soak: {result['achieved_rps']} req/s of a target {result['target_rps']} ({fraction:.0%} of "
            f"{result['capacity_rps']:g}); memory baseline at the end of the {result['warmup_s']:g} s warm-up."
        ]


def take_sample(environment) -> None:
    """The resident memory of each worker of the model and of the Java frontend (the workers' parent)."""
    workers = [psutil.Process(worker["pid"]) for worker in SOAK.client.describe(SHARED.options.model)[0]["workers"]]
    rss = {f"worker {worker.pid}": worker.memory_info().rss for worker in workers}
    if workers:
        rss["java frontend"] = workers[0].parent().memory_info().rss
    stats, t = environment.stats.total, round(environment.shape_class.get_run_time(), 1)
    SOAK.samples.append({"t": t, "rss": rss, "requests": stats.num_requests, "failures": stats.num_failures})


@events.test_stop.add_listener
def last_sample(environment, **_):
    take_sample(environment)  # the end of the run


def write_figures(environment) -> dict:
    """Writes soak.json (each process's memory from the end of the warm-up to the end) and soak.png."""
    options, samples, stats = SHARED.options, SOAK.samples, environment.stats.total
    duration = samples[-1]["t"] or options.duration
    workers_seen = {name for s in samples for name in s["rss"] if name.startswith("worker")}
    baseline, end = next((s for s in samples if s["t"] >= options.warmup), samples[0]), samples[-1]
    memory = {
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
    result = {
        "capacity_rps": options.capacity,
        "target_rps": round(options.capacity * options.load_fraction, 1),
        "achieved_rps": round(stats.num_requests / duration, 1),
        "users": options.num_users,
        "duration_s": duration,
        "warmup_s": options.warmup,
        "requests": stats.num_requests,
        "failures": stats.num_failures,
        "latency_ms": {f"p{q}": stats.get_response_time_percentile(q / 100) for q in (50, 95, 99)},
        "memory": memory,
        "workers_replaced": len(workers_seen) > len([n for n in samples[0]["rss"] if n.startswith("worker")]),
        "max_growth_allowed": options.max_growth,
        "samples": samples,
    }
    out = Path(options.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    rates = f"{result['achieved_rps']} req/s ({options.load_fraction:.0%} of {options.capacity:g})"
    plot(samples, options.warmup, out / "soak.png", f"soak: {rates}, {duration:.0f} s")
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return result


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
