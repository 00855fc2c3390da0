"""deploy/kserve, proven offline (no cluster here; the container tier serves the layout for real:
tests/e2e/test_containers.py): the manifests render with Kustomize and validate strictly against
KServe's own API model, the kserve SDK's classes (V1beta1InferenceService, V1alpha1ServingRuntime
and the Kubernetes classes they hold), run in the SDK's venv (.tools/kserve); KServe's CRDs are not
in its wheel, and no other source can be reached from here. Strictly: a field the model does not
name, or a value of the wrong type, fails. And the ServingRuntime starts TorchServe on the layout
that `make kserve-layout` writes, with a config.properties that differs from the plain pod's only
where docs/kubernetes.md says."""

from __future__ import annotations

import copy
import json
import subprocess

import kubernetes_validate
import pytest
import yaml
from helpers import REPO, kubectl

from serve.config import properties

KSERVE = REPO / "deploy" / "kserve"
KSERVE_PYTHON = REPO / ".tools" / "kserve" / "bin" / "python"
KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
KUBERNETES_VERSION = "1.33.0"  # the oldest the plain manifests need (tests/integration/test_kubernetes.py)
# Keys where deploy/kserve/config.properties differs from the plain pod's (its header says why).
KSERVE_DIFFERENCES = {"inference_address", "model_store"}

# Reads [[class name, object], ...] as JSON on stdin; prints in JSON each object's problems, joined (empty: valid).
# Each object is walked along the SDK's openapi_types / attribute_map (JSON names), then built with
# the class itself, which checks required fields and enumerations.
VALIDATE = """
import json, re, sys
import kserve
import kubernetes.client as k8s

def model(name):
    return getattr(kserve, name, None) or getattr(k8s, name, None)

def walk(value, kind, where, problems):
    inner = re.fullmatch(r"(?i)list\\[(.+)\\]", kind)
    mapping = re.fullmatch(r"(?i)dict(?:\\(str, (.+)\\)|\\[str, (.+)\\])", kind)
    if inner:
        if not isinstance(value, list):
            return problems.append(f"{where}: expected a list")
        for i, item in enumerate(value):
            walk(item, inner.group(1), f"{where}[{i}]", problems)
    elif mapping:
        if not isinstance(value, dict):
            return problems.append(f"{where}: expected a map")
        for key, item in value.items():
            walk(item, mapping.group(1) or mapping.group(2), f"{where}.{key}", problems)
    elif kind in ("str", "datetime"):
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{where}: expected an integer, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            problems.append(f"{where}: expected a boolean, got {value!r}")
    elif kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{where}: expected a number, got {value!r}")
    elif kind == "object":
        pass
    elif model(kind) is None:
        problems.append(f"{where}: the SDK has no model {kind}")
    elif not isinstance(value, dict):
        problems.append(f"{where}: expected an object ({kind})")
    else:
        cls = model(kind)
        fields = {json_name: attribute for attribute, json_name in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{where}.{key}: not a field of {kind}")
            else:
                walk(item, cls.openapi_types[fields[key]], f"{where}.{key}", problems)
        try:  # the class's own checks: required fields, enumerations
            cls(**{fields[key]: item for key, item in value.items() if key in fields})
        except (ValueError, TypeError) as error:
            problems.append(f"{where}: {error}")

answers = []
for kind, obj in json.load(sys.stdin):
    answers.append([])
    walk(obj, kind, obj.get("kind", kind), answers[-1])
print(json.dumps(["; ".join(problems) for problems in answers]))
"""


def validate(objects: list[dict]) -> list[str]:
    """Each object's problems under the kserve SDK's model (one string per object, empty: valid)."""
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"the kserve SDK's venv is missing: `make {KSERVE_PYTHON.relative_to(REPO)}` makes it")
    named = [[KINDS[(obj["apiVersion"], obj["kind"])], obj] for obj in objects]
    run = subprocess.run(
        [str(KSERVE_PYTHON), "-c", VALIDATE], input=json.dumps(named), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(KSERVE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def find(objects: list[dict], kind: str) -> dict:
    [found] = [obj for obj in objects if obj["kind"] == kind]
    return found


def test_the_manifests_validate_against_kserves_model_and_kubernetes(rendered):
    assert sorted(obj["kind"] for obj in rendered) == ["InferenceService", "NetworkPolicy", "ServingRuntime"]
    custom = [obj for obj in rendered if obj["kind"] != "NetworkPolicy"]
    assert validate(custom) == ["", ""]
    policy = find(rendered, "NetworkPolicy")
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    config = properties(KSERVE / "config.properties")
    assert ports == {int(config[key].rsplit(":", 1)[1]) for key in ("inference_address", "metrics_address")}


def test_the_validation_is_strict(rendered):
    service = copy.deepcopy(find(rendered, "InferenceService"))
    service["spec"]["predictor"]["model"]["storageURI"] = "pvc://typo"  # the field is storageUri
    runtime = copy.deepcopy(find(rendered, "ServingRuntime"))
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"  # an integer
    nameless = copy.deepcopy(find(rendered, "ServingRuntime"))
    del nameless["spec"]["containers"][0]["name"]  # required
    problems = validate([service, runtime, nameless])
    assert "storageURI: not a field of V1beta1ModelSpec" in problems[0]
    assert "containerPort: expected an integer" in problems[1]
    assert "containers[0]" in problems[2] and "name\n  Field required" in problems[2]


def test_the_service_runs_on_the_runtime_with_protocol_v2(rendered):
    runtime, service = find(rendered, "ServingRuntime"), find(rendered, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    [container] = runtime["spec"]["containers"]
    # KServe's own TorchServe runtime's arguments, on the layout make kserve-layout writes
    assert {"--model-store=/mnt/models/model-store", "--ts-config=/mnt/models/config/config.properties"} <= set(
        container["args"]
    )
    config = properties(KSERVE / "config.properties")
    assert config["inference_address"].endswith(f":{container['ports'][0]['containerPort']}")
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == config["metrics_address"].rsplit(":", 1)[1]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_the_config_differs_from_the_plain_pods_only_where_it_says():
    kserve, pod = properties(KSERVE / "config.properties"), properties(REPO / "deploy/k8s/base/config.properties")
    assert kserve.keys() == pod.keys()
    assert {key for key in kserve if kserve[key] != pod[key]} == KSERVE_DIFFERENCES
    assert kserve["model_store"] == "/mnt/models/model-store"
