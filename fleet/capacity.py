"""One pod's capacity, measured in a container limited like the pod: the serving image under podman
with `--cpus` and `--memory` at the torchserve container's requests (deploy/k8s), the pod's log
configuration, and Locust's ClassifierUser (the loadtests/ payload mix) at growing user counts.

    python -m fleet.capacity --run models/fleet/a [--image localhost/cifar10-serve:local]

Writes reports/fleet/capacity.md and .csv: each step's throughput and p99, the capacity (the best
throughput) and the HPA target it gives (TARGET_SHARE of it; docs/kubernetes.md).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

from fleet.drill import HelpFormatter, start_locust
from fleet.pod import K8S, read_pod
from fleet.report import load_figures, read_sent
from loadtests.payloads import DEFAULT_FOLDER as PAYLOADS
from serve.archive import REPO, build_archive
from serve.client import Client
from serve.report import Report, write_csv
from serve.server import ServerPaths, wait_until_serving

TARGET_SHARE = 0.65  # of one pod's capacity: the headroom that absorbs a burst while a new pod starts
COLUMNS = ["users", "seconds", "requests", "per_second", "p50_ms", "p99_ms", "failed"]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"CONTAINERS_CONF": str(REPO / "deploy" / "docker" / "containers.conf"), **os.environ}
    return subprocess.run(["podman", *args], env=env, check=check, capture_output=True, text=True)


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
    args = parser.parse_args(argv)
    if podman("image", "exists", args.image, check=False).returncode != 0:
        print(f"error: no image {args.image}: build it with `make images`", file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    store, requests = workdir / "model-store", read_pod().requests
    build_archive(args.run, store)
    name, home = f"fleet-capacity-{secrets.token_hex(4)}", "/home/model-server"
    memory = requests["memory"].replace("Gi", "g")
    command = ["run", "-d", "--name", name, "--cpus", requests["cpu"], "--memory", memory]
    command += ["-p", f"127.0.0.1:{args.port}:8080", "-v", f"{store}:{home}/model-store:ro"]
    command += ["-v", f"{K8S / 'log4j2.xml'}:{home}/log4j2.xml:ro", args.image, "env", f"PYTHONPATH={home}"]
    command += ["python", "-m", "serve.entrypoint", "--ncs", "--ts-config", f"{home}/config.properties"]
    command += ["--model-store", f"{home}/model-store", "--log-config", f"{home}/log4j2.xml", "--disable-token-auth"]
    podman(*command)
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_until_serving(Client(url, url, url), "cifar10", ServerPaths(workdir / "config.properties", workdir), 240)
        load = os.getloadavg()
        rows = measure(url, workdir, [int(n) for n in args.users.split(",")], args.seconds, args.payloads)
    finally:
        podman("rm", "-f", name, check=False)
    best = max(rows, key=lambda row: row["per_second"])
    command = "python -m fleet.capacity " + " ".join(argv if argv is not None else sys.argv[1:])
    write_csv(args.out / "capacity.csv", rows, COLUMNS)
    Report("One pod's capacity, in a container limited like the pod", command).text(
        f"`podman run --cpus {requests['cpu']} --memory {requests['memory']}` (the torchserve container's requests) "
        f"of `{args.image}`, the pod's log configuration; Locust's ClassifierUser (the loadtests/ mix, 5 % bad "
        f"payloads) on the same machine, {args.seconds:.0f} s per step. Machine load average at the start "
        f"{load[0]:.1f} ({os.cpu_count()} cores, shared with other work and with Locust)."
    ).table(rows, COLUMNS).text(
        f"Capacity: **{best['per_second']:,.0f} req/s** ({best['users']} users, p99 {best['p99_ms']:,.0f} ms). "
        f"HPA target = {TARGET_SHARE:.0%} of it = **{TARGET_SHARE * best['per_second']:,.0f} req/s per pod**."
    ).write(args.out / "capacity.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
