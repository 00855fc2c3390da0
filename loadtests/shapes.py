"""The three load shapes, as stages of a fixed user count, each measured on its own.

Every shape is a Locust `LoadTestShape` that stops by itself after its last stage. While it runs it
records each request into the stage in which it finished, so that the end-of-run check can judge a
stage alone: the ramp's steps, the spike's recovery.

- steady: Locust's own -u users (and -r spawn rate) for -t (DEFAULT_STEADY_SECONDS without -t);
- ramp: --ramp-start-users, then + --ramp-step-users every --ramp-step-time seconds up to
  --ramp-max-users; it stops at the first step that breaks the service level (a failed request,
  or a p99 above --p99-ms); the last step that held is the capacity;
- spike: --spike-low-users for --spike-before seconds, --spike-high-users at once for
  --spike-duration seconds, then --spike-low-users again for --spike-after seconds (the recovery).

Their options are in loadtests/users.py (OPTIONS), with the users'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

from locust import LoadTestShape
from locust.stats import RequestStats

from loadtests.users import WrongAnswer, group_of

DEFAULT_STEADY_SECONDS = 60


@dataclass
class Stage:
    name: str
    users: int  # all users, the operator included where the scenario has one
    seconds: float
    spawn_rate: float
    bounded: bool = True  # whether the p99 of valid predictions must stay under the bound here
    stats: RequestStats = field(default_factory=lambda: RequestStats(use_response_times_cache=False))
    wrong_answers: int = 0
    ran_seconds: float = 0.0  # how much of it ran (the run may end early)
    held: bool | None = None  # None until judged

    def record(self, name: str, response_time: float, response_length: int, exception) -> None:
        self.stats.log_request("", group_of(name), response_time, response_length)
        if exception is not None:
            self.stats.log_error("", group_of(name), exception)
            self.wrong_answers += isinstance(exception, WrongAnswer)

    def group(self, group: str):
        return self.stats.get(group, "")

    @property
    def p99_ms(self) -> float:
        return self.group("predict").get_response_time_percentile(0.99)

    def judge(self, p99_bound_ms: float) -> bool:
        """Held: valid predictions were answered, nothing failed, and (if bounded) p99 <= the bound."""
        predictions = self.group("predict").num_requests
        self.held = (
            predictions > 0 and self.stats.num_failures == 0 and (not self.bounded or self.p99_ms <= p99_bound_ms)
        )
        return self.held


@dataclass
class Level:
    """One service level and whether the run met it."""

    promise: str
    met: bool
    detail: str


def _count(entry) -> str:
    return f"{entry.num_failures:,} failed of {entry.num_requests:,}"


class StagedShape(LoadTestShape):
    """A sequence of stages; subclasses say which (`plan`), whether a breach ends the run, and what
    the run promises (`levels`)."""

    abstract = True
    stop_at_breach = False

    def __init__(self):
        super().__init__()
        self.stages: list[Stage] = []
        self.p99_bound_ms = float("inf")
        self.judged = 0  # stages judged so far (they are judged in order, once over)

    def plan(self, options) -> list[Stage]:
        raise NotImplementedError

    def configure(self, options) -> None:
        self.stages = self.plan(options)
        self.p99_bound_ms = options.p99_ms
        self.ends = list(accumulate(stage.seconds for stage in self.stages))

    def stage_index(self, run_time: float) -> int:
        """The stage running at `run_time` seconds; len(stages) once all are over."""
        return next((index for index, end in enumerate(self.ends) if run_time < end), len(self.stages))

    def tick(self):
        if not self.stages:
            environment = self.runner.environment
            self.configure(environment.parsed_options)
            environment.events.request.add_listener(self.record)
        run_time = self.get_run_time()
        index = self.stage_index(run_time)
        while self.judged < index:
            stage = self.stages[self.judged]
            stage.ran_seconds = stage.seconds
            self.judged += 1
            if not stage.judge(self.p99_bound_ms) and self.stop_at_breach:
                return None
        if index == len(self.stages):
            return None
        stage = self.stages[index]
        stage.ran_seconds = run_time - (self.ends[index] - stage.seconds)
        return stage.users, stage.spawn_rate

    def record(self, name, response_time, response_length, exception, **_kwargs):
        """Locust's request event: the request counts in the stage running when it finished."""
        index = min(self.stage_index(self.get_run_time()), len(self.stages) - 1)
        self.stages[index].record(name, response_time, response_length, exception)

    def finish(self) -> None:
        """At the end of the run: judges the stage that was running if the run ended inside it."""
        for stage in self.stages[self.judged :]:
            if stage.ran_seconds > 0:
                stage.judge(self.p99_bound_ms)
        self.judged = len(self.stages)

    def ran(self) -> list[Stage]:
        return [stage for stage in self.stages if stage.held is not None]

    def total(self, group: str, stages: list[Stage]):
        """One group's requests over `stages`, as a Locust StatsEntry."""
        merged = RequestStats(use_response_times_cache=False).get(group, "")
        for stage in stages:
            merged.extend(stage.group(group))
        return merged

    def levels(self) -> list[Level]:
        """Nothing fails, every bad payload gets its 400, and the p99 of each bounded stage holds."""
        stages = self.ran()
        predictions, bad, manage = (self.total(group, stages) for group in ("predict", "bad", "manage"))
        levels = [
            Level(
                "zero failed valid predictions",
                predictions.num_requests > 0 and predictions.num_failures == 0,
                _count(predictions),
            ),
            Level(
                "every bad payload answered 400 with a JSON error",
                bad.num_requests > 0 and bad.num_failures == 0,
                _count(bad) if bad.num_requests else "none sent: run longer or raise --bad-share",
            ),
        ]
        if manage.num_requests:
            levels.append(
                Level("no management call failed while workers changed", manage.num_failures == 0, _count(manage))
            )
        bound = self.p99_bound_ms
        p99 = [(stage.name, stage.p99_ms) for stage in stages if stage.bounded]
        return levels + [
            Level(f"p99 of valid predictions <= {bound:g} ms ({name})", ms <= bound, f"{ms:,.0f} ms")
            for name, ms in p99
        ]


class SteadyShape(StagedShape):
    use_common_options = True  # Locust's own -u, -r and -t

    def plan(self, options):
        users = options.num_users or 1
        return [Stage("steady", users, options.run_time or DEFAULT_STEADY_SECONDS, options.spawn_rate or users)]


class RampShape(StagedShape):
    stop_at_breach = True

    def plan(self, options):
        users = range(options.ramp_start_users, options.ramp_max_users + 1, options.ramp_step_users)
        return [
            Stage(f"step {n}", count, options.ramp_step_time, spawn_rate=options.ramp_step_users)
            for n, count in enumerate(users, start=1)
        ]

    @property
    def capacity(self) -> Stage | None:
        """The last step of the unbroken run of steps that held from the start."""
        held = None
        for stage in self.stages:
            if not stage.held:
                break
            held = stage
        return held

    def levels(self) -> list[Level]:
        """Steps up to the capacity met every level; the step that broke them is the finding, but even
        there no answer may break the API's contract."""
        wrong = sum(stage.wrong_answers for stage in self.stages)
        bad = self.total("bad", self.stages)
        capacity = self.capacity
        return [
            Level(
                "at least the first step held (capacity found)",
                capacity is not None,
                f"{capacity.users} users" if capacity else "the first step broke",
            ),
            Level(
                "no wrong answer in any step (invalid body, or a bad payload not refused with 400)",
                wrong == 0,
                f"{wrong:,} wrong answers",
            ),
            Level("bad payloads were sent", bad.num_requests > 0, f"{bad.num_requests:,} sent"),
        ]


class SpikeShape(StagedShape):
    def plan(self, options):
        low, high = options.spike_low_users, options.spike_high_users
        return [
            Stage("before", low, options.spike_before, spawn_rate=low),
            Stage("spike", high, options.spike_duration, spawn_rate=high, bounded=False),
            Stage("recovery", low, options.spike_after, spawn_rate=high),
        ]
