"""A short fleet drill (fleet/drill.py; the full one is `make fleet-drill`): one replica of version A
behind HAProxy under Locust's steady load is replaced by one of version B as the Deployment's
rolling update does it (start B, wait until the balancer has it in service, drain A with the
preStop drain, stop A). No request may fail, and the answers must switch from A's to B's.
"""

from __future__ import annotations

import subprocess
import sys

from helpers import PORT_BASE

from fleet.balancer import SECONDS_TO_TAKE_OUT
from fleet.drill import DrillOptions, play, verdicts
from serve.archive import REPO

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
        settle=SECONDS_TO_TAKE_OUT,
        quiet=1,
        scenarios=("rolling",),
        replicas=1,
        payloads=small_payloads(tmp_path / "payloads", data_source),
    )
    figures = play(options)
    results = {bound: (held, text) for bound, held, text in verdicts(figures)}
    assert results["rolling update: 0 failed requests"][0], results
    assert results["rolling update: answers switch from A to B"][0], results
    assert figures["figures"]["rolling update"]["requests"] > 50  # the load did run through it
