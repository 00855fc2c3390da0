"""Serving benchmark: our TorchServe deployment against the alternatives, side by side, one run.

    python -m benchmarks.serving --data ../shared/data/cifar10-jpeg.tar.gz     (make bench-serve)

Each system in turn, alone on loopback, serves the same run (TorchScript, or ONNX for the ONNX
Runtime rows) with the same decoding (handler/cifar10_images.py) under wrk's closed-loop load (real
CIFAR-10 test JPEGs, every answer checked) at each concurrency after a warm-up; right after it, the
ceiling: decode + forward at batch 64, no HTTP, one process per core. The default systems are what
ships and what it replaces; --variants adds the configurations measured and not kept, --levers walks
from an untuned TorchServe to the shipped one, one setting at a time. Writes reports/bench-serve*.{md,csv,png}.

Efficiency, two ways: the ceiling's CPU seconds per image (one thread, as a worker runs it) over the
server's per request (all its processes), which other work hardly changes; and requests/s over the
ceiling's images/s measured right after, which other work on a shared machine can push below what
the system did (the ratio then says so).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

import yaml

from benchmarks import command_line, command_parser
from benchmarks.systems import (
    CPU,
    WORKER_PARTS,
    WrkError,
    bench_images,
    ceiling_rate,
    ceiling_work,
    process_system,
    torchserve_system,
)
from frontend import without_agent
from harness.other_work import OtherWork, exits_when_busy
from harness.report import Report, write_csv
from repo import REPO
from serve.archive import FORMATS, MODEL_CONFIG
from serve.config import properties
from serve.errors import ServiceError

# TorchServe on PORT_BASE..+4 (so that a server started by `make serve` can stay up), Flask on +5,
# LitServe on +6; --port-base moves them all.
PORT_BASE = 8090
FLASK_OFFSET, LITSERVE_OFFSET = 5, 6
# config.properties without the frontend agent: TorchServe's own batching
STOCK = {"vmargs": without_agent(properties(REPO / "config.properties")["vmargs"])}
NO_WAIT = {"batch_size": 64, "max_batch_delay": 0}  # registered: a model config cannot say 0 (it means 100 ms)
DEFAULT_SYSTEMS = ["torchserve", "torchserve-v2", "torchserve-grpc", "torchserve-no-histogram", "torchserve-stock"]
DEFAULT_SYSTEMS += ["torchserve-onnx"]
DEFAULT_SYSTEMS += ["flask", "litserve"]
COLUMNS = ["system", "round", "concurrency", "rps", "p50_ms", "p90_ms", "p99_ms", "errors", "queue_ms", "batch_size"]
COLUMNS += [CPU, "frontend_cpu_ms_per_request", "cpu_efficiency", "ceiling_rps_beside", "of_ceiling_beside"]
COLUMNS += ["wrk_cpu_percent"]
# what: (system, concurrency and field measured; divided by another system's or the ceiling's; bound)
TARGETS = {
    "torchserve's p50 at 1 connection / flask's": ("torchserve", 1, "p50_ms", "flask", "<=", 0.8),
    "torchserve's requests/s at 64 / torchserve-stock's": ("torchserve", 64, "rps", "torchserve-stock", ">=", 1.05),
    # what the request-duration histogram (frontend/) costs: at most a few percent
    "torchserve's requests/s at 64 / torchserve-no-histogram's": (
        "torchserve",
        64,
        "rps",
        "torchserve-no-histogram",
        ">=",
        0.97,
    ),
}
for _system in ("torchserve", "torchserve-onnx"):
    TARGETS[f"{_system}'s CPU per request at 64 / the ceiling's per image"] = (_system, 64, CPU, "ceiling", "<=", 1.3)


def systems(args, scratch: Path) -> dict:
    """name -> a function that starts that system and returns it."""
    run_dir, ports = args.run.resolve(), args.port_base
    scratch.mkdir(parents=True)
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    onnx = yaml.safe_load(FORMATS["onnx"][1].read_text())

    def torchserve(name, config, **options):
        return lambda: torchserve_system(name, run_dir, config, scratch, ports, **options)

    if args.levers:
        return {
            f"{i}. {label}": torchserve(f"lever{i}", config, **options)
            for i, (label, config, options) in enumerate(levers(shipped))
        }
    return {
        "torchserve": torchserve("torchserve", shipped),
        "torchserve-v2": torchserve("torchserve-v2", shipped, v2=True),  # the same, through the v2 protocol
        # the same, through TorchServe's gRPC Predictions (a Python grpc.aio load loop, not wrk)
        "torchserve-grpc": torchserve("torchserve-grpc", shipped, grpc=True),
        "torchserve-no-histogram": torchserve("torchserve-no-histogram", shipped, request_duration_histogram="false"),
        "torchserve-stock": torchserve("torchserve-stock", shipped, **STOCK),
        "torchserve-onnx": torchserve("torchserve-onnx", onnx, model_format="onnx"),
        "flask": lambda: process_system("flask", ports + FLASK_OFFSET, run_dir / "model.pt"),
        "litserve": lambda: process_system("litserve", ports + LITSERVE_OFFSET, run_dir / "model.pt"),
        # --variants: measured, not kept
        "torchserve-onnx-stock": torchserve("torchserve-onnx-stock", onnx, model_format="onnx", **STOCK),
        "torchserve-nowait": torchserve("torchserve-nowait", shipped, register=NO_WAIT, **STOCK),
        "torchserve-onnx-nowait-1x2": torchserve(
            "torchserve-onnx-nowait-1x2",
            {**onnx, "minWorkers": 1, "maxWorkers": 1, "handler": {**onnx["handler"], "torch_threads": 2}},
            model_format="onnx",
            register=NO_WAIT,
            **STOCK,
        ),
        "torchserve-batch1": torchserve("torchserve-batch1", {**shipped, "batchSize": 1}),
    }


def levers(shipped: dict) -> list[tuple[str, dict, dict]]:
    """From an untuned TorchServe to the shipped configuration, one lever at a time:
    (label, model config, torchserve_system options)."""
    untuned = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 32, "maxBatchDelay": 5, "responseTimeout": 30}
    untuned["handler"] = {"freeze": False}
    frozen = {**untuned, "handler": {}}
    one_thread = {**frozen, "handler": {"torch_threads": 1}}
    delay_1 = {**one_thread, "maxBatchDelay": 1}
    verbose = {"log_config": None, **STOCK}  # TorchServe's built-in logging
    return [
        ("untuned: batch 32, delay 5 ms, TorchServe's logging, 2 threads, TorchScript as exported", untuned, verbose),
        ("+ quiet logging (deploy/torchserve/log4j2.xml)", untuned, STOCK),
        ("+ frozen TorchScript (BN folded)", frozen, STOCK),
        ("+ 1 torch thread per worker", one_thread, STOCK),
        ("+ maxBatchDelay 1 ms", delay_1, STOCK),
        ("+ batchSize 64", {**delay_1, "batchSize": 64}, STOCK),
        ("+ 2 workers x 1 thread (handler/model-config.yaml)", shipped, STOCK),
        ("+ drain-the-queue batching = shipped (frontend/)", shipped, {}),
        ("instead: 3 workers x 1 thread", {**shipped, "minWorkers": 3, "maxWorkers": 3}, {}),
        ("instead: 1 worker x 2 threads", {**shipped, "minWorkers": 1, "maxWorkers": 1, "handler": {}}, {}),
    ]


@exits_when_busy
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("benchmarks.serving", __doc__, run=True, load=True)
    parser.add_argument("--ceiling-seconds", type=float, default=5)
    parser.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, help="the systems measured")
    parser.add_argument("--rounds", type=int, default=2, help="measure every system this many times, in turn")
    parser.add_argument("--variants", action="store_true", help="also the configurations measured and not kept")
    parser.add_argument("--levers", action="store_true", help="instead: TorchServe alone, one setting at a time")
    parser.add_argument(
        "--profile-at", type=int, default=64, help="connections at which a TorchServe worker is profiled"
    )
    ports = f"TorchServe +0..4, Flask +{FLASK_OFFSET}, LitServe +{LITSERVE_OFFSET}"
    parser.add_argument("--port-base", type=int, default=PORT_BASE, help=ports)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk not found; install it with `sudo apt-get install -y wrk`")
    listing, run = bench_images(args.data, args.images, REPO / "data" / "bench-images"), args.run.resolve()
    rows, cold, failed = [], {}, {}
    with OtherWork(noisy=args.noisy) as other_work, tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        for round_ in range(1, args.rounds + 1):
            every = systems(args, Path(scratch) / f"round{round_}")
            for name in every if args.levers or args.variants else args.systems:
                print(f"== {name}, round {round_}", flush=True)
                try:
                    with every[name]() as system:
                        loads = system.loads(listing, args.concurrency, args.seconds, args.warmup, args.profile_at)
                    beside = ceiling_rate(system.runtime, run, listing, args.ceiling_seconds)
                except (RuntimeError, TimeoutError, ServiceError, WrkError) as error:  # one system down: go on
                    print(f"   {name} failed: {error}", flush=True)
                    failed[name] = str(error).splitlines()[0][:200]
                    continue
                print(f"   ceiling ({system.runtime}) right after: {beside:.0f} images/s", flush=True)
                cold[name] = system.cold_start_seconds
                which = {"system": system.name, "runtime": system.runtime, "round": round_}
                rows += [{**which, **row, "ceiling_rps_beside": beside} for row in loads]
        print("== CPU time per image of the ceilings (one thread)", flush=True)
        per_image = {}  # the ceiling's CPU seconds per image on one thread, here: other load hardly changes it
        for runtime in dict.fromkeys(row["runtime"] for row in rows):
            done, _, cpu = ceiling_work(runtime, run, listing, args.ceiling_seconds)
            per_image[runtime] = cpu / done
    stem = "bench-serve-levers" if args.levers else "bench-serve-variants" if args.variants else "bench-serve"
    report = Report("Serving benchmark", command_line("benchmarks.serving", argv), other_work)
    write(report, rows, per_image, cold, failed, args.out / stem)


def ratio(value: object) -> str:
    """A share of a ceiling; above 1 the ceiling did not hold, and no ratio is printed."""
    if value is None:
        return "—"
    return f"{value:.0%}" if value <= 1 else "ceiling not held"


def targets(rows: list[dict], cpu_per_image: dict[str, float]) -> list[str]:
    """The targets of this deployment as ratios within each round, and whether the median meets each."""
    by_key = {(r["system"], r["concurrency"], r["round"]): r for r in rows}
    lines = []
    for name, (system, concurrency, field, over, comparison, bound) in TARGETS.items():
        ratios = {}
        for round_ in sorted({row["round"] for row in rows}):
            row, other = by_key.get((system, concurrency, round_)), by_key.get((over, concurrency, round_))
            base = row and 1e3 * cpu_per_image[row["runtime"]] if over == "ceiling" else other and other[field]
            if row and base:
                ratios[round_] = row[field] / base
        if ratios:
            middle = statistics.median(ratios.values())
            met = middle <= bound if comparison == "<=" else middle >= bound
            each = ", ".join(f"round {r}: {ratio:.2f}" for r, ratio in ratios.items())
            target = f"{comparison.replace('<=', '≤').replace('>=', '≥')} {bound}"
            lines.append(f"- {name} (target {target}): {each}; median {middle:.2f}: **{'met' if met else 'not met'}**")
    return lines


PARTS = [*WORKER_PARTS, "other"]


def cpu_breakdown(rows: list[dict]) -> list[dict]:
    """For each profiled row: the frontend's and the workers' CPU per request, and the workers' split by part."""
    breakdown = []
    for row in rows:
        if row.get("worker_parts"):
            workers = row[CPU] - row["frontend_cpu_ms_per_request"]
            parts = {part: workers * row["worker_parts"].get(part, 0.0) for part in PARTS}
            which = {key: row[key] for key in ("system", "round", "concurrency")}
            breakdown.append({**which, "frontend": row["frontend_cpu_ms_per_request"], "workers": workers, **parts})
    return breakdown


def write(report: Report, rows: list[dict], cpu_per_image: dict, cold: dict, failed: dict, stem: Path) -> None:
    """stem.md (`report`: the table, cold starts, failures, targets), then stem.csv and stem.png;
    `cpu_per_image`: runtime -> the ceiling's CPU seconds per image."""
    for row in rows:
        row["cpu_efficiency"] = 1e3 * cpu_per_image[row["runtime"]] / row[CPU]
        row["of_ceiling_beside"] = row["rps"] / row["ceiling_rps_beside"]
    report.text(
        "wrk (1 thread, `benchmarks/wrk_predict.lua`: real CIFAR-10 test JPEGs in turn, every answer checked) on "
        "the same machine; each system alone on it, one after the other. `torchserve-grpc`: TorchServe's gRPC "
        "`Predictions` driven by a Python grpc.aio loop instead (one channel, as many concurrent calls as "
        "connections, the same images and checks; `wrk_cpu_percent` is that loop's CPU).",
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
    report.table(rows, COLUMNS, {"cpu_efficiency": ratio, "of_ceiling_beside": ratio})
    report.text(
        "Cold start (process start to first prediction answered): "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cold.items())
        + ".",
        *(f"Failed: {name}: {error}" for name, error in failed.items()),
    )
    if verdicts := targets(rows, cpu_per_image):
        report.text("Targets, this run:", "", *verdicts)
    if breakdown := cpu_breakdown(rows):
        report.text(
            "Where a request's CPU goes (milliseconds of CPU per request answered): `frontend`, TorchServe's "
            "Java process (its CPU time); the workers' time (the server's less the frontend's) split by "
            "where py-spy's samples of one worker ran, half-way through the load (`WORKER_PARTS` in "
            "benchmarks/systems.py): `decode` (the handler's preprocess), `forward` (its inference), `answers` "
            "(its postprocess: softmax, top 3, JSON), `protocol` (TorchServe's worker reading the batch and "
            "writing the answers), `metrics and logging` (Python's logging and TorchServe's metrics, wherever "
            "called), `other` (the rest: TorchServe's service loop, the interpreter)."
        )
        report.table(breakdown, ["system", "round", "concurrency", "frontend", "workers", *PARTS])
    report.write(stem.with_suffix(".md"))
    write_csv(
        stem.with_suffix(".csv"), rows, [*COLUMNS, "runtime", "requests", "server_cpu_seconds", "frontend_cpu_seconds"]
    )
    plot(rows, stem.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


if __name__ == "__main__":
    main()
