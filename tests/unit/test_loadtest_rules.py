"""The load tests' own rules, without a server: the ramp shape's stepping and the checks that
count an answer as wrong."""

from __future__ import annotations

import os
from argparse import Namespace

# Importing locust would gevent-patch this whole pytest process; the shape and the checks below need
# none of it.
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
from loadtests.shapes import RampShape
from loadtests.users import error_problem


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


def test_the_load_generator_tells_a_refusal_from_a_server_error():
    """(Answers are checked by the answer contract, tests/unit/test_answer_contract.py.)"""
    assert error_problem({"code": 400, "type": "InvalidImage", "message": "empty body"}) is None
    assert error_problem({"code": 500, "message": "Worker died."}) is not None
