"""Test-only TorchServe handler (never shipped): sleeps for the seconds named in each request's body
(none for a body that is not a number), then answers {"slept": seconds}. reliability/drills.py
archives it to fill a job queue and to outlast responseTimeout on purpose."""

import json
import logging
import time

from ts.torch_handler.base_handler import BaseHandler

COMPUTES = "SleepyHandler computes"  # the line each batch logs (the worker's output reaches model_log.log)


class SleepyHandler(BaseHandler):
    def initialize(self, context):  # no model to load
        self.context = context
        self.initialized = True

    def handle(self, data, context):
        seconds = [_seconds(row.get("body") or b"0") for row in data]
        logging.getLogger(__name__).info("%s computes %d requests", COMPUTES, len(seconds))  # counted by the drills
        time.sleep(max(seconds))
        return [json.dumps({"slept": value}) for value in seconds]


def _seconds(body) -> float:
    try:
        return float(bytes(body))
    except ValueError:
        return 0.0
