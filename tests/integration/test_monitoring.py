"""The handler's metrics on TorchServe's /metrics, and the Grafana dashboard's queries run by a real
Prometheus (Debian's `prometheus`) that scrapes the session's TorchServe with deploy/monitoring/prometheus.yml
and evaluates its rules."""

from __future__ import annotations

import json
import re
from collections import Counter
from urllib.parse import urlparse

import pytest
import yaml
from cifar10_metrics import METRICS
from helpers import MONITORING, REPO, query
from helpers import prometheus as run_prometheus

from serve.errors import ServiceError

DASHBOARD = MONITORING / "grafana" / "dashboards" / "cifar10.json"
# Grafana's own variables, as Grafana would set them for a 10-minute view scraped every second
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m"}


def sample_values(metrics_text: str, name: str, label: str) -> dict[str, float]:
    """{label value: sample} of metric `name` in Prometheus text format."""
    pattern = re.compile(rf'^{name}{{.*\b{label}="([^"]+)".*}} ([0-9.eE+-]+)$', re.M)
    return {value: float(sample) for value, sample in pattern.findall(metrics_text)}


def test_metrics_yaml_declares_what_the_handler_emits():
    declared = yaml.safe_load((REPO / "deploy" / "torchserve" / "metrics.yaml").read_text())["model_metrics"]
    for name, (kind, unit, labels) in METRICS.items():
        entries = [entry for entry in declared[kind.value] if entry["name"] == name]
        assert entries == [{"name": name, "unit": unit, "dimensions": ["model_name", "model_version", *labels]}]


def test_predictions_and_rejections_are_counted_by_class_and_reason(server, cifar_test_jpegs):
    before = server.metrics()
    answers = Counter(server.predict(images[0])["prediction"] for images in cifar_test_jpegs.values())
    reasons = Counter()
    for body in (b"", b"not an image", b"still not an image", cifar_test_jpegs["cat"][0][:400]):
        with pytest.raises(ServiceError) as refused:
            server.predict(body)
        reasons[json.loads(refused.value.body)["reason"]] += 1
    assert len(reasons) >= 2
    after = server.metrics()
    for name, label, expected in (
        ("cifar10_predictions_total", "class", answers),
        ("cifar10_rejected_total", "reason", reasons),
    ):
        now, earlier = sample_values(after, name, label), sample_values(before, name, label)
        assert {value: now[value] - earlier.get(value, 0) for value in expected} == dict(expected), name
    for histogram in ("cifar10_batch_size", "cifar10_decode_seconds", "cifar10_inference_seconds"):
        assert re.search(rf'^{histogram}_count{{.*model_version="[0-9.]+".*}} [1-9]', after, re.M), histogram


def test_what_clients_wait_is_a_histogram_by_model_version_and_status(server, cifar_test_jpegs):
    name = "cifar10_request_duration_seconds"

    def counts(text: str) -> dict[str, float]:
        found = re.findall(rf'^{name}_count{{model="cifar10",version="default",status="(\dxx)",?}} (\S+)$', text, re.M)
        return {status: float(value) for status, value in found}

    before = counts(server.metrics())
    for image in (images[0] for images in cifar_test_jpegs.values()):
        server.predict(image)
    for body in (b"", b"not an image"):
        with pytest.raises(ServiceError):
            server.predict(body)
    after = server.metrics()
    grown = {status: after_count - before.get(status, 0) for status, after_count in counts(after).items()}
    assert grown.get("2xx") == len(cifar_test_jpegs) and grown.get("4xx") == 2, grown
    buckets = re.findall(
        rf'^{name}_bucket{{model="cifar10",version="default",status="2xx",le="([^"]+)",?}} ', after, re.M
    )
    assert "0.1" in buckets and "+Inf" in buckets
    assert "pid" not in after.split(f"# TYPE {name} histogram")[1].split("# TYPE")[0]  # no per-process series


def test_the_frontend_reports_each_model_versions_ready_workers(server):
    (described,) = server.describe()
    ready = sum(worker["status"] == "READY" for worker in described["workers"])
    found = re.findall(
        r'^cifar10_workers{model="cifar10",version="([^"]+)",status="READY",?} (\S+)$', server.metrics(), re.M
    )
    assert [(version, float(count)) for version, count in found] == [(described["modelVersion"], ready)]


@pytest.fixture
def prometheus(server, tmp_path):
    """Prometheus with deploy/monitoring/prometheus.yml pointed at the session's TorchServe: its rules too
    (evaluated every second), without the Alertmanager."""
    rule_files = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["rule_files"]
    with run_prometheus(
        urlparse(server.metrics_url).netloc, tmp_path, [MONITORING / path for path in rule_files]
    ) as url:
        yield url


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_every_dashboard_query_returns_data(server, prometheus, cifar_test_jpegs):
    total = sum(sample_values(server.metrics(), "cifar10_predictions_total", "class").values())
    images = [image for per_class in cifar_test_jpegs.values() for image in per_class]
    for image in images:
        server.predict(image)
    with pytest.raises(ServiceError):
        server.predict(b"not an image")
    # Prometheus has scraped after the traffic once the handler's counter shows all of it
    expected = total + len(images)
    query(prometheus, "sum(cifar10_predictions_total)", until=lambda r: r and float(r[0]["value"][1]) >= expected)
    for title, expression in dashboard_queries():
        for variable, value in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, value)
        result = query(prometheus, expression, timeout=10)
        assert result, f"{title}: {expression} returned no data"
