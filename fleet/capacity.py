"""One pod's capacity, measured in a container limited like the pod: the serving image under podman
with `--cpus` and `--memory` at the torchserve container's requests (deploy/k8s), the pod's log
configuration, and Locust's ClassifierUser (the loadtests/ payload mix) at growing user counts.

    python -m fleet.capacity --run models/fleet/a [--image localhost/cifar10-serve:local]

Writes reports/fleet/capacity.md and .csv: each step's throughput and p99, the capacity (the best
throughput) and the HPA target it gives (TARGET_SHARE of it; docs/kubernetes.md).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from benchmarks import command_line
from benchmarks.images import MODEL_STORE, engine, start_container
from fleet.drill import HelpFormatter, start_locust
from fleet.pod import K8S, read_pod
from fleet.report import load_figures, read_sent
from loadtests.payloads import DEFAULT_FOLDER as PAYLOADS
from serve.archive import REPO, build_archive
from serve.other_work import OtherWork, add_noisy_option, exits_when_busy
from serve.report import Report, write_csv

TARGET_SHARE = 0.65  # of one pod's capacity: the headroom that absorbs a burst while a new pod starts
COLUMNS = ["users", "seconds", "requests", "per_second", "p50_ms", "p99_ms", "failed"]


def measure(url: str, root: Path, steps: list[int], seconds: float, payloads: Path) -> list[dict]:
    rows = []
    for users in steps:
        log = root / f"users-{users}.csv"
        start_locust(url, "", users, payloads, log, seconds=seconds).wait(timeout=seconds + 120)
        logged = read_sent(log)
        sent = [s for s in logged if s.time >= min(s.time for s in logged) + 5]  # 5 s to spawn
        rows.append({"users": users, **load_figures(sent, max(s.time for s in sent) - min(s.time for s in sent))})
        print(rows[-1], flush=True)
    return rows


@exits_when_busy
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.capacity", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="the training run to serve")
    parser.add_argument("--image", default="localhost/cifar10-serve:local", help="the serving image (make images)")
    parser.add_argument("--port", type=int, default=38590, help="the container's inference port on this machine")
    parser.add_argument("--users", default="4,8,16,32,64", help="Locust users per step")
    parser.add_argument("--seconds", type=float, default=30, help="seconds per step")
    parser.add_argument("--workdir", type=Path, default=REPO / "logs" / "fleet-capacity", help="model store, logs")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "fleet", help="the report's folder")
    parser.add_argument("--payloads", type=Path, default=PAYLOADS, help="Locust's images (make payloads)")
    add_noisy_option(parser)
    args = parser.parse_args(argv)
    if engine("image", "inspect", args.image, check=False).returncode != 0:
        print(f"error: no image {args.image}: build it with `make images`", file=sys.stderr)
        return 2
    workdir, requests, home = args.workdir.resolve(), read_pod().requests, "/home/model-server"
    store, name = workdir / "model-store", f"fleet-capacity-{secrets.token_hex(4)}"
    build_archive(args.run, store)
    options = ["--cpus", requests["cpu"], "--memory", requests["memory"].replace("Gi", "g")]
    options += ["-v", f"{K8S / 'log4j2.xml'}:{home}/log4j2.xml:ro"]
    # the pod's command: the image's CMD with the pod's log configuration; token auth off, for Locust
    command = f"env PYTHONPATH={home} python -m serve.entrypoint --ncs --ts-config {home}/config.properties"
    command += f" --model-store {MODEL_STORE} --log-config {home}/log4j2.xml --disable-token-auth"
    steps = [int(n) for n in args.users.split(",")]
    with (
        OtherWork(noisy=args.noisy) as other_work,
        start_container(args.image, store, args.port, name, workdir, options, command.split()) as pod,
    ):
        rows = measure(pod.client.inference, workdir, steps, args.seconds, args.payloads)
    best = max(rows, key=lambda row: row["per_second"])
    title = "One pod's capacity, in a container limited like the pod"
    Report(title, command_line("fleet.capacity", argv), other_work).text(
        f"`podman run --cpus {requests['cpu']} --memory {requests['memory']}` (the torchserve container's requests) "
        f"of `{args.image}`, the pod's log configuration; Locust's ClassifierUser (the loadtests/ mix, 5 % bad "
        f"payloads) on the same machine, {args.seconds:.0f} s per step."
    ).table(rows, COLUMNS).text(
        f"Capacity: **{best['per_second']:,.0f} req/s** ({best['users']} users, p99 {best['p99_ms']:,.0f} ms). "
        f"HPA target = {TARGET_SHARE:.0%} of it = **{TARGET_SHARE * best['per_second']:,.0f} req/s per pod**."
    ).write(args.out / "capacity.md")
    write_csv(args.out / "capacity.csv", rows, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
