"""Serving benchmark: our TorchServe deployment against the alternatives, side by side, one run.

    python -m benchmarks.serving --data ../shared/data/cifar10-jpeg.tar.gz     (make bench-serve)

Starts each system in turn on loopback, drives the same closed-loop load at it with wrk (a fixed
set of real CIFAR-10 test JPEGs, every answer checked) at each concurrency after a warm-up, stops
it, and measures the ceiling right after it (decode + forward at batch 64, no HTTP, one process per core).
All systems serve the same run (its TorchScript file, or its ONNX file for the ONNX Runtime rows)
with the same decoding (handler/cifar10_images.py). The default systems are what ships and what it
replaces; --variants adds the configurations that were measured and not kept, --levers walks from
an untuned TorchServe to the shipped one, one setting at a time. Writes reports/bench-serve*.{md,csv,png}.

Efficiency is measured two ways. From CPU time: the ceiling's CPU seconds per image (one thread, as
a worker runs it) over the server's CPU seconds per request (all its processes); other work on the
machine hardly changes either. From wall-clock time: requests/s over the ceiling's images/s (one
single-threaded process per core, all at once) measured right after that system ran; other work on
a shared machine can push that ceiling below what the system did, and the ratio then says so.
benchmarks.images and benchmarks.gpu_check drive their servers with the same wrk load and systems.
"""

from __future__ import annotations

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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import torch
import yaml

from benchmarks import command_line, command_parser
from benchmarks.alternatives import CLASSES, OnnxModel, decode_image, load_model, pixel_batch
from frontend import without_agent
from serve.archive import FORMATS, MODEL_CONFIG, REPO, build_archive
from serve.client import Client, ServiceError, sample_jpeg
from serve.config import properties
from serve.report import Report, write_csv
from serve.server import LOG_CONFIG, LocalServer, cpu_seconds, wait_until_serving
from train.data import encoded_images

# TorchServe on PORT_BASE..+4 (so that a server started by `make serve` can stay up), Flask on +5,
# LitServe on +6; --port-base moves them all.
PORT_BASE = 8090
FLASK_OFFSET, LITSERVE_OFFSET = 5, 6
# config.properties without the frontend agent: TorchServe's own batching
STOCK = {"vmargs": without_agent(properties(REPO / "config.properties")["vmargs"])}
NO_WAIT = {"batch_size": 64, "max_batch_delay": 0}  # registered: a model config cannot say 0 (it means 100 ms)
DEFAULT_SYSTEMS = ["torchserve", "torchserve-stock", "torchserve-onnx", "flask", "litserve"]
CPU = "server_cpu_ms_per_request"
COLUMNS = ["system", "round", "concurrency", "rps", "p50_ms", "p90_ms", "p99_ms", "errors", "queue_ms", "batch_size"]
COLUMNS += [CPU, "frontend_cpu_ms_per_request", "cpu_efficiency", "ceiling_rps_beside", "of_ceiling_beside"]
COLUMNS += ["wrk_cpu_percent"]
# what: (system, concurrency and field measured; divided by another system's or the ceiling's; bound)
TARGETS = {
    "torchserve's p50 at 1 connection / flask's": ("torchserve", 1, "p50_ms", "flask", "<=", 0.8),
    "torchserve's requests/s at 64 / torchserve-stock's": ("torchserve", 64, "rps", "torchserve-stock", ">=", 1.05),
}
for _system in ("torchserve", "torchserve-onnx"):
    TARGETS[f"{_system}'s CPU per request at 64 / the ceiling's per image"] = (_system, 64, CPU, "ceiling", "<=", 1.3)
LUA = Path(__file__).with_name("wrk_predict.lua")
# TorchServe's running sums: requests, their queue time (µs), batches and their requests
BATCHING_SUMS = ("ts_inference_requests_total", "ts_queue_latency_microseconds")
BATCHING_SUMS += ("cifar10_batch_size_count", "cifar10_batch_size_sum")


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


@dataclass
class System(contextlib.AbstractContextManager):
    name: str
    url: str
    stop: Callable[[], object]
    processes: Callable[[], list[psutil.Process]]  # the server's processes, its workers included
    token: str | None = None
    form: bool = False  # multipart `image` field (the Flask service's form) instead of a raw body
    cold_start_seconds: float = 0.0
    runtime: str = "torchscript"  # which ceiling its efficiency is measured against
    client: Client | None = None  # a TorchServe's

    def __exit__(self, *exc) -> None:
        self.stop()

    def batching(self) -> dict[str, float]:
        """BATCHING_SUMS, where TorchServe's metrics API is reachable."""
        if self.client is None or not self.client.metrics_url:
            return {}
        return {name: sum(metric_samples(self.client.metrics(), name)) for name in BATCHING_SUMS}

    def loads(self, listing: Path, concurrencies: list[int], seconds: int, warmup: int) -> list[dict]:
        """wrk at each concurrency after a warm-up: its figures, with the CPU time per request of
        the server's processes and of its first one (the frontend), and TorchServe's mean queue
        time and batch size where it has them."""
        run_wrk(self.url, listing, 16, warmup, self.token, self.form)
        rows = []
        for concurrency in concurrencies:
            processes, batching = self.processes(), self.batching()
            groups = {"server": processes, "frontend": processes[:1]}
            before = {group: cpu_seconds(members) for group, members in groups.items()}
            result = run_wrk(self.url, listing, concurrency, seconds, self.token, self.form)
            for group, members in groups.items():
                result[f"{group}_cpu_seconds"] = spent = cpu_seconds(members) - before[group]
                result[f"{group}_cpu_ms_per_request"] = 1e3 * spent / max(result["requests"], 1)
            if batching:
                done = {name: value - batching[name] for name, value in self.batching().items()}
                result["queue_ms"] = done["ts_queue_latency_microseconds"] / 1e3 / done["ts_inference_requests_total"]
                result["batch_size"] = done["cifar10_batch_size_sum"] / done["cifar10_batch_size_count"]
            rows.append({"concurrency": concurrency, **result})
            figures = f"{result['rps']:7.1f} req/s  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.1f} ms"
            figures += f"  errors {result['errors']}  server cpu {result[CPU]:.3f} ms/req"
            print(f"   {self.name} c={concurrency:3d}  {figures}", flush=True)
        return rows


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
    **settings: str,
) -> System:
    """The repository's config.properties (ports moved, `settings` set) serving an archive of
    `run_dir` packed with `model_config`, in scratch/name.

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
        url=f"{client.inference}/predictions/cifar10",
        stop=server.stop,
        processes=server.processes,
        token=client.keys.get("inference"),
        cold_start_seconds=time.monotonic() - started,
        runtime="onnxruntime" if model_format == "onnx" else "torchscript",
        client=client,
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


def systems(args, scratch: Path) -> dict:
    """name -> a function that starts that system and returns it."""
    run_dir, ports = args.run.resolve(), args.port_base
    scratch.mkdir(parents=True)
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    onnx = yaml.safe_load(FORMATS["onnx"][1].read_text())
    # the shipped log4j2 file without the frontend's INFO lines for each metric line a worker prints
    # and for each response sent (WorkerLifeCycle, BatchAggregator): WARN and above only
    loggers = ("WorkerLifeCycle", "BatchAggregator")
    quiet = "".join(f'<Logger name="org.pytorch.serve.wlm.{name}" level="warn"/>' for name in loggers)
    quiet_logs = scratch / "log4j2-quiet.xml"
    quiet_logs.write_text(LOG_CONFIG.read_text().replace("<Loggers>", "<Loggers>" + quiet))

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
        "torchserve-quiet-logs": torchserve("torchserve-quiet-logs", shipped, log_config=quiet_logs),
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


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("benchmarks.serving", __doc__)
    parser.add_argument("--run", type=Path, default=REPO / "models" / "latest", help="the trained run to serve")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=int, default=15, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ceiling-seconds", type=float, default=5)
    parser.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, help="the systems measured")
    parser.add_argument("--rounds", type=int, default=2, help="measure every system this many times, in turn")
    parser.add_argument("--variants", action="store_true", help="also the configurations measured and not kept")
    parser.add_argument("--levers", action="store_true", help="instead: TorchServe alone, one setting at a time")
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    ports = f"TorchServe +0..4, Flask +{FLASK_OFFSET}, LitServe +{LITSERVE_OFFSET}"
    parser.add_argument("--port-base", type=int, default=PORT_BASE, help=ports)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk not found; install it with `sudo apt-get install -y wrk`")
    listing, run = bench_images(args.data, args.images, REPO / "data" / "bench-images"), args.run.resolve()
    rows, cold, failed = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        for round_ in range(1, args.rounds + 1):
            every = systems(args, Path(scratch) / f"round{round_}")
            for name in every if args.levers or args.variants else args.systems:
                print(f"== {name}, round {round_}", flush=True)
                try:
                    with every[name]() as system:
                        loads = system.loads(listing, args.concurrency, args.seconds, args.warmup)
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
    write(rows, per_image, cold, failed, args.out / stem, command_line("benchmarks.serving", argv))


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


def write(rows: list[dict], cpu_per_image: dict, cold: dict, failed: dict, stem: Path, command: str) -> None:
    """stem.md (the table, cold starts, failures, targets), stem.csv and stem.png; `cpu_per_image`:
    runtime -> the ceiling's CPU seconds per image."""
    for row in rows:
        row["cpu_efficiency"] = 1e3 * cpu_per_image[row["runtime"]] / row[CPU]
        row["of_ceiling_beside"] = row["rps"] / row["ceiling_rps_beside"]
    csv_columns = [*COLUMNS, "runtime", "requests", "server_cpu_seconds", "frontend_cpu_seconds"]
    write_csv(stem.with_suffix(".csv"), rows, csv_columns)
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
    report.table(rows, COLUMNS, {"cpu_efficiency": ratio, "of_ceiling_beside": ratio})
    report.text(
        "Cold start (process start to first prediction answered): "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cold.items())
        + ".",
        *(f"Failed: {name}: {error}" for name, error in failed.items()),
    )
    if verdicts := targets(rows, cpu_per_image):
        report.text("Targets, this run:", "", *verdicts)
    report.write(stem.with_suffix(".md"))
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
