"""The Locust scenarios: a short smoke load through the same files users run, against the real
TorchServe of conftest.server (the shape's rules alone: tests/unit/test_loadtest_rules.py)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

# The locust subprocesses get an environment without the variable that keeps locust from
# gevent-patching the pytest process (tests/unit/test_loadtest_rules.py sets it).
LOCUST_ENV = {name: value for name, value in os.environ.items() if name != "LOCUST_SKIP_MONKEY_PATCH"}


@pytest.fixture(scope="module")
def payloads(tmp_path_factory, data_source) -> Path:
    """A small payload set, built by the command users run (`make payloads`)."""
    out = tmp_path_factory.mktemp("loadtest") / "payloads"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.payloads",
            "--data",
            str(data_source),
            "--out",
            str(out),
            "--per-class",
            "3",
            "--enlarged-per-class",
            "1",
        ],
        cwd=REPO,
        check=True,
    )
    return out


def locust(server, payloads: Path, reports: Path, *options: str) -> subprocess.CompletedProcess:
    """A Locust run that checks behaviour, not speed: --noisy, so that a busy test machine does not
    keep its summary from being written (harness/other_work.py)."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "--headless",
        "--only-summary",
        "--noisy",
        "--host",
        server.inference,
        "--management-url",
        server.management,
        "--key-file",
        str(server.key_file),
        "--payloads",
        str(payloads),
        "--csv",
        str(reports / "locust"),
        *options,
    ]
    return subprocess.run(command, cwd=REPO, env=LOCUST_ENV, capture_output=True, text=True, timeout=120)


def stats_by_name(reports: Path) -> dict[str, dict]:
    with open(reports / "locust_stats.csv", newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def test_smoke_load_through_the_steady_scenario(server, payloads, tmp_path):
    """20 s of the steady scenario, 4 users, the operator adding a worker under load: every valid
    request answered with a valid classification, every bad payload refused with 400.

    The p99 bound is set out of reach (this checks behaviour, not speed), and the operator scales
    up only (--operator-mode up, the default, named here so that the test keeps it): TorchServe
    0.12 fails the batch in flight on a worker that a scale-down removes (see README: Load testing).
    """
    reports = tmp_path / "steady"
    result = locust(
        server,
        payloads,
        reports,
        "-f",
        "loadtests/steady.py",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "20s",
        "--operator-interval",
        "4",
        "--operator-mode",
        "up",
        "--p99-ms",
        "30000",
    )
    summary = (reports / "summary.md").read_text()
    assert result.returncode == 0, summary + result.stderr[-3000:]
    assert "**PASS**" in summary
    assert "Machine: other work took" in summary  # what the machine did beside the run, stated

    stats = stats_by_name(reports)
    names = set(stats) - {"Aggregated"}
    assert all(int(stats[name]["Failure Count"]) == 0 for name in names), stats
    assert {name.rsplit(" ", 1)[1] for name in names if name.startswith("predict")} == {"raw", "multipart"}
    assert any(name.startswith("predict jpeg-32") for name in names)
    assert any(name.startswith("predict png-1600") for name in names)
    assert any(name.startswith("bad") for name in names)
    configured = server.describe()[0]["minWorkers"]
    assert int(stats[f"manage scale to {configured + 1}"]["Request Count"]) == 1
    assert int(stats["manage describe"]["Request Count"]) >= 2
    assert len(server.describe()[0]["workers"]) == configured  # put back as the operator found it


def test_a_breached_service_level_fails_the_command(server, payloads, tmp_path):
    """A p99 bound no service can meet: the run still completes, and Locust exits 1."""
    reports = tmp_path / "breach"
    result = locust(
        server,
        payloads,
        reports,
        "-f",
        "loadtests/steady.py",
        "ClassifierUser",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "3s",
        "--p99-ms",
        "0.001",
    )
    summary = (reports / "summary.md").read_text()
    assert result.returncode == 1, summary + result.stderr[-3000:]
    assert "**NOT MET**: p99 of valid predictions" in summary and "**FAIL**" in summary
    assert "NOT MET**: zero failed" not in summary
