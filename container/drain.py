"""Drain one replica before it stops: stop taking traffic, wait until every request it took is
answered, then return (the caller stops TorchServe).

    python -m container.drain [--drain-file draining] [--gateway-status http://127.0.0.1:8090/stub_status]
                          [--settle 15] [--quiet 2] [--timeout 40]

1. It writes --drain-file: the readiness check (`python -m container.healthcheck --drain-file ...`)
   fails from then on, so the Service (or the fleet drill's HAProxy) stops sending new requests.
2. It waits at least --settle seconds (Kubernetes needs a moment to take the pod out of every
   node's endpoints and ingress; the fleet drill's balancer needs its readiness checks), then
   until no new request has arrived for --quiet seconds and no client connection is left open.
   Endpoints steer new connections only: an open keep-alive connection could still carry a request
   once TorchServe is gone. The gateway closes busy connections after `keepalive_time` and idle
   ones after `keepalive_timeout` (nginx.conf), so the wait ends.
3. It exits 0; with requests still in flight after --timeout seconds it exits 1 (Kubernetes then
   stops the container all the same).

Requests are counted by the gateway in front of TorchServe (nginx's stub_status: `requests` is
the total it accepted, `Writing` the requests it is answering now), not by TorchServe: TorchServe
0.12 exposes no count of requests in flight (its Requests2XX counts the responses of every API,
management and /ping included), and a request queued in TorchServe is in flight at the gateway.
Standard library only: the Kubernetes preStop hook runs it in the serve image.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.2


class DrainError(Exception):
    """The gateway did not answer, or requests were still in flight at the deadline."""


@dataclass(frozen=True)
class GatewayCounts:
    requests: int  # accepted since the gateway started, these status requests included
    in_flight: int  # being answered now, this status request excluded
    connections: int  # client connections open, this status request's excluded


def parse_stub_status(text: str) -> GatewayCounts:
    """Reads nginx's stub_status page (`Active connections: 1 / server accepts handled requests /
    1 1 1 / Reading: 0 Writing: 1 Waiting: 0`)."""
    totals = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.MULTILINE)
    writing = re.search(r"Writing:\s*(\d+)", text)
    active = re.search(r"Active connections:\s*(\d+)", text)
    if not totals or not writing or not active:
        raise DrainError(f"not an nginx stub_status page: {text[:200]!r}")
    return GatewayCounts(int(totals.group(3)), int(writing.group(1)) - 1, int(active.group(1)) - 1)


def gateway_counts(status_url: str) -> GatewayCounts:
    try:
        with urllib.request.urlopen(status_url, timeout=5) as response:
            return parse_stub_status(response.read().decode())
    except OSError as error:
        raise DrainError(f"gateway status {status_url}: {error}") from error


def drain(drain_file: Path, status_url: str, settle: float, quiet: float, timeout: float, log=print) -> float:
    """Runs steps 1-2 above; returns the seconds it took. Raises DrainError at the deadline."""
    started = time.monotonic()
    drain_file.parent.mkdir(parents=True, exist_ok=True)
    drain_file.write_text("draining\n")
    log(f"drain: {drain_file} written; readiness fails from now on")
    last = gateway_counts(status_url)
    last_arrival = started
    while True:
        time.sleep(POLL_SECONDS)
        now = time.monotonic()
        counts = gateway_counts(status_url)
        if counts.requests - last.requests > 1:  # more than this poll's own status request
            last_arrival = now
        last = counts
        if now - started >= settle and now - last_arrival >= quiet and counts.connections <= 0:
            log(f"drain: no request for {now - last_arrival:.1f}s and no connection open after {now - started:.1f}s")
            return now - started
        if now - started >= timeout:
            raise DrainError(
                f"{counts.in_flight} request(s) in flight, {counts.connections} connection(s) open after {timeout:.0f}s"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drain-file", type=Path, default=Path("draining"))
    parser.add_argument("--gateway-status", default="http://127.0.0.1:8090/stub_status")
    parser.add_argument("--settle", type=float, default=15, help="seconds before the replica may stop (default: 15)")
    parser.add_argument("--quiet", type=float, default=2, help="seconds without a new request (default: 2)")
    parser.add_argument("--timeout", type=float, default=40, help="give up after this many seconds (default: 40)")
    args = parser.parse_args(argv)
    try:
        drain(args.drain_file, args.gateway_status, args.settle, args.quiet, args.timeout)
    except DrainError as error:
        print(f"drain: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
