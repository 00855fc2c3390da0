"""The load shapes: stages of a fixed user count, each judged alone, and the end-of-run check.

Each shape stops by itself after its last stage (the ramp at the first step that breaks the service
level), recording each request into the stage in which it finished. At the end the service levels are
judged into `summary.md` (beside the --csv files, or --summary; printed without either); a level not
met makes Locust exit 1, so a scenario can gate a release. The other work on this machine is measured
from the start to the end, the server under load counting as the measurement's own where it runs
here (harness/other_work.py): a busy machine's run writes no summary and exits 2, unless --noisy.
The options: loadtests/users.py (OPTIONS).
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass, field
from itertools import accumulate, takewhile
from pathlib import Path
from typing import NamedTuple

import locust
from locust import LoadTestShape, events
from locust.runners import WorkerRunner
from locust.stats import RequestStats

from harness.other_work import BusyMachine, OtherWork, adopt_listeners
from harness.report import Report
from loadtests.users import MIX, SHARED, ClassifierUser, OperatorUser, PacedUser, WrongAnswer, group_of, management_url

GROUP_TITLES = {"predict": "valid predictions", "bad": "bad payloads (400 expected)", "manage": "management (operator)"}
LATENCIES = ["per second", "p50 ms", "p95 ms", "p99 ms"]
STAGE_COLUMNS = ["stage", "users", "seconds", "valid predictions", *LATENCIES, "failed requests", "held"]
GROUP_COLUMNS = ["requests", "count", "failed", *LATENCIES, "max ms"]
log = logging.getLogger("loadtests")


@dataclass
class Stage:
    name: str
    users: int  # all users, the operator included where the scenario has one
    seconds: float
    spawn_rate: float
    p99_bound_ms: float | None  # the bound on the p99 of valid predictions here (None: no bound)
    stats: RequestStats = field(default_factory=lambda: RequestStats(use_response_times_cache=False))
    wrong_answers: int = 0
    ran_seconds: float = 0.0  # how much of it ran (the run may end early)

    def group(self, group: str):
        return self.stats.get(group, "")

    @property
    def p99_ms(self) -> float:
        return self.group("predict").get_response_time_percentile(0.99)

    @property
    def held(self) -> bool | None:
        """Valid predictions were answered, nothing failed, and p99 <= the bound (None: it has not run)."""
        if not self.ran_seconds:
            return None
        too_slow = self.p99_bound_ms is not None and self.p99_ms > self.p99_bound_ms
        return self.group("predict").num_requests > 0 and self.stats.num_failures == 0 and not too_slow


class Level(NamedTuple):
    """One service level and whether the run met it."""

    promise: str
    met: bool
    detail: str


def no_failures(promise: str, entry, none_sent: str = "") -> Level:
    """Met when requests of `entry` (a Locust StatsEntry) were sent and none failed."""
    detail = f"{entry.num_failures:,} failed of {entry.num_requests:,}"
    return Level(promise, entry.num_requests > 0 and entry.num_failures == 0, none_sent or detail)


class StagedShape(LoadTestShape):
    """A sequence of stages; subclasses say which (`plan`), whether a breach ends the run, and what
    the run promises (`levels`)."""

    abstract = True
    stop_at_breach = False

    stages: tuple[Stage, ...] | list[Stage] = ()  # planned at the first tick, from Locust's options
    other_work: OtherWork  # measured from Locust's init to its end (measure_the_machine)

    def configure(self, options) -> None:
        self.stages = self.plan(options)
        self.p99_bound_ms = options.p99_ms
        self.ends = list(accumulate(stage.seconds for stage in self.stages))

    def stage_index(self, run_time: float) -> int:
        """The stage running at `run_time` seconds; len(stages) once all are over."""
        return next((index for index, end in enumerate(self.ends) if run_time < end), len(self.stages))

    def tick(self):
        if not self.stages:
            self.configure(self.runner.environment.parsed_options)
            self.runner.environment.events.request.add_listener(self.record)
        run_time = self.get_run_time()
        index = self.stage_index(run_time)
        for stage in self.stages[:index]:
            stage.ran_seconds = stage.seconds
        broke = self.stop_at_breach and not all(stage.held for stage in self.stages[:index])
        if broke or index == len(self.stages):
            return None
        stage = self.stages[index]
        stage.ran_seconds = run_time - (self.ends[index] - stage.seconds)
        return stage.users, stage.spawn_rate

    def record(self, name, response_time, response_length, exception, **_kwargs):
        """Locust's request event: the request counts in the stage running when it finished."""
        stage = self.stages[min(self.stage_index(self.get_run_time()), len(self.stages) - 1)]
        stage.stats.log_request("", group_of(name), response_time, response_length)
        if exception is not None:
            stage.stats.log_error("", group_of(name), exception)
            stage.wrong_answers += isinstance(exception, WrongAnswer)

    def ran(self) -> list[Stage]:
        return [stage for stage in self.stages if stage.ran_seconds]

    def total(self, group: str):
        """One group's requests over the run, as a Locust StatsEntry."""
        merged = RequestStats(use_response_times_cache=False).get(group, "")
        for stage in self.stages:
            merged.extend(stage.group(group))
        return merged

    def notes(self) -> list[str]:
        """Lines of the summary after the tables."""
        return []

    def levels(self) -> list[Level]:
        """Nothing fails, every bad payload gets its 400, and the p99 of each bounded stage holds."""
        predictions, bad, manage = (self.total(group) for group in GROUP_TITLES)
        none_sent = "" if bad.num_requests else "none sent: run longer or raise --bad-share"
        levels = [
            no_failures("zero failed valid predictions", predictions),
            no_failures("every bad payload answered 400 with a JSON error", bad, none_sent),
        ]
        if manage.num_requests:
            levels.append(no_failures("no management call failed while workers changed", manage))
        for stage in self.ran():
            if stage.p99_bound_ms is not None:
                promise = f"p99 of valid predictions <= {stage.p99_bound_ms:g} ms ({stage.name})"
                levels.append(Level(promise, stage.p99_ms <= stage.p99_bound_ms, f"{_ms(stage.p99_ms)} ms"))
        return levels


class SteadyShape(StagedShape):
    use_common_options = True  # Locust's own -u users, -r spawn rate and -t (60 s without it)

    def plan(self, options):
        users = options.num_users or 1
        seconds = options.run_time or 60
        return [Stage("steady", users, seconds, options.spawn_rate or users, options.p99_ms)]


class RampShape(StagedShape):
    stop_at_breach = True

    def plan(self, options):
        users = range(options.ramp_start_users, options.ramp_max_users + 1, options.ramp_step_users)
        return [
            Stage(f"step {n}", count, options.ramp_step_time, options.ramp_step_users, options.p99_ms)
            for n, count in enumerate(users, start=1)
        ]

    @property
    def capacity(self) -> Stage | None:
        """The last step of the unbroken run of steps that held from the start."""
        held = list(takewhile(lambda stage: stage.held, self.stages))
        return held[-1] if held else None

    def levels(self) -> list[Level]:
        """Steps up to the capacity met every level; the step that broke them is the finding, but even
        there no answer may break the API's contract."""
        wrong = sum(stage.wrong_answers for stage in self.stages)
        sent = self.total("bad").num_requests
        capacity = self.capacity
        capacity_detail = f"{capacity.users} users" if capacity else "the first step broke"
        wrong_promise = "no wrong answer in any step (invalid body, or a bad payload not refused with 400)"
        return [
            Level("at least the first step held (capacity found)", capacity is not None, capacity_detail),
            Level(wrong_promise, wrong == 0, f"{wrong:,} wrong answers"),
            Level("bad payloads were sent", sent > 0, f"{sent:,} sent"),
        ]

    def notes(self) -> list[str]:
        capacity = self.capacity
        broke = next((stage for stage in self.stages if stage.held is False), None)
        if capacity is None:
            lines = ["**Capacity: none** — the first step already broke the service level."]
        else:
            rate = capacity.group("predict").num_requests / capacity.ran_seconds
            lines = [
                f"**Capacity: {'' if broke else 'at least '}{capacity.users} users, {rate:,.1f} valid predictions/s "
                f"at p99 {_ms(capacity.p99_ms)} ms** (bound {self.p99_bound_ms:g} ms)."
            ]
        if broke is not None:
            lines.append(
                f"The next step ({broke.users} users) broke it: p99 {_ms(broke.p99_ms)} ms, "
                f"{broke.stats.num_failures:,} failed requests."
            )
        elif capacity is not None:
            lines.append("No step broke it: the capacity is at least the last step (raise --ramp-max-users).")
        return lines


class SpikeShape(StagedShape):
    def plan(self, options):
        low, high = options.spike_low_users, options.spike_high_users
        return [
            Stage("before", low, options.spike_before, low, options.p99_ms),
            Stage("spike", high, options.spike_duration, high, None),
            Stage("recovery", low, options.spike_after, high, options.p99_ms),
        ]


def _ms(value: float) -> str:
    return f"{value:,.0f}"


def figures(entry, seconds: float, count: str) -> dict:
    """Count, rate and latencies (p50 is Locust's median) of a Locust StatsEntry."""
    return {
        count: entry.num_requests,
        "per second": entry.num_requests / seconds if seconds > 0 else 0.0,
        "p50 ms": entry.median_response_time,
        "p95 ms": entry.get_response_time_percentile(0.95),
        "p99 ms": entry.get_response_time_percentile(0.99),
    }


def summary(environment, shape: StagedShape, levels: list[Level], passed: bool) -> Report:
    options = environment.parsed_options
    scenario = Path(options.locustfile).stem if options.locustfile else "load"
    host = environment.host or ClassifierUser.host
    operator = " (one of them the operator)" if OperatorUser.found_workers is not None else ""
    if any(issubclass(user, PacedUser) for user in environment.user_classes):
        pace = f"paced, each sends at most {options.user_rate:.3g} requests/s"
    else:
        pace = "closed loop, each keeps one request in flight"
    weights = {kind: MIX[kind] for kind in SHARED.payloads}
    mix = ", ".join(f"{kind} {weight / sum(weights.values()):.0%}" for kind, weight in weights.items())
    report = Report(f"Load test: {scenario}", " ".join(["locust", *sys.argv[1:]]), shape.other_work)
    report.text(
        f"- target: {host}/predictions/{options.model} (management {management_url(options, host)})",
        f"- load generator: Locust {locust.__version__} on {platform.node()}",
        f"- users: {pace}{operator}; {options.bad_share:.0%} bad payloads; valid payloads: {mix}; "
        f"{options.multipart_share:.0%} as a multipart `image`, the rest as the raw body",
    )
    stage_rows = [
        {
            "stage": stage.name,
            "users": stage.users,
            "seconds": round(stage.ran_seconds),
            **figures(stage.group("predict"), stage.ran_seconds, "valid predictions"),
            "failed requests": stage.stats.num_failures,
            "held": "yes" if stage.held else "**no**",
        }
        for stage in shape.ran()
    ]
    # The whole run's requests by group; per second over the run's span, as Locust's own total_rps.
    stats = environment.stats
    span = (stats.last_request_timestamp or stats.start_time) - stats.start_time
    totals = {GROUP_TITLES[group]: shape.total(group) for group in GROUP_TITLES}
    group_rows = [
        {
            "requests": title,
            **figures(total, span, "count"),
            "failed": total.num_failures,
            "max ms": total.max_response_time,
        }
        for title, total in totals.items()
        if total.num_requests
    ]
    milliseconds = dict.fromkeys(["p50 ms", "p95 ms", "p99 ms", "max ms"], _ms)
    report.table(stage_rows, STAGE_COLUMNS, milliseconds).table(group_rows, GROUP_COLUMNS, milliseconds)
    report.text(*shape.notes())
    bounded = any(stage.p99_bound_ms is not None for stage in shape.stages)
    report.text("## Service levels" + (f" (p99 bound {shape.p99_bound_ms:g} ms)" if bounded else ""))
    report.text(*(f"- {'met' if level.met else '**NOT MET**'}: {level.promise} — {level.detail}" for level in levels))
    return report.text(f"**{'PASS' if passed else 'FAIL'}** (exit code {0 if passed else 1})")


def judged_here(environment) -> bool:
    """Whether this Locust process judges a staged run: alone, or the master of its workers."""
    return not isinstance(environment.runner, WorkerRunner) and isinstance(environment.shape_class, StagedShape)


@events.init.add_listener
def measure_the_machine(environment, **_kwargs):
    """Measures the other work on this machine until the end; a machine already busy ends the run here."""
    if environment.parsed_options is None or not judged_here(environment):
        return
    try:
        environment.shape_class.other_work = OtherWork(noisy=environment.parsed_options.noisy).start()
    except BusyMachine as error:
        log.error("error: %s", error)
        raise SystemExit(2) from None


@events.test_start.add_listener
def adopt_the_server(environment, **_kwargs):
    """The server under load is part of the measurement where it runs on this machine."""
    adopt_listeners(environment.host or ClassifierUser.host)


@events.quitting.add_listener
def check_service_levels(environment, **_kwargs):
    shape = environment.shape_class
    if not judged_here(environment) or not shape.stages:
        return
    shape.other_work.stop()
    try:
        shape.other_work.judge()  # before the levels: the soak's write their figures beside the summary
    except BusyMachine as error:
        log.error("error: %s", error)
        environment.process_exit_code = 2
        return
    levels = shape.levels()
    if OperatorUser.found_workers is not None:  # restored by users.restore_workers, at test_stop (before this)
        promise, error = f"workers restored to {OperatorUser.found_workers} after the run", OperatorUser.restore_error
        levels.append(Level(promise, not error, error or "done"))
    if environment.runner.exceptions:
        count = len(environment.runner.exceptions)
        levels.append(Level("no error inside the load generator", False, f"{count} exceptions (see the log)"))
    passed = all(level.met for level in levels)
    report = summary(environment, shape, levels, passed)
    options = environment.parsed_options
    path = options.summary or (options.csv_prefix and Path(options.csv_prefix).parent / "summary.md")
    if path:
        log.info("summary written to %s", report.write(Path(path)))  # which prints it too
    else:
        print(report.markdown(), flush=True)
    environment.process_exit_code = 0 if passed else 1
