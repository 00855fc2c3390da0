"""Locust's side of the fleet drill: one CSV line per request (its end time, name, milliseconds and
failure), so that the drill can judge each window on its own; and PacedUser, the overload's user.

    FLEET_REQUEST_LOG=requests.csv python -m locust -f loadtests/steady.py,fleet/record.py ...
"""

from __future__ import annotations

import csv
import os
import time

from locust import constant_throughput, events

from loadtests.users import ClassifierUser

COLUMNS = ("time", "name", "milliseconds", "failure")
_log = {}


class PacedUser(ClassifierUser):
    """ClassifierUser sending at most FLEET_USER_RATE requests per second: many of them offer a rate
    that does not fall when the answers slow down (until each has one request waiting)."""

    wait_time = constant_throughput(float(os.environ.get("FLEET_USER_RATE") or 1))


@events.init.add_listener
def open_log(environment, **_kwargs):
    path = os.environ.get("FLEET_REQUEST_LOG")
    if not path:
        raise RuntimeError("set FLEET_REQUEST_LOG to the CSV file the requests are written to")
    handle = open(path, "w", newline="")  # noqa: SIM115  (closed at quitting)
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    _log.update(handle=handle, writer=writer)


@events.request.add_listener
def record(name, response_time, exception=None, **_kwargs):
    failure = "" if exception is None else str(exception).replace("\n", " ")[:200]
    _log["writer"].writerow((f"{time.time():.3f}", name, f"{response_time:.1f}", failure))


@events.quitting.add_listener
def close_log(**_kwargs):
    _log["handle"].close()
