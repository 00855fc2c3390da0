"""The fleet drill: the Kubernetes Deployment's behaviour played with processes on this machine.

    python -m fleet.drill --run-a models/fleet/a --run-b models/fleet/b     (make fleet-drill)

Replicas of the pod (fleet/replica.py) behind HAProxy with a Service's semantics (fleet/balancer.py),
the Deployment's probes and drain read from deploy/k8s (fleet/manifest.py), Locust's load
(fleet/load.py); the scenarios are in fleet/scenarios.py, the bounds in fleet/verdicts.py. Writes
<out>/fleet-drill.md, .csv and .png; exits 1 when a bound is broken, 2 when the drill cannot play.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleet.balancer import BalancerError
from fleet.gateway import GatewayError
from fleet.replica import ReplicaError
from fleet.report import write_report
from fleet.scenarios import DrillError, DrillOptions, play
from serve.archive import REPO


def main(argv: list[str] | None = None) -> int:
    defaults = DrillOptions(Path(), Path(), Path(), Path(), 0)
    parser = argparse.ArgumentParser(
        prog="python -m fleet.drill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-a", type=Path, required=True, help="training run of version A")
    parser.add_argument("--run-b", type=Path, required=True, help="training run of version B (another seed)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "fleet")
    parser.add_argument("--workdir", type=Path, default=REPO / "logs" / "fleet-drill", help="replicas' folders")
    parser.add_argument("--port-base", type=int, default=38500, help="HAProxy's port; replica i at +10*i")
    for name, help_text in (
        ("users", "steady users"),
        ("warm", "seconds of load before the first scenario"),
        ("hold", "seconds of load after each change"),
        ("scale-hold", "seconds measured with one, then two replicas"),
        ("overload-seconds", "seconds of overload"),
        ("overload-users", "overload users (more than the replicas' queues hold)"),
        ("capacity", "req/s of two replicas for the overload (0: the scale scenario's)"),
    ):
        default = getattr(defaults, name.replace("-", "_"))
        parser.add_argument(f"--{name}", type=type(default), default=default, help=f"{help_text} (default: {default})")
    parser.add_argument("--scenarios", default=",".join(defaults.scenarios))
    parser.add_argument("--payloads", type=Path, default=defaults.payloads, help="Locust's images (make payloads)")
    args = parser.parse_args(argv)
    options = DrillOptions(
        args.workdir.resolve(), args.out, args.run_a, args.run_b, args.port_base, args.users, args.warm, args.hold,
        args.scale_hold, args.overload_seconds, args.overload_users, args.capacity, tuple(args.scenarios.split(",")),
        payloads=args.payloads,
    )  # fmt: skip
    try:
        figures = play(options)
    except (DrillError, BalancerError, GatewayError, ReplicaError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m fleet.drill " + " ".join(argv if argv is not None else sys.argv[1:])
    results = write_report(figures, options, command)
    for bound, held, text in results:
        print(f"{'held' if held else 'BROKEN'}: {bound}: {text}")
    return 0 if all(held for _bound, held, _text in results) else 1


if __name__ == "__main__":
    sys.exit(main())
