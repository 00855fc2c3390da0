"""Serving benchmark: our TorchServe deployment against the alternatives, side by side, one run.

    python -m benchmarks.serving --data ../shared/data/cifar10-jpeg.tar.gz     (make bench-serve)

Starts each system in turn on loopback, drives the same closed-loop load at it with wrk (a fixed
set of real CIFAR-10 test JPEGs, every answer checked) at each concurrency after a warm-up, stops
it, and measures the ceiling right after it (decode + forward at batch 64, no HTTP, one process per core).
All systems serve the same run (its TorchScript file, or its ONNX file for the ONNX Runtime rows)
with the same decoding (handler/cifar10_images.py). The default systems are what ships and what it
replaces; --variants adds the configurations that were measured and not kept, --levers walks from
an untuned TorchServe to the shipped one, one setting at a time. Writes reports/bench-serve*.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks import serving_report
from benchmarks.load import WrkError, bench_images, ceiling_rate, cpu_per_image
from benchmarks.servers import process_system, torchserve_system
from frontend import without_agent
from serve.archive import FORMATS, MODEL_CONFIG, REPO
from serve.client import ServiceError
from serve.config import properties
from serve.server import LOG_CONFIG

# TorchServe on PORT_BASE..+4 (so that a server started by `make serve` can stay up), Flask on +5,
# LitServe on +6; --port-base moves them all.
PORT_BASE = 8090
FLASK_OFFSET, LITSERVE_OFFSET = 5, 6
# config.properties without the frontend agent: TorchServe's own batching
STOCK = {"vmargs": without_agent(properties(REPO / "config.properties")["vmargs"])}
NO_WAIT = {"batch_size": 64, "max_batch_delay": 0}  # registered: a model config cannot say 0 (it means 100 ms)
DEFAULT_SYSTEMS = ["torchserve", "torchserve-stock", "torchserve-onnx", "flask", "litserve"]


def quiet_log_config(scratch: Path) -> Path:
    """The shipped log4j2 file without the frontend's INFO lines for each metric line a worker
    prints and for each response sent (WorkerLifeCycle, BatchAggregator): WARN and above only."""
    quiet = "".join(
        f'<Logger name="org.pytorch.serve.wlm.{name}" level="warn"/>' for name in ("WorkerLifeCycle", "BatchAggregator")
    )
    path = scratch / "log4j2-quiet.xml"
    path.write_text(LOG_CONFIG.read_text().replace("<Loggers>", "<Loggers>" + quiet))
    return path


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
        "torchserve-stock": torchserve("torchserve-stock", shipped, **STOCK),
        "torchserve-onnx": torchserve("torchserve-onnx", onnx, model_format="onnx"),
        "flask": lambda: process_system("flask", ports + FLASK_OFFSET, run_dir / "model.pt"),
        "litserve": lambda: process_system("litserve", ports + LITSERVE_OFFSET, run_dir / "model.pt"),
        # --variants: measured, not kept
        "torchserve-quiet-logs": torchserve("torchserve-quiet-logs", shipped, log_config=quiet_log_config(scratch)),
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


def measure(args, launch, listing: Path) -> tuple[list[dict], float]:
    """One system: its rows (one per concurrency) and its cold start."""
    with launch() as system:
        loads = system.loads(listing, args.concurrency, args.seconds, args.warmup)
    beside = ceiling_rate(system.runtime, args.run.resolve(), listing, args.ceiling_seconds)
    print(f"   ceiling ({system.runtime}) right after: {beside:.0f} images/s", flush=True)
    rows = [{"system": system.name, "runtime": system.runtime, **row, "ceiling_rps_beside": beside} for row in loads]
    return rows, system.cold_start_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=os.environ.get("CIFAR10_DATA"), help="CIFAR-10 copy; default $CIFAR10_DATA")
    parser.add_argument("--run", type=Path, default=REPO / "models" / "latest", help="the trained run to serve")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=int, default=15, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ceiling-seconds", type=float, default=5)
    parser.add_argument("--systems", nargs="+", help=f"default: {' '.join(DEFAULT_SYSTEMS)}")
    parser.add_argument("--rounds", type=int, default=2, help="measure every system this many times, in turn")
    parser.add_argument("--variants", action="store_true", help="also the configurations measured and not kept")
    parser.add_argument("--levers", action="store_true", help="instead: TorchServe alone, one setting at a time")
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument(
        "--port-base",
        type=int,
        default=PORT_BASE,
        help=f"TorchServe +0..4, Flask +{FLASK_OFFSET}, LitServe +{LITSERVE_OFFSET}",
    )
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("name the CIFAR-10 copy with --data or CIFAR10_DATA")
    if shutil.which("wrk") is None:
        parser.error("wrk not found; install it with `sudo apt-get install -y wrk`")
    listing = bench_images(args.data, args.images, REPO / "data" / "bench-images")
    rows, cold, failed = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        for round_ in range(1, args.rounds + 1):
            every = systems(args, Path(scratch) / f"round{round_}")
            names = list(every) if args.levers or args.variants else (args.systems or DEFAULT_SYSTEMS)
            for name in names:
                print(f"== {name}, round {round_}", flush=True)
                try:
                    measured, cold[name] = measure(args, every[name], listing)
                    rows += [{**row, "round": round_} for row in measured]
                except (RuntimeError, TimeoutError, ServiceError, WrkError) as error:  # one system down: go on
                    print(f"   {name} failed: {error}", flush=True)
                    failed[name] = str(error).splitlines()[0][:200]
    print("== CPU time per image of the ceilings (one thread)", flush=True)
    runtimes = dict.fromkeys(row["runtime"] for row in rows)
    per_image = {
        runtime: cpu_per_image(runtime, args.run.resolve(), listing, args.ceiling_seconds) for runtime in runtimes
    }
    command = "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = "bench-serve-levers" if args.levers else "bench-serve-variants" if args.variants else "bench-serve"
    serving_report.write(rows, per_image, cold, failed, args.out, stem, command)


if __name__ == "__main__":
    main()
