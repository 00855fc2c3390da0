"""At the end of a run: judge the service levels, write the Markdown summary, set the exit code.

Locust's own `--csv` and `--html` reports hold every request name; the summary (`summary.md` beside
the CSV files, or --summary) gives the figures a reader wants first. A level not met makes Locust
exit with code 1 (through `environment.process_exit_code`), so a scenario can gate a release.
"""

from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path

import locust
from locust import events
from locust.runners import WorkerRunner

from loadtests import users
from loadtests.shapes import Level, RampShape, Stage, StagedShape
from loadtests.users import MIX, ClassifierUser, OperatorUser, management_url
from serve.report import Report

log = logging.getLogger("loadtests")
STAGE_COLUMNS = ["stage", "users", "seconds", "valid predictions", "per second", "p50 ms", "p95 ms", "p99 ms"]
STAGE_COLUMNS += ["failed requests", "held"]
GROUP_COLUMNS = ["requests", "count", "failed", "per second", "p50 ms", "p95 ms", "p99 ms", "max ms"]
GROUP_TITLES = {"predict": "valid predictions", "bad": "bad payloads (400 expected)", "manage": "management (operator)"}


def summary_path(options) -> Path | None:
    if options.summary:
        return Path(options.summary)
    return Path(options.csv_prefix).parent / "summary.md" if options.csv_prefix else None


def _ms(value: float) -> str:
    return f"{value:,.0f}"


def latencies(entry) -> dict:
    """p50 (Locust's median), p95 and p99 of a Locust StatsEntry, in ms."""
    p95, p99 = (entry.get_response_time_percentile(share) for share in (0.95, 0.99))
    return {"p50 ms": entry.median_response_time, "p95 ms": p95, "p99 ms": p99}


def stage_rows(stages: list[Stage]) -> list[dict]:
    return [
        {
            "stage": stage.name,
            "users": stage.users,
            "seconds": round(stage.ran_seconds),
            "valid predictions": stage.group("predict").num_requests,
            "per second": stage.group("predict").num_requests / stage.ran_seconds if stage.ran_seconds else 0.0,
            **latencies(stage.group("predict")),
            "failed requests": stage.stats.num_failures,
            "held": "yes" if stage.held else "**no**",
        }
        for stage in stages
    ]


def group_rows(shape: StagedShape, stats) -> list[dict]:
    """The whole run's requests, by group; per second over the run's span, as Locust's own total_rps."""
    totals = {group: shape.total(group, shape.stages) for group in GROUP_TITLES}
    span = (stats.last_request_timestamp or stats.start_time) - stats.start_time
    return [
        {
            "requests": GROUP_TITLES[group],
            "count": total.num_requests,
            "failed": total.num_failures,
            "per second": total.num_requests / span if span > 0 else 0.0,
            **latencies(total),
            "max ms": total.max_response_time,
        }
        for group, total in totals.items()
        if total.num_requests
    ]


def summary(environment, shape: StagedShape, scenario: str, levels, passed: bool) -> Report:
    options = environment.parsed_options
    host = environment.host or ClassifierUser.host
    operator = " (one of them the operator)" if OperatorUser.found_workers is not None else ""
    mix = ", ".join(f"{kind} {weight}%" for kind, weight in MIX.items())
    milliseconds = dict.fromkeys(["p50 ms", "p95 ms", "p99 ms", "max ms"], _ms)
    report = Report(f"Load test: {scenario}", " ".join(["locust", *sys.argv[1:]]))
    report.text(
        f"- target: {host}/predictions/{options.model} (management {management_url(options, host)})",
        f"- load generator: Locust {locust.__version__} on {platform.node()}",
        f"- users: closed loop, each keeps one request in flight{operator}; "
        f"{options.bad_share:.0%} bad payloads; valid payloads: {mix}; half raw body, half multipart `image`",
    )
    report.table(stage_rows(shape.ran()), STAGE_COLUMNS, milliseconds)
    report.table(group_rows(shape, environment.stats), GROUP_COLUMNS, milliseconds)
    if isinstance(shape, RampShape):
        report.text(*capacity_lines(shape))
    report.text(f"## Service levels (p99 bound {shape.p99_bound_ms:g} ms)")
    report.text(*(f"- {'met' if level.met else '**NOT MET**'}: {level.promise} — {level.detail}" for level in levels))
    return report.text(f"**{'PASS' if passed else 'FAIL'}** (exit code {0 if passed else 1})")


def capacity_lines(shape: RampShape) -> list[str]:
    capacity = shape.capacity
    broke = next((stage for stage in shape.stages if stage.held is False), None)
    if capacity is None:
        lines = ["**Capacity: none** — the first step already broke the service level."]
    else:
        predict = capacity.group("predict")
        at_least = "" if broke else "at least "
        lines = [
            f"**Capacity: {at_least}{capacity.users} users, {predict.num_requests / capacity.ran_seconds:,.1f} valid "
            f"predictions/s at p99 {_ms(capacity.p99_ms)} ms** (bound {shape.p99_bound_ms:g} ms)."
        ]
    if broke is not None:
        lines.append(
            f"The next step ({broke.users} users) broke it: p99 {_ms(broke.p99_ms)} ms, "
            f"{broke.stats.num_failures:,} failed requests."
        )
    elif capacity is not None:
        lines.append("No step broke it: the capacity is at least the last step (raise --ramp-max-users).")
    return lines


@events.quitting.add_listener
def check_service_levels(environment, **_kwargs):
    shape = environment.shape_class
    if isinstance(environment.runner, WorkerRunner) or not isinstance(shape, StagedShape) or not shape.stages:
        return
    shape.finish()
    levels = shape.levels()
    restored = users.RESTORED  # set by the test_stop listener, which runs before this one
    if restored is not None:
        levels.append(
            Level(f"workers restored to {restored.workers} after the run", not restored.error, restored.error or "done")
        )
    if environment.runner.exceptions:
        count = len(environment.runner.exceptions)
        levels.append(Level("no error inside the load generator", False, f"{count} exceptions (see the log)"))
    passed = all(level.met for level in levels)
    scenario = Path(environment.parsed_options.locustfile).stem if environment.parsed_options.locustfile else "load"
    report = summary(environment, shape, scenario, levels, passed)
    path = summary_path(environment.parsed_options)
    if path is not None:
        report.write(path)
        log.info("summary written to %s", path)
    else:
        print(report.markdown(), flush=True)
    environment.process_exit_code = 0 if passed else 1
