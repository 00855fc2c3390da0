"""The service levels' recording rules and the alerts (deploy/monitoring/rules/): promtool checks
every rule file and runs the unit tests (deploy/monitoring/rules/tests/), which must cover every
alert; the Kubernetes PrometheusRule holds the same groups; the scrape job the rules name is the one
the service uses. test_alerts_end_to_end.py runs the rules against a real TorchServe."""

from __future__ import annotations

import re
import subprocess

import yaml
from helpers import REPO, require_tool

RULES = REPO / "deploy" / "monitoring" / "rules"
RULE_FILES = ["recording.rules.yml", "alerts.rules.yml"]
UNIT_TESTS = sorted((RULES / "tests").glob("*.yml"))
K8S = REPO / "deploy" / "k8s"


def groups(name: str) -> list[dict]:
    return yaml.safe_load((RULES / name).read_text())["groups"]


def rules() -> list[dict]:
    return [rule for name in RULE_FILES for group in groups(name) for rule in group["rules"]]


def promtool(*args: str) -> None:
    result = subprocess.run([require_tool("promtool"), *args], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_loads_every_rule_file():
    config = yaml.safe_load((REPO / "deploy" / "monitoring" / "prometheus.yml").read_text())
    assert config["rule_files"] == [f"rules/{name}" for name in RULE_FILES]
    assert sorted(path.name for path in RULES.glob("*.yml")) == sorted(RULE_FILES)


def test_every_rule_file_passes_promtool_check():
    promtool("check", "rules", *RULE_FILES)


def test_the_rule_unit_tests_pass():
    promtool("test", "rules", *(str(path) for path in UNIT_TESTS))


IDENTITY_LABELS = ("model", "model_name", "model_version", "instance")


def identities(labels: list[dict], keys: list[str]) -> set[tuple]:
    return {tuple(label[key] for key in keys) for label in labels if all(key in label for key in keys)}


def test_every_alert_is_unit_tested_firing_and_quiet():
    """Each alert fires in a unit test, and stays quiet in one: no alert expected at some time, or
    input series of a model (version, target) that the expected alerts leave out."""
    firing, quiet = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            series = [dict(re.findall(r'(\w+)="([^"]*)"', s["series"])) for s in case["input_series"]]
            for check in case.get("alert_rule_test", []):
                expected = [alert["exp_labels"] for alert in check["exp_alerts"]]
                keys = [key for key in IDENTITY_LABELS if expected and key in expected[0]]
                if expected:
                    firing.add(check["alertname"])
                if not expected or (keys and identities(series, keys) - identities(expected, keys)):
                    quiet.add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - firing == set(), "alerts no test fires"
    assert alerts - quiet == set(), "alerts no test keeps quiet"


def test_kubernetes_prometheusrule_holds_the_same_groups():
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == [group for name in RULE_FILES for group in groups(name)]
    assert "prometheusrule.yaml" in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]


def test_the_alerts_scrape_job_is_the_one_compose_and_kubernetes_name():
    config = yaml.safe_load((REPO / "deploy" / "monitoring" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["cifar10"]
    pod_monitor = yaml.safe_load((K8S / "base" / "podmonitor.yaml").read_text())
    pod_labels = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())["spec"]["template"]["metadata"]
    assert pod_labels["labels"][pod_monitor["spec"]["jobLabel"]] == "cifar10"
    assert {rule["expr"] for rule in rules() if "up{" in rule["expr"]} == {
        'up{job="cifar10"} == 0',
        'absent(up{job="cifar10"})',
    }
