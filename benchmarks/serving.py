"""Serving benchmark: our TorchServe deployment against the alternatives, side by side, one run.

    python -m benchmarks.serving --data ../shared/data/cifar10-jpeg.tar.gz     (make bench-serve)

Starts each system in turn on loopback, drives the same closed-loop load at it with wrk
(benchmarks/wrk_predict.lua: a fixed set of real CIFAR-10 test JPEGs, every answer checked) at
each concurrency after a warm-up, stops it, and measures the ceilings (decode + forward in one
process, batched, no HTTP; TorchScript and ONNX Runtime). All systems serve the same run (its
TorchScript file, or its ONNX file for the ONNX Runtime rows) with the same decoding
(handler/cifar10_images.py). Each row also gives the server's CPU time per request (every process
of the server, measured around the wrk run) and the part of it beyond the ceiling's CPU time per
image: the serving overhead. Writes reports/bench-serve.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import contextlib

import matplotlib.pyplot as plt
import psutil
import requests
import torch
import yaml

from benchmarks.alternatives import CLASSES, OnnxModel, decode_image, load_model, pixel_batch
from serve.archive import FORMATS, MODEL_CONFIG, REPO, build_archive
from serve.client import Client, ServiceError, sample_jpeg
from serve.config import config_on_ports
from serve.server import ServerPaths, start, stop, wait_until_serving
from train.data import encoded_images

LUA = Path(__file__).with_name("wrk_predict.lua")
# TorchServe on PORT_BASE..+4 (so that a server started by `make serve` can stay up), Flask on +5,
# LitServe on +6; --port-base moves them all.
PORT_BASE = 8090
FLASK_OFFSET, LITSERVE_OFFSET = 5, 6


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
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    match = re.search(r"^WRK_RESULT (.*)$", output, re.MULTILINE)
    if process.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / result["seconds"]
    result["errors"] = result["invalid"] + result["socket_errors"]
    result["wrk_cpu_percent"] = 100 * (usage.ru_utime + usage.ru_stime) / result["seconds"]
    return result


@dataclass
class System:
    name: str
    url: str = ""
    token: str | None = None
    form: bool = False
    cold_start_seconds: float | None = None
    cleanup: list = field(default_factory=list)
    root_pid: int | None = None  # the server's first process; its descendants are counted with it
    runtime: str = "torchscript"  # which ceiling its overhead is measured against

    def stop(self):
        for action in reversed(self.cleanup):
            action()

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's processes (the root and its descendants)."""
        root = psutil.Process(self.root_pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total


def torchserve_system(
    name: str,
    run_dir: Path,
    model_config: dict,
    scratch: Path,
    quiet_logging: bool = True,
    port_base: int = PORT_BASE,
    model_format: str = "torchscript",
    register: dict | None = None,
    **properties: str,
) -> System:
    """Our deployment: the repository's config.properties (ports moved to port_base.., `properties`
    set) and an archive of `run_dir`.

    `register`: instead of loading the archive at start (config.properties' load_models), register
    it through the management API with these batching settings (batch_size, max_batch_delay):
    the only way TorchServe 0.12 accepts max_batch_delay 0.
    """
    workdir = scratch / name
    store = workdir / "model-store"
    config_yaml = workdir / "model-config.yaml"
    workdir.mkdir(parents=True)
    config_yaml.write_text(yaml.safe_dump(model_config))
    build_archive(run_dir, store, model_config=config_yaml, model_format=model_format)
    if register:
        properties = {"load_models": "", **properties}
    (workdir / "config.properties").write_text(config_on_ports(REPO / "config.properties", port_base, **properties))
    paths = ServerPaths(config=workdir / "config.properties", workdir=workdir, model_store=store)
    started = time.monotonic()
    start(paths, **({} if quiet_logging else {"log_config": None}))
    system = System(
        name, cleanup=[lambda: stop(paths)], runtime="onnxruntime" if model_format == "onnx" else "torchscript"
    )
    client = Client.from_config(paths.config, workdir)
    try:
        if register:
            register_when_up(client, "cifar10.mar", model_config["minWorkers"], register)
        wait_until_serving(client, "cifar10", paths)
        system.root_pid = int((paths.runtime / ".model_server.pid").read_text().strip())
    except (TimeoutError, ServiceError):
        system.stop()
        raise
    system.cold_start_seconds = time.monotonic() - started
    system.url = f"{client.inference}/predictions/cifar10"
    system.token = client.keys.get("inference")
    return system


def register_when_up(client: Client, archive: str, workers: int, batching: dict, timeout: float = 60) -> None:
    """Registers `archive` once the management API answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.refresh_keys()
            client.register(archive, workers=workers, **batching)
            return
        except (ServiceError, OSError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop_group(process: subprocess.Popen) -> None:
    """Stops a server and every process it started (LitServe's inference workers outlive a SIGTERM)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def process_system(name: str, module: str, port: int, model_path: Path, extra: list[str] = ()) -> System:
    """A comparison server run as `python -m module`; ready once it answers a real prediction."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--model", str(model_path), "--port", str(port), *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    system = System(
        name,
        url=f"http://127.0.0.1:{port}/predict",
        form=True,
        cleanup=[lambda: stop_group(process)],
        root_pid=process.pid,
    )
    image = sample_jpeg()
    started = time.monotonic()
    while time.monotonic() - started < 120:
        try:
            if requests.post(system.url, files={"image": ("x.jpg", image)}, timeout=5).status_code == 200:
                system.cold_start_seconds = time.monotonic() - started
                return system
        except requests.RequestException:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        time.sleep(0.25)
    system.stop()
    raise TimeoutError(f"{name} did not answer within 120 s")


def ceiling(model, listing: Path, seconds: float, batch_size: int = 64) -> tuple[float, float]:
    """Images/s of decode + batch + forward in this process (no HTTP, no queues, torch's default
    threads), and the CPU seconds per image of the same work on one thread, as a worker runs it."""
    blobs = [Path(p).read_bytes() for p in listing.read_text().split()]

    def images_per_second_and_cpu() -> tuple[float, float]:
        done, started, cpu_started = 0, time.monotonic(), time.process_time()
        with torch.inference_mode():
            while time.monotonic() - started < seconds:
                for start_index in range(0, len(blobs), batch_size):
                    chunk = blobs[start_index : start_index + batch_size]
                    model(pixel_batch([decode_image(b) for b in chunk])).softmax(1).topk(3)
                    done += len(chunk)
        return done / (time.monotonic() - started), (time.process_time() - cpu_started) / done

    rate, _ = images_per_second_and_cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, cpu_per_image = images_per_second_and_cpu()
    finally:
        torch.set_num_threads(threads)
    return rate, cpu_per_image


def write_report(
    rows: list[dict],
    ceilings: dict[str, tuple[float, float]],
    cold: dict,
    failed: dict,
    out: Path,
    stem: str,
    command: str,
) -> None:
    """`ceilings`: runtime -> (images/s, CPU seconds per image) of decode + forward in one process."""
    out.mkdir(parents=True, exist_ok=True)
    columns = [
        "system",
        "concurrency",
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "errors",
        "requests",
        "wrk_cpu_percent",
        "ratio_to_ceiling",
        "server_cpu_ms_per_request",
        "overhead_cpu_ms_per_request",
    ]
    for row in rows:
        ceiling_rps, ceiling_cpu = ceilings[row["runtime"]]
        row["ratio_to_ceiling"] = row["rps"] / ceiling_rps
        row["server_cpu_ms_per_request"] = 1e3 * row["server_cpu_seconds"] / max(row["requests"], 1)
        row["overhead_cpu_ms_per_request"] = row["server_cpu_ms_per_request"] - 1e3 * ceiling_cpu
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        for runtime, (rps, cpu) in ceilings.items():
            writer.writerow(
                {
                    "system": f"ceiling {runtime} (decode + forward, one process, batch 64)",
                    "rps": round(rps, 1),
                    "ratio_to_ceiling": 1.0,
                    "server_cpu_ms_per_request": round(1e3 * cpu, 3),
                    "overhead_cpu_ms_per_request": 0.0,
                }
            )

    def fmt(row, column):
        value = row.get(column)
        if isinstance(value, float):
            if column == "ratio_to_ceiling":
                return f"{value:.0%}"
            return f"{value:.2f}" if column.endswith("per_request") else f"{value:.1f}"
        return str(value)

    ceiling_lines = [
        f"- {runtime}: **{rps:.0f} images/s**, {1e3 * cpu:.2f} ms of CPU per image"
        for runtime, (rps, cpu) in ceilings.items()
    ]
    lines = [
        "# Serving benchmark",
        "",
        f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        "load generator wrk (1 thread) on the same machine.",
        "",
        "Ceilings (decode + forward in one process, batch 64, no HTTP; images/s with torch's default threads, "
        "CPU per image on one thread):",
        *ceiling_lines,
        "",
        "`server_cpu_ms_per_request`: CPU time of all the server's processes during the run, per request answered; "
        "`overhead_cpu_ms_per_request`: that minus the ceiling's CPU time per image (decode + forward at batch 64 "
        "on one thread, as a worker runs) for the same runtime: what the serving stack costs beyond the work itself.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(fmt(row, c) for c in columns) + " |" for row in rows),
        "",
        "Cold start (process start to first prediction answered): "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cold.items())
        + ".",
        *(f"Did not start: {name}: {error}" for name, error in failed.items()),
        *lone_request_verdict(rows),
    ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")

    figure, (throughput, tail) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in dict.fromkeys(row["system"] for row in rows):
        points = [row for row in rows if row["system"] == name]
        throughput.plot([p["concurrency"] for p in points], [p["rps"] for p in points], "o-", label=name)
        tail.plot([p["concurrency"] for p in points], [p["p99_ms"] for p in points], "o-", label=name)
    for runtime, (rps, _) in ceilings.items():
        throughput.axhline(rps, color="gray", linestyle=":", label=f"ceiling {runtime} (no HTTP)")
    throughput.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="throughput")
    tail.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p99 latency (ms)", title="p99 latency")
    for axis in (throughput, tail):
        axis.grid(alpha=0.3)
    throughput.legend(fontsize=7)
    figure.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight")
    print("\n".join(lines))


def lone_request_verdict(rows: list[dict]) -> list[str]:
    """The lone-request target for each candidate configuration this run measured: p50 at 1
    connection <= the Flask design's, and throughput at 64 connections >= 95 % of today's
    configuration (`torchserve`), all in this run."""

    def row(system, concurrency):
        return next((r for r in rows if r["system"] == system and r["concurrency"] == concurrency), None)

    flask, today = row("flask", 1), row("torchserve", 64)
    if not (flask and today):
        return []
    lines = [
        "",
        f"Lone-request target (this run): p50 at 1 connection <= flask's {flask['p50_ms']:.1f} ms, and at 64 "
        f"connections >= 95 % of today's torchserve ({today['rps']:.0f} req/s):",
        "",
    ]
    for system in CANDIDATES:
        alone, loaded = row(system, 1), row(system, 64)
        if not (alone and loaded):
            continue
        fast, share = alone["p50_ms"] <= flask["p50_ms"], loaded["rps"] / today["rps"]
        verdict = "MET" if fast and share >= 0.95 else "not met"
        lines.append(
            f"- {system}: p50 {alone['p50_ms']:.1f} ms ({'<=' if fast else '>'} flask), "
            f"{loaded['rps']:.0f} req/s at 64 = {share:.0%} of today's: **{verdict}**"
        )
    return lines


# Configurations proposed for a lone request. The no-wait ones are registered through the
# management API with max_batch_delay 0: a worker takes what is queued when it is free and waits
# for nothing more (a model config cannot say 0: TorchServe reads it as unset, 100 ms).
CANDIDATES = ("torchserve-onnx", "torchserve-nowait", "torchserve-onnx-nowait", "torchserve-onnx-nowait-1x2")
NO_WAIT = {"batch_size": 64, "max_batch_delay": 0}


def lever_variants(users_config: dict) -> list[tuple[str, dict, bool]]:
    """From an untuned TorchServe to the shipped configuration, one lever at a time, then the
    alternatives that were not kept: (label, model config, quiet logging)."""
    untuned = {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 32,
        "maxBatchDelay": 5,
        "responseTimeout": 30,
        "handler": {"freeze": False},
    }
    frozen = {**untuned, "handler": {}}
    one_thread = {**frozen, "handler": {"torch_threads": 1}}
    delay_1 = {**one_thread, "maxBatchDelay": 1}
    return [
        ("untuned: batch 32, delay 5 ms, TorchServe's logging, 2 threads, TorchScript as exported", untuned, False),
        ("+ quiet logging (deploy/torchserve/log4j2.xml)", untuned, True),
        ("+ frozen TorchScript (BN folded)", frozen, True),
        ("+ 1 torch thread per worker", one_thread, True),
        ("+ maxBatchDelay 1 ms", delay_1, True),
        ("+ batchSize 64", {**delay_1, "batchSize": 64}, True),
        ("+ 2 workers x 1 thread = shipped (handler/model-config.yaml)", users_config, True),
        ("instead: maxBatchDelay 0 (TorchServe falls back to 100 ms)", {**users_config, "maxBatchDelay": 0}, True),
        ("instead: maxBatchDelay 2 ms", {**users_config, "maxBatchDelay": 2}, True),
        ("instead: 3 workers x 1 thread", {**users_config, "minWorkers": 3, "maxWorkers": 3}, True),
        ("instead: 1 worker x 2 threads", {**delay_1, "batchSize": 64, "handler": {}}, True),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("CIFAR10_DATA"),
        help="CIFAR-10 copy (.tar.gz of the image tree); default $CIFAR10_DATA",
    )
    parser.add_argument("--run", type=Path, default=REPO / "models" / "latest", help="the trained run to serve")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=int, default=15, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--systems",
        nargs="+",
        default=[
            "torchserve",
            "torchserve-onnx",
            "torchserve-nowait",
            "torchserve-onnx-nowait",
            "torchserve-onnx-nowait-1x2",
            "torchserve-batch1",
            "flask",
            "litserve",
        ],
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument(
        "--port-base",
        type=int,
        default=PORT_BASE,
        help=f"TorchServe on this port and the next 4, Flask on +{FLASK_OFFSET}, LitServe on +{LITSERVE_OFFSET}",
    )
    parser.add_argument(
        "--levers", action="store_true", help="instead: TorchServe alone, one configuration lever at a time"
    )
    args = parser.parse_args(argv)
    if not args.data:
        raise SystemExit("error: name the CIFAR-10 copy with --data or CIFAR10_DATA")
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk not found; install it with `sudo apt-get install -y wrk`")
    run_dir = args.run.resolve()
    model_path = run_dir / "model.pt"
    listing = bench_images(args.data, args.images, REPO / "data" / "bench-images")
    users_config = yaml.safe_load(MODEL_CONFIG.read_text())
    onnx_config = yaml.safe_load(FORMATS["onnx"][1].read_text())
    ports = args.port_base

    def torchserve(name, config, quiet=True, **options):
        return lambda scratch: torchserve_system(name, run_dir, config, scratch, quiet, ports, **options)

    if args.levers:
        systems = {
            f"{i}. {label}": torchserve(f"lever{i}", config, quiet)
            for i, (label, config, quiet) in enumerate(lever_variants(users_config))
        }
    else:
        factories = {
            "torchserve": torchserve("torchserve", users_config),
            "torchserve-onnx": torchserve("torchserve-onnx", onnx_config, model_format="onnx"),
            "torchserve-nowait": torchserve("torchserve-nowait", users_config, register=NO_WAIT),
            "torchserve-onnx-nowait": torchserve(
                "torchserve-onnx-nowait", onnx_config, model_format="onnx", register=NO_WAIT
            ),
            "torchserve-onnx-nowait-1x2": torchserve(
                "torchserve-onnx-nowait-1x2",
                {
                    **onnx_config,
                    "minWorkers": 1,
                    "maxWorkers": 1,
                    "handler": {**onnx_config["handler"], "torch_threads": 2},
                },
                model_format="onnx",
                register=NO_WAIT,
            ),
            "torchserve-batch1": torchserve("torchserve-batch1", {**users_config, "batchSize": 1}),
            "flask": lambda scratch: process_system(
                "flask", "benchmarks.alternatives.flask_app", ports + FLASK_OFFSET, model_path
            ),
            "litserve": lambda scratch: process_system(
                "litserve", "benchmarks.alternatives.litserve_app", ports + LITSERVE_OFFSET, model_path
            ),
        }
        systems = {name: factories[name] for name in args.systems}
    rows, cold, failed = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        for name, launch in systems.items():
            print(f"== {name}", flush=True)
            try:
                system = launch(Path(scratch))
            except (RuntimeError, TimeoutError, ServiceError) as error:  # one system down: report it, go on
                print(f"   {name} did not start: {error}", flush=True)
                failed[name] = str(error).splitlines()[0][:200]
                continue
            cold[name] = system.cold_start_seconds
            try:
                run_wrk(system.url, listing, 16, args.warmup, system.token, system.form)
                for concurrency in args.concurrency:
                    cpu_before = system.cpu_seconds()
                    result = run_wrk(system.url, listing, concurrency, args.seconds, system.token, system.form)
                    result["server_cpu_seconds"] = system.cpu_seconds() - cpu_before
                    rows.append({"system": name, "concurrency": concurrency, "runtime": system.runtime, **result})
                    print(
                        f"   c={concurrency:3d}  {result['rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
                        f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}  "
                        f"server cpu {1e3 * result['server_cpu_seconds'] / max(result['requests'], 1):.2f} ms/req  "
                        f"wrk cpu {result['wrk_cpu_percent']:.0f}%",
                        flush=True,
                    )
            finally:
                system.stop()
    print("== ceilings", flush=True)
    seconds = max(args.seconds, 5)
    ceilings = {"torchscript": ceiling(load_model(str(model_path)), listing, seconds)}
    if any(row["runtime"] == "onnxruntime" for row in rows):
        ceilings["onnxruntime"] = ceiling(OnnxModel(str(run_dir / "model.onnx"), threads=1), listing, seconds)
    command = "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = "bench-serve-levers" if args.levers else "bench-serve"
    write_report(rows, ceilings, cold, failed, args.out, stem, command)


if __name__ == "__main__":
    main()
