"""The shipped alerts against a real TorchServe: a real Prometheus (Debian's `prometheus`) scrapes a
TorchServe of this project (the drills' FaultServer: the test run's cifar10.mar beside the sleepy
model) and evaluates the rules of deploy/monitoring/rules/, while the test sends clean traffic, then
faults, and reads /api/v1/alerts; the alerts go on to a real Alertmanager (Debian's
prometheus-alertmanager) with deploy/monitoring/alertmanager.yml, as in the Compose stack.

The rules' windows and `for:` durations (an hour, fifteen minutes) are too long for a test, so
Prometheus loads a test-only copy generated here from the shipped files with every duration divided
by TIME_SCALE (one minute becomes one second; expressions, thresholds and labels unchanged), and
scrapes and evaluates every second. Each fault must bring its alert to firing within the scaled
window and `for:` of its rule, plus a margin for scraping and evaluation."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import yaml
from helpers import MONITORING, PORT_BASE, alertmanager, cifar10_test_jpegs, prometheus, query
from PIL import Image

from reliability.drills import FaultServer, call, clients, worker_pids

RULES = MONITORING / "rules"
TIME_SCALE = 60  # the test's second is the rules' minute
MARGIN = 20  # seconds for scrapes, rule evaluation and traffic to catch up
DRIFT_THRESHOLD = 0.25  # CIFAR10PredictedClassDrift's
CLEAN_PER_CLASS = 60


def scaled_seconds(duration: str) -> int:
    """A rule's duration (`5m`, `1h`, `3d`) in the test's seconds."""
    seconds = int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[duration[-1]]
    assert seconds % TIME_SCALE == 0, duration
    return seconds // TIME_SCALE


def scaled(text: str) -> str:
    """A rule file with every range (`[5m]`) and `for:` divided by TIME_SCALE."""
    groups = yaml.safe_load(text)
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+[smhd])\]", lambda m: f"[{scaled_seconds(m.group(1))}s]", rule["expr"])
            if "for" in rule:
                rule["for"] = f"{scaled_seconds(rule['for'])}s"
    return yaml.safe_dump(groups)


def promised(alert: str, window: str) -> float:
    """Seconds within which `alert` must fire once its fault began: the longest `window` its condition
    reads and its `for:`, both scaled, plus MARGIN."""
    (rule,) = [
        rule
        for group in yaml.safe_load((RULES / "alerts.rules.yml").read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == alert
    ]
    return scaled_seconds(window) + scaled_seconds(rule.get("for", "0s")) + MARGIN


def alerts(url: str) -> list[dict]:
    return requests.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]


def firing(url: str, name: str, labels: dict[str, str]) -> dict | None:
    """The alert `name` with `labels` among its own, if it is firing."""
    for alert in alerts(url):
        if (
            alert["labels"]["alertname"] == name
            and alert["state"] == "firing"
            and labels.items() <= alert["labels"].items()
        ):
            return alert
    return None


def wait_for_alert(url: str, name: str, labels: dict[str, str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if alert := firing(url, name, labels):
            return alert
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} {labels} not firing after {timeout:.0f}s: {alerts(url)}")
        time.sleep(1)


def wait_in_alertmanager(url: str, name: str, labels: dict[str, str], timeout: float) -> dict:
    """The active alert `name` with `labels`, once Alertmanager holds it."""
    deadline = time.monotonic() + timeout
    while True:
        held = requests.get(f"{url}/api/v2/alerts", params={"active": "true"}, timeout=10).json()
        for alert in held:
            if alert["labels"].get("alertname") == name and labels.items() <= alert["labels"].items():
                return alert
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} {labels} not in Alertmanager after {timeout:.0f}s: {held}")
        time.sleep(1)


def recorded(url: str, expression: str) -> float:
    (sample,) = query(url, expression, timeout=10)
    return float(sample["value"][1])


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clean_images(data_source) -> list[bytes]:
    """CLEAN_PER_CLASS CIFAR-10 test JPEGs of each class, shuffled."""
    per_class = cifar10_test_jpegs(data_source, CLEAN_PER_CLASS)
    images = [image for per in per_class.values() for image in per]
    assert len(images) == 10 * CLEAN_PER_CLASS
    random.Random(0).shuffle(images)
    return images


@pytest.fixture(scope="module")
def watched(tmp_path_factory, model_store):
    """(TorchServe, Prometheus URL, Alertmanager URL): the drills' FaultServer, a Prometheus evaluating
    the scaled rules, and the Alertmanager it sends them to."""
    workdir = tmp_path_factory.mktemp("alerting")
    rule_files = []
    for name in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["rule_files"]:
        rule_files.append(workdir / Path(name).name)
        rule_files[-1].write_text(scaled((MONITORING / name).read_text()))
    with FaultServer(model_store / "cifar10.mar", workdir / "torchserve", PORT_BASE + 80) as server:
        target = urlparse(server.client.metrics_url).netloc
        with (
            alertmanager(workdir) as manager,
            prometheus(target, workdir, rule_files, alertmanager=urlparse(manager).netloc) as url,
        ):
            yield server, url, manager


def traffic(client, images: list[bytes], model: str = "cifar10"):
    """One client posting `images` in turn, back to back, while the block runs."""
    position = iter(range(10**9))
    return clients(client, 1, lambda own: [call(own, images[next(position) % len(images)], model)])


def test_clean_traffic_fires_nothing_and_out_of_distribution_images_fire_the_drift_alert(watched, clean_images):
    server, url, _ = watched
    window = 3600 // TIME_SCALE  # the drift rules' hour
    with traffic(server.client, clean_images) as calls:
        time.sleep(window + 5)
    assert {c.status for c in calls} == {200}
    assert recorded(url, 'cifar10:predictions:increase1h{model_name="cifar10"}') >= 300
    tvd = recorded(url, 'cifar10:predicted_class:tvd_1h{model_name="cifar10"}')
    assert tvd < DRIFT_THRESHOLD, f"the test split's traffic drifts {tvd:.2f} from the model's own test-split mix"
    reference = query(url, 'cifar10:reference_class_share{model_name="cifar10"}', timeout=10)
    assert abs(sum(float(sample["value"][1]) for sample in reference) - 1) < 1e-3 and len(reference) == 10
    assert [(a["labels"]["alertname"], a["state"]) for a in alerts(url)] == []

    drift = "CIFAR10PredictedClassDrift"
    generator = np.random.default_rng(0)
    noise = [jpeg(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(200)]
    with traffic(server.client, noise):
        alert = wait_for_alert(url, "CIFAR10PredictedClassDrift", {"model_name": "cifar10"}, promised(drift, "1h"))
    assert float(alert["value"]) > DRIFT_THRESHOLD
    assert recorded(url, 'cifar10:predicted_class:tvd_1h{model_name="cifar10"}') > DRIFT_THRESHOLD


def test_a_flood_of_5xx_fires_the_availability_burn_rate_alert(watched):
    """The sleepy model (one worker, a queue of 4) kept busy by 8 clients: most requests get 503."""
    server, url, _ = watched
    alert = "CIFAR10AvailabilityBudgetBurningFast"
    with clients(server.client, 8, lambda own: [call(own, b"0.2", "sleepy")]) as calls:
        wait_for_alert(url, alert, {"model": "sleepy"}, promised(alert, "1h"))
    assert 503 in {c.status for c in calls}
    assert recorded(url, 'cifar10:request_errors:ratio_rate5m{model="sleepy"}') > 14.4 * 0.001


def test_killed_workers_fire_the_restart_alert_and_no_worker_the_no_ready_worker_alert(watched):
    """...and the no-ready-worker page reaches Alertmanager, routed to the team's receiver."""
    server, url, manager = watched
    client = server.client
    for _ in range(2):  # each worker killed twice: 4 starts
        pids = worker_pids(client)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(set(worker_pids(client)) - set(pids)) < len(pids) and time.monotonic() < deadline:
            time.sleep(0.5)
    restarting = "CIFAR10WorkersRestarting"
    wait_for_alert(url, restarting, {"model_name": "cifar10"}, promised(restarting, "15m"))

    no_ready, labels = "CIFAR10NoReadyWorker", {"model": "cifar10"}
    deadline = time.monotonic() + MARGIN  # over once the killed workers are back
    while firing(url, no_ready, labels) and time.monotonic() < deadline:
        time.sleep(1)
    assert not firing(url, no_ready, labels)
    client.scale(0)
    (described,) = client.describe()
    alert = wait_for_alert(url, no_ready, labels, promised(no_ready, "0s"))
    assert alert["labels"]["version"] == described["modelVersion"]
    received = wait_in_alertmanager(manager, no_ready, labels, MARGIN)
    assert received["labels"]["severity"] == alert["labels"]["severity"]
    assert received["receivers"][0]["name"] == "team-webhook"
