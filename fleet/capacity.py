"""One pod's capacity, measured as the pod is deployed, and the HPA target it gives.

    python -m fleet.capacity --run models/latest [--image localhost/cifar10-serve-slim:local]

The CPU overlay's pod: the slim serving image (ONNX Runtime) serving the run's ONNX archive, in a
container limited to the torchserve container's CPU and memory limits (deploy/k8s/base/deployment.yaml),
with the pod's config.properties (its ports moved) and log configuration, behind the pod's token gateway (nginx with
its nginx.conf, a bearer token); wrk sends CIFAR-10 test JPEGs through the gateway at a rising
number of connections. The capacity is the highest rate of a step that held the service level
(p99 at most --p99-ms, no error); the HPA target is TARGET_SHARE of it. Writes reports/capacity.md
and .csv, and the target into the HPA manifest (tests/integration/test_kubernetes.py checks that
the two agree).
"""

from __future__ import annotations

import csv
import math
import re
import secrets
import sys
from pathlib import Path

from benchmarks import command_line, command_parser
from benchmarks.images import MODEL_STORE, EngineError, engine, start_container
from benchmarks.systems import WrkError, bench_images, run_wrk, until
from fleet.pod import GATEWAY_OFFSET, K8S, STATUS_OFFSET, FleetError, read_pod, start_gateway, stop_process
from harness.other_work import OtherWork, exits_when_busy
from harness.report import Report, write_csv
from repo import REPO
from serve.archive import build_archive
from serve.config import config_on_ports

TARGET_SHARE = 0.65  # of one pod's capacity: the headroom that absorbs a burst while a new pod starts
HPA = K8S / "horizontalpodautoscaler.yaml"
TARGET_LINE = re.compile(r'^(\s*averageValue: )"(\d+)"(.*)$', re.M)
COLUMNS = ["connections", "rps", "p50_ms", "p99_ms", "errors", "held"]


def capacity(rows: list[dict]) -> float:
    """The highest rate among the steps that held the service level; 0 when none did."""
    return max((row["rps"] for row in rows if row["held"]), default=0.0)


def hpa_target(pod_capacity: float) -> int:
    """The HPA's averageValue for a pod of this capacity (req/s, rounded down)."""
    return math.floor(TARGET_SHARE * pod_capacity)


def reported_target(report_csv: Path = REPO / "reports" / "capacity.csv") -> int:
    """The HPA target that the capacity report's steps give."""
    with open(report_csv, newline="") as handle:
        rows = [{"rps": float(row["rps"]), "held": row["held"] == "True"} for row in csv.DictReader(handle)]
    return hpa_target(capacity(rows))


def written_target(text: str) -> int:
    """The averageValue of the HPA manifest's text."""
    found = TARGET_LINE.findall(text)
    if len(found) != 1:
        raise FleetError(f"{HPA}: expected one averageValue line, found {len(found)}")
    return int(found[0][1])


def write_target(target: int, path: Path = HPA) -> None:
    text = path.read_text()
    written_target(text)
    path.write_text(TARGET_LINE.sub(lambda m: f'{m.group(1)}"{target}"{m.group(3)}', text))


@exits_when_busy
def main(argv: list[str] | None = None) -> int:
    parser = command_parser("fleet.capacity", __doc__, run=True, load=True)
    parser.set_defaults(concurrency=[1, 2, 4, 8, 16, 32, 64, 128], seconds=10)
    parser.add_argument("--image", default="localhost/cifar10-serve-slim:local", help="the serving image (make images)")
    parser.add_argument("--port-base", type=int, default=38590, help="the container's port, the gateway's at +5, +6")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="the service level: p99 latency")
    parser.add_argument("--workdir", type=Path, default=REPO / "logs" / "fleet-capacity", help="archive, gateway")
    args = parser.parse_args(argv)
    if engine("image", "inspect", args.image, check=False).returncode != 0:
        print(f"error: no image {args.image}: build it with `make images`", file=sys.stderr)
        return 2
    workdir, limits, home = args.workdir.resolve(), read_pod().limits, "/home/model-server"
    store, name, token = workdir / "model-store", f"fleet-capacity-{secrets.token_hex(4)}", secrets.token_hex(16)
    build_archive(args.run, store, model_format="onnx")
    listing = bench_images(args.data, args.images, workdir / "images")
    # The pod's config.properties with its ports moved: TorchServe on loopback, as in the pod, where the
    # gateway reaches it without a port forward (the container shares this machine's network).
    config = workdir / "config.properties"
    metrics = f"http://127.0.0.1:{args.port_base + 2}"
    config.write_text(config_on_ports(K8S / "config.properties", args.port_base, metrics_address=metrics))
    options = ["--cpus", limits["cpu"], "--memory", limits["memory"].replace("Gi", "g"), "--network", "host"]
    options += ["-v", f"{config}:{home}/config.properties:ro", "-v", f"{K8S / 'log4j2.xml'}:{home}/log4j2.xml:ro"]
    # the pod's command (deployment.yaml's args); token checks are the gateway's
    command = f"env PYTHONPATH={home} python -m container.entrypoint --ncs --ts-config {home}/config.properties"
    command += f" --model-store {MODEL_STORE} --log-config {home}/log4j2.xml"
    gateway_port = args.port_base + GATEWAY_OFFSET
    url = f"http://127.0.0.1:{gateway_port}/predictions/cifar10"
    rows = []
    try:
        with (
            OtherWork(noisy=args.noisy) as other_work,
            start_container(args.image, store, args.port_base, name, workdir, options, command.split(), publish=False),
        ):
            gateway = start_gateway(
                workdir / "gateway", gateway_port, args.port_base, args.port_base + STATUS_OFFSET, {"capacity": token}
            )
            try:
                until(lambda: run_wrk(url, listing, 1, 1, token, form=False), (WrkError,), 60, "the gateway: no answer")
                run_wrk(url, listing, 16, args.warmup, token, form=False)
                for connections in args.concurrency:
                    result = run_wrk(url, listing, connections, args.seconds, token, form=False)
                    held = result["p99_ms"] <= args.p99_ms and result["errors"] == 0
                    rows.append({"connections": connections, **result, "held": held})
                    print(
                        f"c={connections:4d} {result['rps']:8.1f} req/s  p99 {result['p99_ms']:7.1f} ms  "
                        f"errors {result['errors']}",
                        flush=True,
                    )
            finally:
                stop_process(gateway)
    except (EngineError, FleetError, WrkError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    pod_capacity = capacity(rows)
    if not pod_capacity:
        print(
            f"error: no step held p99 <= {args.p99_ms:g} ms with no error: nothing to size the HPA on", file=sys.stderr
        )
        return 1
    target = hpa_target(pod_capacity)
    Report("One pod's capacity, as deployed", command_line("fleet.capacity", argv), other_work).text(
        f"`{args.image}` serving the ONNX archive of `{args.run}` with `--cpus {limits['cpu']} --memory "
        f"{limits['memory']}` (the torchserve container's limits), the pod's config.properties and log "
        f"configuration, behind the pod's gateway (nginx, bearer token). wrk (one thread, on the same "
        f"machine) sends {args.images} CIFAR-10 test JPEGs in turn, {args.seconds} s per step after a "
        f"{args.warmup} s warm-up. Service level: p99 <= {args.p99_ms:g} ms and no error."
    ).table(rows, COLUMNS).text(
        f"Capacity: **{pod_capacity:,.0f} req/s**. HPA target = {TARGET_SHARE:.0%} of it = **{target} req/s per "
        f"pod**, written into `{HPA.relative_to(REPO)}` (docs/kubernetes.md: Capacity and autoscaling). These are "
        "32 x 32 JPEGs: larger photos cost more to decode, and a mix of them lowers the capacity."
    ).write(args.out / "capacity.md")  # first: on a busy machine nothing is written
    write_csv(args.out / "capacity.csv", rows, COLUMNS)
    write_target(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
