"""The serving benchmark's report: the rows with their efficiency, the targets, a plot
(reports/bench-serve.{md,csv,png}).

Efficiency is measured two ways. From CPU time: the ceiling's CPU seconds per image (decode +
forward at batch 64 on one thread, as a worker runs it) over the server's CPU seconds per request
(all its processes); other work on the machine hardly changes either. From wall-clock time:
requests/s over the ceiling's images/s (the same work in one single-threaded process per core, all
at once) measured right after that system ran; other work on a shared machine can still push that
ceiling below what the system did, and then the ratio says so instead of passing 100 %.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from serve.report import Report, write_csv

COLUMNS = [
    "system",
    "round",
    "concurrency",
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "errors",
    "queue_ms",
    "batch_size",
    "server_cpu_ms_per_request",
    "frontend_cpu_ms_per_request",
    "cpu_efficiency",
    "ceiling_rps_beside",
    "of_ceiling_beside",
    "wrk_cpu_percent",
]


def ratio(value: object) -> str:
    """A share of a ceiling; above 1 the ceiling did not hold, and no ratio is printed."""
    if value is None:
        return "—"
    return f"{value:.0%}" if value <= 1 else "ceiling not held"


def add_efficiency(rows: list[dict], cpu_per_image: dict[str, float]) -> None:
    """`cpu_per_image`: runtime -> the ceiling's CPU seconds per image."""
    for row in rows:
        row["cpu_efficiency"] = 1e3 * cpu_per_image[row["runtime"]] / row["server_cpu_ms_per_request"]
        row["of_ceiling_beside"] = row["rps"] / row["ceiling_rps_beside"]


# (what, system and concurrency measured, what it is divided by, the bound, whether it is an upper bound)
TARGETS = [
    ("torchserve's p50 at 1 connection / flask's", ("torchserve", 1, "p50_ms"), ("flask", 1, "p50_ms"), 0.8, True),
    ("torchserve's requests/s at 64 / torchserve-stock's", ("torchserve", 64, "rps"), ("torchserve-stock", 64, "rps"), 1.05, False),
    ("torchserve's CPU per request at 64 / the ceiling's per image", ("torchserve", 64, "server_cpu_ms_per_request"), "ceiling", 1.3, True),
    ("torchserve-onnx's CPU per request at 64 / the ceiling's per image", ("torchserve-onnx", 64, "server_cpu_ms_per_request"), "ceiling", 1.3, True),
]  # fmt: skip


def targets(rows: list[dict], cpu_per_image: dict[str, float]) -> list[str]:
    """The targets of this deployment as ratios within each round, and whether the median meets each."""
    by_key = {(r["system"], r["concurrency"], r["round"]): r for r in rows}
    lines = []
    for name, (system, concurrency, field), over, bound, upper in TARGETS:
        ratios = {}
        for round_ in sorted({row["round"] for row in rows}):
            row = by_key.get((system, concurrency, round_))
            if over == "ceiling":
                base = row and 1e3 * cpu_per_image[row["runtime"]]
            else:
                base = (other := by_key.get((over[0], over[1], round_))) and other[over[2]]
            if row and base:
                ratios[round_] = row[field] / base
        if ratios:
            middle = statistics.median(ratios.values())
            met = middle <= bound if upper else middle >= bound
            each = ", ".join(f"round {r}: {ratio:.2f}" for r, ratio in ratios.items())
            target = f"{'≤' if upper else '≥'} {bound}"
            lines.append(f"- {name} (target {target}): {each}; median {middle:.2f}: **{'met' if met else 'not met'}**")
    return lines


def write(
    rows: list[dict],
    cpu_per_image: dict[str, float],
    cold: dict[str, float],
    failed: dict[str, str],
    out: Path,
    stem: str,
    command: str,
) -> None:
    add_efficiency(rows, cpu_per_image)
    write_csv(
        out / f"{stem}.csv", rows, [*COLUMNS, "runtime", "requests", "server_cpu_seconds", "frontend_cpu_seconds"]
    )
    report = Report("Serving benchmark", command).text(
        "wrk (1 thread, `benchmarks/wrk_predict.lua`: real CIFAR-10 test JPEGs in turn, every answer checked) on "
        "the same machine; each system alone on it, one after the other.",
        "Ceiling: decode + forward + top-3 in one process at batch 64, no HTTP. Its CPU time per image on one "
        "thread: " + ", ".join(f"{runtime} **{1e3 * cpu:.3f} ms**" for runtime, cpu in cpu_per_image.items()) + ".",
        "`queue_ms`, `batch_size`: TorchServe's mean queue time per request (`ts_queue_latency_microseconds`, "
        "the batch wait included) and requests per batch (the handler's `cifar10_batch_size`) over the run; "
        "`server_cpu_ms_per_request`: CPU time of all the server's processes per request answered; "
        "`frontend_cpu_ms_per_request`: that of its first process alone (TorchServe's Java frontend, Flask's "
        "only process, LitServe's HTTP process); `cpu_efficiency`: the ceiling's CPU time per image over the "
        "server's per request; "
        "`ceiling_rps_beside`: the ceiling's images/s (one single-threaded process per core, all at once) "
        "measured right after the system ran, and `of_ceiling_beside` the system's requests/s over it.",
    )
    formats = {"cpu_efficiency": ratio, "of_ceiling_beside": ratio}
    report.table(rows, COLUMNS, formats)
    report.text(
        "Cold start (process start to first prediction answered): "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cold.items())
        + ".",
        *(f"Failed: {name}: {error}" for name, error in failed.items()),
    )
    if verdicts := targets(rows, cpu_per_image):
        report.text("Targets, this run:", "", *verdicts)
    report.write(out / f"{stem}.md")
    plot(rows, out / f"{stem}.png")


def plot(rows: list[dict], path: Path) -> None:
    figure, (throughput, tail) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in dict.fromkeys(row["system"] for row in rows):
        points = [row for row in rows if row["system"] == name and row["round"] == 1]
        throughput.plot([p["concurrency"] for p in points], [p["rps"] for p in points], "o-", label=name)
        tail.plot([p["concurrency"] for p in points], [p["p99_ms"] for p in points], "o-", label=name)
    throughput.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="throughput")
    tail.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p99 latency (ms)", title="p99 latency")
    for axis in (throughput, tail):
        axis.grid(alpha=0.3)
    throughput.legend(fontsize=7)
    figure.savefig(path, dpi=110, bbox_inches="tight")
