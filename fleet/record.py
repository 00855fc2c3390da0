"""Locust's side of the fleet drill: one CSV line per request (its end time, name, milliseconds and
failure), so that the drill can judge each window on its own; PacedUser (loadtests/users.py) is the
overload's user, found by Locust here.

    FLEET_REQUEST_LOG=requests.csv python -m locust -f loadtests/steady.py,fleet/record.py ... [PacedUser --user-rate 2]
"""

from __future__ import annotations

import csv
import os
import time

from locust import events

from loadtests.users import PacedUser  # noqa: F401

_log = {}


@events.init.add_listener
def open_log(environment, **_kwargs):
    # Closed at quitting; line-buffered: the drill reads it live.
    handle = open(os.environ["FLEET_REQUEST_LOG"], "w", newline="", buffering=1)  # noqa: SIM115
    _log.update(handle=handle, writer=csv.writer(handle))
    _log["writer"].writerow(("time", "name", "milliseconds", "failure"))


@events.request.add_listener
def record(name, response_time, exception=None, **_kwargs):
    failure = "" if exception is None else str(exception).replace("\n", " ")[:200]
    _log["writer"].writerow((f"{time.time():.3f}", name, f"{response_time:.1f}", failure))


@events.quitting.add_listener
def close_log(**_kwargs):
    _log["handle"].close()
