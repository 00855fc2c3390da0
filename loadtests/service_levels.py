"""At the end of a run: judge the service levels, write the Markdown summary, set the exit code.

Locust's own `--csv` and `--html` reports hold every request name; the summary (`summary.md` beside
the CSV files, or --summary) gives the figures a reader wants first. A level not met makes Locust
exit with code 1 (through `environment.process_exit_code`), so a scenario can gate a release.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import locust
from locust import events
from locust.runners import WorkerRunner

from loadtests import users
from loadtests.shapes import Level, RampShape, Stage, StagedShape
from loadtests.users import GROUPS, MIX, ClassifierUser, OperatorUser, management_url

log = logging.getLogger("loadtests")
GROUP_TITLES = {"predict": "valid predictions", "bad": "bad payloads (400 expected)", "manage": "management (operator)"}


def summary_path(options) -> Path | None:
    if options.summary:
        return Path(options.summary)
    return Path(options.csv_prefix).parent / "summary.md" if options.csv_prefix else None


def _ms(value: float) -> str:
    return f"{value:,.0f}"


def stage_rows(stages: list[Stage]) -> list[str]:
    rows = [
        "| stage | users | seconds | valid predictions | per second | p50 ms | p95 ms | p99 ms | failed requests | held |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for stage in stages:
        predict = stage.group("predict")
        rate = predict.num_requests / stage.ran_seconds if stage.ran_seconds else 0.0
        held = "yes" if stage.held else "**no**"
        rows.append(
            f"| {stage.name} | {stage.users} | {stage.ran_seconds:.0f} | {predict.num_requests:,} | {rate:,.1f} "
            f"| {_ms(predict.median_response_time)} | {_ms(predict.get_response_time_percentile(0.95))} "
            f"| {_ms(stage.p99_ms)} | {stage.stats.num_failures:,} | {held} |"
        )
    return rows


def group_rows(stats) -> list[str]:
    """Locust's own statistics of the whole run, summed by request group."""
    rows = [
        "| requests | count | failed | per second | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for group in GROUPS:
        entries = [entry for (name, _method), entry in stats.entries.items() if name.split(" ", 1)[0] == group]
        if not entries:
            continue
        total = locust.stats.StatsEntry(stats, group, "")
        for entry in entries:
            total.extend(entry)
        rows.append(
            f"| {GROUP_TITLES[group]} | {total.num_requests:,} | {total.num_failures:,} | {total.total_rps:,.1f} "
            f"| {_ms(total.median_response_time)} | {_ms(total.get_response_time_percentile(0.95))} "
            f"| {_ms(total.get_response_time_percentile(0.99))} | {_ms(total.max_response_time)} |"
        )
    return rows


def summary(environment, shape: StagedShape, scenario: str, levels, passed: bool) -> str:
    options = environment.parsed_options
    host = environment.host or ClassifierUser.host
    operator = " (one of them the operator)" if OperatorUser.found_workers is not None else ""
    mix = ", ".join(f"{kind} {weight}%" for kind, weight in MIX.items())
    lines = [
        f"# Load test: {scenario}",
        "",
        f"- target: {host}/predictions/{options.model} (management {management_url(options, host)})",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load generator: Locust {locust.__version__} on "
        f"{platform.node()} ({os.cpu_count()} CPUs)",
        f"- users: closed loop, each keeps one request in flight{operator}; "
        f"{options.bad_share:.0%} bad payloads; valid payloads: {mix}; half raw body, half multipart `image`",
        "",
        *stage_rows(shape.ran()),
        "",
        *group_rows(environment.stats),
        "",
    ]
    if isinstance(shape, RampShape):
        capacity = shape.capacity
        broke = next((stage for stage in shape.stages if stage.held is False), None)
        if capacity is None:
            lines.append("**Capacity: none** — the first step already broke the service level.")
        else:
            predict = capacity.group("predict")
            at_least = "" if broke else "at least "
            lines.append(
                f"**Capacity: {at_least}{capacity.users} users, {predict.num_requests / capacity.ran_seconds:,.1f} valid "
                f"predictions/s at p99 {_ms(capacity.p99_ms)} ms** (bound {shape.p99_bound_ms:g} ms)."
            )
        if broke is not None:
            lines.append(
                f"The next step ({broke.users} users) broke it: p99 {_ms(broke.p99_ms)} ms, "
                f"{broke.stats.num_failures:,} failed requests."
            )
        elif capacity is not None:
            lines.append("No step broke it: the capacity is at least the last step (raise --ramp-max-users).")
        lines.append("")
    lines += [f"## Service levels (p99 bound {shape.p99_bound_ms:g} ms)", ""]
    lines += [f"- {'met' if level.met else '**NOT MET**'}: {level.promise} — {level.detail}" for level in levels]
    lines += ["", f"**{'PASS' if passed else 'FAIL'}** (exit code {0 if passed else 1})", ""]
    return "\n".join(lines)


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
            Level(
                f"workers restored to {restored.workers} after the run",
                restored.error is None,
                restored.error or "done",
            )
        )
    if environment.runner.exceptions:
        levels.append(
            Level(
                "no error inside the load generator",
                False,
                f"{len(environment.runner.exceptions)} exceptions (see the log)",
            )
        )
    passed = all(level.met for level in levels)
    scenario = Path(environment.parsed_options.locustfile).stem if environment.parsed_options.locustfile else "load"
    text = summary(environment, shape, scenario, levels, passed)
    path = summary_path(environment.parsed_options)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log.info("summary written to %s", path)
    print(text, flush=True)
    environment.process_exit_code = 0 if passed else 1
