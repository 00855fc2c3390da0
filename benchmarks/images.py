"""The container images side by side: what a node pulls, how soon a container answers, and the two
serving images' throughput in one run; the slim image's answers checked against the TorchScript
server that `make serve` runs.

    python -m benchmarks.images --run models/latest --data ../shared/data/cifar10-jpeg.tar.gz

Images (`make images` tags them `local`): cifar10-serve (torch), cifar10-serve-slim (ONNX Runtime,
no torch), cifar10-train. For each: its size (`image inspect`) and the bytes of `save | gzip` (what
a node pulls, near enough: registries hold layers gzipped). For each serving image, serving an
archive of --run in the format it takes (TorchScript, ONNX) mounted read-only where Compose mounts
the store: seconds from `run -d` to the first prediction, then wrk at each --concurrency after a
warm-up (the serving benchmark's images and wrk loop), with the server's CPU time per request (the
container's processes, read on the host). Last, every test image through the slim container and a
TorchServe run as `make serve` runs it (serve.server.LocalServer, TorchScript): serve.verify's
compare with that server as the reference (same top 3, confidences within its tolerance).
Writes reports/images.md and reports/images.csv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load import bench_images
from benchmarks.servers import System, process_tree, until
from serve.archive import REPO, build_archive
from serve.client import Client, ServiceError, sample_jpeg
from serve.report import Report, write_csv
from serve.server import LocalServer
from serve.verify import CONFIDENCE_TOLERANCE, compare

IMAGES = ["cifar10-serve:local", "cifar10-serve-slim:local", "cifar10-train:local"]
SERVING = {"cifar10-serve:local": "torchscript", "cifar10-serve-slim:local": "onnx"}  # image -> archive format
SLIM = "cifar10-serve-slim:local"
MODEL_STORE = "/home/model-server/model-store"  # where the serving images read their archives
KEY_FILE = "/home/model-server/run/key_file.json"


class EngineError(RuntimeError):
    """The container engine refused a command."""


def engine_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """podman (ENGINE=docker for docker) and its environment: the project's podman settings unless
    CONTAINERS_CONF is set."""
    env = {"CONTAINERS_CONF": str(REPO / "deploy" / "docker" / "containers.conf"), **os.environ}
    return [os.environ.get("ENGINE", "podman"), *args], env


def engine(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command, env = engine_command(*args)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EngineError(f"{' '.join(args[:2])} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def pulled_bytes(image: str) -> int:
    """The bytes of `save IMAGE | gzip` (default level), counted as they stream by."""
    command, env = engine_command("save", image)
    save = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    gzip = subprocess.Popen(["gzip", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    save.stdout.close()
    total = 0
    while chunk := gzip.stdout.read(1 << 20):
        total += len(chunk)
    if save.wait() != 0 or gzip.wait() != 0:
        raise EngineError(f"save {image} | gzip failed")
    return total


def start_container(image: str, store: Path, port: int, name: str, scratch: Path) -> System:
    """`image` serving `store`, ready once it answered a prediction (its cold start: from `run -d`);
    its CPU time is that of the container's processes, read on the host."""
    key_dir = scratch / name
    key_dir.mkdir()
    client = Client(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", "", key_file=key_dir / "key_file.json")
    started = time.monotonic()
    engine(
        "run", "-d", "--name", name, "--init", "-p", f"127.0.0.1:{port}:8080", "-p", f"127.0.0.1:{port + 1}:8081",
        "-v", f"{store}:{MODEL_STORE}:ro", image,
    )  # fmt: skip

    def answers() -> dict:
        client.key_file.write_text(engine("exec", name, "cat", KEY_FILE).stdout)  # TorchServe writes it at start
        client.refresh_keys()
        return client.predict(sample_jpeg(), timeout=10)

    try:
        until(answers, (EngineError, ServiceError, OSError, KeyError, ValueError), 300, f"{image}: no prediction")
        pid = int(engine("inspect", "--format", "{{.State.Pid}}", name).stdout)  # its init, on the host
    except BaseException:
        engine("rm", "-f", name, check=False)
        raise
    return System(
        image,
        url=f"{client.inference}/predictions/cifar10",
        stop=lambda: engine("rm", "-f", name, check=False),
        processes=lambda: process_tree(pid),
        token=client.keys["inference"],
        cold_start_seconds=time.monotonic() - started,
        client=client,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=REPO / "models" / "latest", help="the trained run to serve")
    parser.add_argument("--data", default=os.environ.get("CIFAR10_DATA"), help="CIFAR-10 copy (default $CIFAR10_DATA)")
    parser.add_argument("--images", type=int, default=500, help="benchmark images sent in turn by wrk")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=int, default=15, help="per concurrency level")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--port-base", type=int, default=8095, help="containers on this port and the next; "
                        "the reference TorchServe on +10..+14")  # fmt: skip
    parser.add_argument("--prefix", default="cifar10-bench", help="names of the containers started")
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if not args.data or shutil.which("wrk") is None:
        raise SystemExit("error: needs --data (or CIFAR10_DATA) and wrk (`sudo apt-get install -y wrk`)")
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="images-bench-"))
    try:
        sizes = [
            {"image": image, "size_mb": int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6}
            for image in IMAGES
        ]
        for row in sizes:
            row["save_gzip_mb"] = pulled_bytes(row["image"]) / 1e6
            print(f"{row['image']}: {row['size_mb']:.0f} MB, save | gzip {row['save_gzip_mb']:.0f} MB")
        stores = {}
        for model_format in sorted(set(SERVING.values())):
            stores[model_format] = scratch / f"store-{model_format}"
            build_archive(args.run, stores[model_format], model_format=model_format)
            stores[model_format].chmod(0o755)  # the containers' user reads it
        scratch.chmod(0o755)
        listing = bench_images(args.data, args.images, scratch / "bench-images")
        rows, verification = [], None
        for index, (image, model_format) in enumerate(SERVING.items()):
            name = f"{args.prefix}-{index}"
            with start_container(image, stores[model_format], args.port_base, name, scratch) as system:
                next(row for row in sizes if row["image"] == image)["first_prediction_s"] = system.cold_start_seconds
                loads = system.loads(listing, args.concurrency, args.seconds, args.warmup)
                rows += [{"image": image, "connections": row["concurrency"], **row} for row in loads]
                if image == SLIM:
                    with LocalServer(scratch / "reference", stores["torchscript"], args.port_base + 10) as reference:
                        verification = compare(system.client, args.run, args.data, reference=reference.client)
        write(args, sizes, rows, verification, load_before)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raise SystemExit(0 if verification is not None and verification.ok else 1)


def write(args, sizes: list[dict], rows: list[dict], verification, load_before: tuple) -> None:
    columns = ["image", "connections", "rps", "p50_ms", "p99_ms", "errors", "server_cpu_ms_per_request"]
    load_after = os.getloadavg()
    command = " ".join(["python -m benchmarks.images", *args.argv])
    report = Report("Container images: size, pull, cold start, serving", command)
    report.text(
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after; one run, both serving images"
        f" in turn on the same machine: compare them with each other, not with other runs.",
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
    if verification is not None:
        report.text(
            f"Slim image against the TorchScript server of `make serve` (serve.server.LocalServer) on"
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
