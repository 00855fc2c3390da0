"""The container images side by side: size, pull, cold start and serving, in one run.

    python -m benchmarks.images --run models/latest --data ../shared/data/cifar10-jpeg.tar.gz

Images (`make images` tags them `local`): cifar10-serve (torch), cifar10-serve-slim (ONNX Runtime,
no torch), cifar10-train. For each: its size and the bytes of `save | gzip` (what a node pulls, near
enough). Each serving image serves --run in its format (TorchScript, ONNX), mounted read-only where
Compose mounts the store: seconds from `run -d` to the first prediction, then the serving benchmark's
wrk load, with the CPU time of the container's processes; then the slim image's ONNX archive served
bare (as `python -m serve start` serves it) under the same load: what the container costs. And
harness.verify's compare of every test image through the slim container against a TorchServe run as
`make serve` runs it. Writes reports/images.{md,csv}.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from benchmarks import command_line, command_parser
from benchmarks.systems import System, bench_images, process_tree, torchserve_system, until
from container.keys import write_secret
from harness.engine import engine_env
from harness.other_work import OtherWork, adopt, adopt_listeners, exits_when_busy
from harness.report import Report, write_csv
from harness.server import LocalServer
from harness.verify import CONFIDENCE_TOLERANCE, compare
from serve.archive import FORMATS, build_archive
from serve.client import Client, sample_jpeg
from serve.errors import ServiceError

IMAGES = ["cifar10-serve:local", "cifar10-serve-slim:local", "cifar10-train:local"]
SERVING = {"cifar10-serve:local": "torchscript", "cifar10-serve-slim:local": "onnx"}  # image -> archive format
SLIM = "cifar10-serve-slim:local"
BARE = "none (ONNX archive, bare)"
MODEL_STORE = "/home/model-server/model-store"  # where the serving images read their archives
KEY_FILE = "/home/model-server/run/key_file.json"
ENGINE = os.environ.get("ENGINE", "podman")  # ENGINE=docker for docker
ENGINE_ENV = engine_env()  # the project's podman settings unless the caller set its own


class EngineError(RuntimeError):
    """The container engine refused a command."""


def engine(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ENGINE, *args], env=ENGINE_ENV, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EngineError(f"{' '.join(args[:2])} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def pulled_bytes(image: str) -> int:
    """The bytes of `save IMAGE | gzip` (default level), counted as they stream by."""
    pipeline = f"{shlex.join([ENGINE, 'save', image])} | gzip -c | wc -c"
    counted = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=ENGINE_ENV, capture_output=True, text=True)
    if counted.returncode != 0:
        raise EngineError(f"save {image} | gzip failed: {counted.stderr.strip()[-2000:]}")
    return int(counted.stdout)


def start_container(
    image: str, store: Path, port: int, name: str, scratch: Path, options=(), command=(), publish: bool = True
) -> System:
    """`image` serving `store` (`run -d` with `options`, and `command` instead of the image's CMD),
    ready once it answered a prediction (its cold start: from `run -d`); its CPU time is that of the
    container's processes, read on the host. Its engine's monitor (podman's conmon, the parent of its
    processes on the host) and the process forwarding its port are adopted (harness.other_work).
    `publish`: the container's inference and management ports on `port` and `port + 1` of this
    machine's loopback; else the container listens there itself (`--network host` and a config with
    those ports, in `options`)."""
    key_dir = scratch / name
    key_dir.mkdir(parents=True)
    client = Client(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", "", key_file=key_dir / "key_file.json")
    started = time.monotonic()
    ports = ["-p", f"127.0.0.1:{port}:8080", "-p", f"127.0.0.1:{port + 1}:8081"] if publish else []
    engine("run", "-d", "--name", name, "--init", *ports, "-v", f"{store}:{MODEL_STORE}:ro", *options, image, *command)

    def answers() -> dict:
        # TorchServe writes its keys at start; with token auth off there are none, and none are needed
        write_secret(client.key_file, engine("exec", name, "cat", KEY_FILE, check=False).stdout)
        client.refresh_keys()
        return client.predict(sample_jpeg(), timeout=10)

    try:
        until(answers, (EngineError, ServiceError, OSError, KeyError, ValueError), 300, f"{image}: no prediction")
        pid = int(engine("inspect", "--format", "{{.State.Pid}}", name).stdout)  # its init, on the host
        adopt(psutil.Process(pid).ppid())
        adopt_listeners(client.inference)
    except BaseException:
        engine("rm", "-f", name, check=False)
        raise
    return System(
        image,
        url=f"{client.inference}/predictions/cifar10",
        stop=lambda: engine("rm", "-f", name, check=False),
        processes=lambda: process_tree(pid),
        token=client.keys.get("inference"),
        cold_start_seconds=time.monotonic() - started,
        client=client,
    )


@exits_when_busy
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("benchmarks.images", __doc__, run=True, load=True)
    ports = "containers on this port and the next; the reference TorchServe on +10..+14"
    parser.add_argument("--port-base", type=int, default=8095, help=ports)
    parser.add_argument("--prefix", default="cifar10-bench", help="names of the containers started")
    args = parser.parse_args(argv)
    args.command = command_line("benchmarks.images", argv)
    if shutil.which("wrk") is None:
        parser.error("wrk not found; install it with `sudo apt-get install -y wrk`")
    with (
        OtherWork(noisy=args.noisy) as other_work,
        tempfile.TemporaryDirectory(prefix="images-bench-", ignore_cleanup_errors=True) as scratch,
    ):
        scratch = Path(scratch)
        sizes = {image: {"image": image} for image in IMAGES}
        for image, row in sizes.items():
            row["size_mb"] = int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6
            row["save_gzip_mb"] = pulled_bytes(image) / 1e6
            print(f"{image}: {row['size_mb']:.0f} MB, save | gzip {row['save_gzip_mb']:.0f} MB")
        stores = {model_format: scratch / f"store-{model_format}" for model_format in SERVING.values()}
        for model_format, store in stores.items():
            build_archive(args.run, store, model_format=model_format)
            store.chmod(0o755)  # the containers' user reads it
        scratch.chmod(0o755)
        listing = bench_images(args.data, args.images, scratch / "bench-images")
        rows, verification = [], None
        for index, (image, model_format) in enumerate(SERVING.items()):
            name = f"{args.prefix}-{index}"
            with start_container(image, stores[model_format], args.port_base, name, scratch) as system:
                sizes[image]["first_prediction_s"] = system.cold_start_seconds
                loads = system.loads(listing, args.concurrency, args.seconds, args.warmup)
                rows += [{"image": image, "connections": row["concurrency"], **row} for row in loads]
                if image == SLIM:
                    with LocalServer(scratch / "reference", stores["torchscript"], args.port_base + 10) as reference:
                        verification = compare(system.client, args.run, args.data, reference=reference.client)
        # the slim image's archive served bare, as `make serve` serves an archive: what the container costs
        onnx_config = yaml.safe_load(FORMATS["onnx"][1].read_text())
        with torchserve_system(
            "bare", args.run, onnx_config, scratch, args.port_base + 10, model_format="onnx"
        ) as bare:
            loads = bare.loads(listing, args.concurrency, args.seconds, args.warmup)
            rows += [{"image": BARE, "connections": row["concurrency"], **row} for row in loads]
    write(args, list(sizes.values()), rows, verification, other_work)
    raise SystemExit(0 if verification is not None and verification.ok else 1)


def write(args, sizes: list[dict], rows: list[dict], verification, other_work: OtherWork) -> None:
    columns = ["image", "connections", "rps", "p50_ms", "p99_ms", "errors", "server_cpu_ms_per_request"]
    report = Report("Container images: size, pull, cold start, serving", args.command, other_work)
    report.text(
        "One run, both serving images in turn on the same machine: compare them with each other, not with other runs.",
        "`size_mb`: `image inspect` (uncompressed). `save_gzip_mb`: `save IMAGE | gzip` (default level), what a"
        " node pulls near enough. `first_prediction_s`: `run -d` to the first answered prediction (archive mounted).",
    )
    report.table(sizes, ["image", "size_mb", "save_gzip_mb", "first_prediction_s"])
    report.text(
        f"Serving: wrk, {args.images} CIFAR-10 test JPEGs in turn, {args.seconds} s per level after a"
        f" {args.warmup} s warm-up; the torch image serves the TorchScript archive, the slim one the ONNX archive"
        " of the same run; server CPU = the container's processes."
    )
    report.table(rows, columns)
    by_key = {(row["image"], row["connections"]): row for row in rows}
    for connections in args.concurrency:
        slim, bare = by_key.get((SLIM, connections)), by_key.get((BARE, connections))
        if slim and bare:
            report.text(
                f"At {connections} connections the slim container served {slim['rps'] / bare['rps']:.0%} of the"
                f" requests/s of the same archive served bare ({slim['rps']:,.0f} against {bare['rps']:,.0f});"
                f" p99 {slim['p99_ms']:.1f} against {bare['p99_ms']:.1f} ms."
            )
    if verification is not None:
        report.text(
            f"Slim image against the TorchScript server of `make serve` (harness.server.LocalServer) on"
            f" {verification.images:,} test images: {verification.same_answer:,} with the same top 3 and"
            f" confidences within {CONFIDENCE_TOLERANCE:g} (largest difference"
            f" {verification.largest_confidence_difference:.4g}); served class = offline evaluation:"
            f" {verification.same_class:,}; HTTP errors {len(verification.errors)};"
            f" accuracy served {verification.served_accuracy:.4f}."
            f" Verdict: {'same answers' if verification.ok else 'MISMATCH'}.",
        )
    report.write(args.out / "images.md")
    write_csv(args.out / "images.csv", rows, columns)


if __name__ == "__main__":
    main()
