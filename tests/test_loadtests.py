"""The Locust scenarios: a short smoke load through the same files users run, against the real
TorchServe of conftest.server, and the ramp shape's stepping on its own (no server)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

# Importing locust would gevent-patch this whole pytest process; the shape and the checks below need
# none of it. The locust subprocesses get an environment without this variable.
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
from loadtests.shapes import RampShape
from loadtests.users import error_problem, prediction_problem

REPO = Path(__file__).resolve().parent.parent
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
    command = [
        sys.executable,
        "-m",
        "locust",
        "--headless",
        "--only-summary",
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


def ramp(step_seconds=10.0, p99_ms=500.0) -> tuple[RampShape, dict]:
    """A ramp of 2, 5, 8, 11 users on a fake clock."""
    shape = RampShape()
    shape.configure(
        Namespace(ramp_start_users=2, ramp_step_users=3, ramp_step_time=step_seconds, ramp_max_users=11, p99_ms=p99_ms)
    )
    clock = {"now": 0.0}
    shape.get_run_time = lambda: clock["now"]
    return shape, clock


def answer(shape, clock, at: float, milliseconds: float, count: int = 100, exception=None):
    clock["now"] = at
    for _ in range(count):
        shape.record("predict jpeg-32 raw", milliseconds, 120, exception)


def test_ramp_steps_up_until_latency_breaks_the_bound():
    shape, clock = ramp()

    def tick(at):
        clock["now"] = at
        return shape.tick()

    assert tick(0) == (2, 3)
    answer(shape, clock, 5, milliseconds=40)
    assert tick(9.9) == (2, 3)
    assert tick(10) == (5, 3)
    answer(shape, clock, 15, milliseconds=120)
    assert tick(20) == (8, 3)
    answer(shape, clock, 25, milliseconds=900)  # p99 900 ms > 500 ms: this step breaks
    assert tick(30) is None
    assert [stage.held for stage in shape.stages] == [True, True, False, None]
    assert shape.capacity.users == 5


def test_ramp_stops_at_the_first_failed_request_and_after_its_last_step():
    shape, clock = ramp()
    shape.tick()
    answer(shape, clock, 5, milliseconds=40, count=99)
    answer(shape, clock, 6, milliseconds=40, count=1, exception=ConnectionError("refused"))
    clock["now"] = 10
    assert shape.tick() is None and shape.capacity is None

    shape, clock = ramp()
    for step, users in enumerate((2, 5, 8, 11)):
        answer(shape, clock, step * 10 + 5, milliseconds=40)
        clock["now"] = step * 10 + 5
        assert shape.tick() == (users, 3)
    clock["now"] = 40
    assert shape.tick() is None
    assert shape.capacity.users == 11


@pytest.mark.parametrize(
    "wrong",
    [
        {"prediction": "cat", "confidence": 0.5},
        {
            "prediction": "unicorn",
            "confidence": 0.5,
            "top3_predictions": [
                {"class": "unicorn", "confidence": 0.5},
                {"class": "cat", "confidence": 0.3},
                {"class": "dog", "confidence": 0.1},
            ],
        },
        {
            "prediction": "cat",
            "confidence": 0.6,
            "top3_predictions": [
                {"class": "cat", "confidence": 0.6},
                {"class": "dog", "confidence": 0.3},
                {"class": "frog", "confidence": 0.2},
            ],
        },
        {
            "prediction": "dog",
            "confidence": 0.3,
            "top3_predictions": [
                {"class": "cat", "confidence": 0.6},
                {"class": "dog", "confidence": 0.3},
                {"class": "frog", "confidence": 0.1},
            ],
        },
    ],
)
def test_the_load_generator_rejects_wrong_answers(wrong):
    right = {
        "prediction": "cat",
        "confidence": 0.6,
        "top3_predictions": [
            {"class": "cat", "confidence": 0.6},
            {"class": "dog", "confidence": 0.3},
            {"class": "frog", "confidence": 0.1},
        ],
    }
    assert prediction_problem(right) is None
    assert prediction_problem(wrong) is not None
    assert error_problem({"code": 400, "type": "InvalidImage", "message": "empty body"}) is None
    assert error_problem({"code": 500, "message": "Worker died."}) is not None
