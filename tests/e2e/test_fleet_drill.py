"""A short fleet drill (fleet/; the full one is `make fleet-drill`): one replica of version A behind
HAProxy with a Service's semantics (no retry, no redispatch, out of rotation only by readiness) under
Locust's steady load is replaced by one of version B as the Deployment's rolling update does it. The
bounds are fleet/report.py's, as the drill reports them: no request fails, the answers switch from
A's to B's, A is out of rotation before its SIGTERM, and the balancer retried nothing.
"""

from __future__ import annotations

import subprocess
import sys

from helpers import PORT_BASE

from fleet.drill import DrillOptions, play
from fleet.report import verdicts
from repo import REPO

FLEET_PORTS = PORT_BASE + 300  # HAProxy; replica slots at +310.., +320.., +330.., +340..


def second_version(out_dir, data_source):
    """A small run with another seed: a model whose answers differ from the session's run."""
    command = [sys.executable, "-m", "train", "--data", str(data_source), "--epochs", "1", "--seed", "2"]
    command += ["--train-subset", "1000", "--test-subset", "200", "--out-dir", str(out_dir), "--run-name", "b"]
    subprocess.run(command, cwd=REPO, check=True)
    return out_dir / "b"


def small_payloads(out, data_source):
    """Locust's images, a small set, built by the command users run (`make payloads`)."""
    command = [sys.executable, "-m", "loadtests.payloads", "--data", str(data_source), "--out", str(out)]
    subprocess.run([*command, "--per-class", "3", "--enlarged-per-class", "1"], cwd=REPO, check=True)
    return out


def test_a_rolling_update_fails_no_request_and_switches_versions(tmp_path, trained_run, data_source):
    options = DrillOptions(
        root=tmp_path / "fleet",
        out=tmp_path / "report",
        run_a=trained_run,
        run_b=second_version(tmp_path / "models", data_source),
        port_base=FLEET_PORTS,
        users=4,
        warm=3,
        hold=2,
        scale_hold=0,
        scenarios=("rolling",),
        replicas=1,
        payloads=small_payloads(tmp_path / "payloads", data_source),
    )
    figures = play(options)
    results = verdicts(figures)  # the drill's own rules (fleet/report.py), as its report gives them
    assert all(held for _bound, held, _text in results), results
    bounds = {bound for bound, _held, _text in results}
    for bound in (
        "rolling update: 0 failed requests",
        "rolling update: answers switch from A to B",
        "the balancer retried and redispatched nothing",
        "each replica was out of rotation (readiness) before its SIGTERM",
    ):
        assert bound in bounds
