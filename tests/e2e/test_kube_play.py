"""The rendered CPU overlay's pod, run by a real pod runner: `podman kube play` (podman 4.3).

What it plays as rendered: the init container's copy of the archive from the model image, the
read-only root with its emptyDirs, the pod's security context, the ConfigMaps (TorchServe's config
and console log configuration, the gateway's nginx.conf), the probes' commands (run with `podman
exec`, as the kubelet would run them) and a prediction through the gateway with a bearer token.

What podman 4.3 cannot play, changed here and validated offline instead (tests/integration/
test_kubernetes.py): the gateway as a native sidecar (an init container with restartPolicy Always;
podman would wait for it to exit: it runs as an ordinary container here); the pod's restart
policy (OnFailure: podman 4.3 gives init containers the pod's policy, and Always would re-run the
init container's copy over the archive TorchServe reads); the projected volume
(ConfigMap + Secret: one ConfigMap here, holding the test's tokens.map); Services, NetworkPolicy,
HPA (not pod objects). The images are local builds under the names of the overlay's images: the
serving image (`make images`), the model image (deploy/k8s/model-image on the Debian base) and a
stand-in for nginx-unprivileged (tests/e2e/gateway.Dockerfile).
"""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from helpers import PORT_BASE, REPO, require_container_engine

from container.healthcheck import probe_png
from container.keys import write_secret
from harness.engine import engine_env
from serve.archive import build_archive

GATEWAY_PORT = PORT_BASE + 360
NAME = f"fleet-kube-play-{os.getpid()}"
BASE_IMAGE = "localhost/cifar10-debian:bookworm-minbase"  # deploy/docker/local-base.sh makes it
ENV = engine_env()


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: {result.stderr[-3000:]}")
    return result


def local_build(reference: str) -> str:
    """The local build of an overlay's image: deploy/docker/build.sh (`make images`) tags
    <IMAGE_PREFIX><name>:local, IMAGE_PREFIX "cifar10-" unless set."""
    name = reference.rsplit("/", 1)[-1].split("@")[0].split(":")[0].removeprefix("cifar10-")
    local = f"localhost/{os.environ.get('IMAGE_PREFIX', 'cifar10-')}{name}:local"
    if podman("image", "exists", local, check=False).returncode != 0:
        pytest.fail(f"{local} is missing: build it with `make images` (deploy/docker/build.sh serve)")
    return local


def rendered_cpu_overlay() -> list[dict]:
    kubectl = REPO / ".venv" / "bin" / "kubectl"
    out = subprocess.run(
        [str(kubectl), "kustomize", str(REPO / "deploy/k8s/overlays/cpu")], capture_output=True, text=True, check=True
    )
    return [document for document in yaml.safe_load_all(out.stdout) if document]


def playable(objects: list[dict], images: dict[str, str], token: str, files: Path) -> list[dict]:
    """The Deployment and its ConfigMaps, with what podman 4.3 cannot play changed (module docstring);
    `files` receives the ConfigMap files the pod mounts by subPath (podman mounts them as hostPath files)."""
    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    deployment["metadata"] = {"name": NAME}
    spec = deployment["spec"]["template"]["spec"]
    # podman 4.3 gives init containers the pod's restart policy (Always for a Deployment): it would
    # run the init container's `cp` again and again, over the archive TorchServe is reading.
    spec["restartPolicy"] = "OnFailure"
    sidecars = [c for c in spec["initContainers"] if c.get("restartPolicy") == "Always"]
    spec["initContainers"] = [c for c in spec["initContainers"] if c not in sidecars]
    for sidecar in sidecars:
        del sidecar["restartPolicy"]
        sidecar["ports"][0]["hostPort"] = GATEWAY_PORT
    spec["containers"] = sidecars + spec["containers"]
    for container in spec["containers"] + spec["initContainers"]:
        container["image"] = images[container["name"]]
    gateway_map = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("cifar10-gateway")
    )
    gateway_map = copy.deepcopy(gateway_map)
    gateway_map["data"]["tokens.map"] = f'"Bearer {token}" kube-play-test;\n'
    volume = next(v for v in spec["volumes"] if "projected" in v)
    del volume["projected"]
    volume["configMap"] = {"name": gateway_map["metadata"]["name"]}
    configs = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("cifar10-torch"))
    for container in spec["containers"]:
        for mount in [m for m in container.get("volumeMounts", []) if "subPath" in m]:
            path = files / mount.pop("subPath")
            path.write_text(configs["data"][path.name])
            mount["name"] = f"file-{path.name.replace('.', '-')}"
            spec["volumes"].append({"name": mount["name"], "hostPath": {"path": str(path), "type": "File"}})
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "torchserve-config"]
    return [gateway_map, deployment]


@pytest.fixture(scope="module")
def pod(tmp_path_factory, trained_run):
    require_container_engine(ENV)
    # The CPU overlay serves the slim image, which runs ONNX archives only.
    model_store = tmp_path_factory.mktemp("onnx-store")
    build_archive(trained_run, model_store, model_format="onnx")
    objects = rendered_cpu_overlay()
    spec = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    reference = {c["name"]: c["image"] for c in spec["containers"] + spec["initContainers"]}
    images = {
        "torchserve": local_build(reference["torchserve"]),  # follows the overlay's serving image
        "model-archive": f"localhost/{NAME}-model:test",
        "gateway": f"localhost/{NAME}-gateway:test",
    }
    podman("build", "--network", "host", "--from", BASE_IMAGE, "-t", images["model-archive"],
           "-f", str(REPO / "deploy/k8s/model-image/Dockerfile"), str(model_store))  # fmt: skip
    podman("build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}", "-t", images["gateway"],
           "-f", str(REPO / "tests/e2e/gateway.Dockerfile"), str(REPO / "tests/e2e"))  # fmt: skip
    token = secrets.token_hex(32)
    folder = tmp_path_factory.mktemp("kube")
    manifest = folder / "pod.yaml"
    write_secret(manifest, yaml.safe_dump_all(playable(objects, images, token, folder)))  # it holds the token
    try:
        podman("kube", "play", str(manifest))
        yield {"token": token, "spec": spec, "torchserve": f"{NAME}-pod-0-torchserve"}
    finally:
        print(podman("pod", "logs", f"{NAME}-pod-0", check=False).stdout[-3000:])
        podman("kube", "down", str(manifest), check=False)
        for config_map in [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]:
            podman("volume", "rm", "-f", config_map, check=False)  # kube down leaves their volumes
        for image in (images["model-archive"], images["gateway"]):
            podman("rmi", "-f", image, check=False)


def probe(pod, name: str) -> subprocess.CompletedProcess:
    serving = next(c for c in pod["spec"]["containers"] if c["name"] == "torchserve")
    return podman("exec", pod["torchserve"], *serving[name]["exec"]["command"], check=False)


def test_the_rendered_pod_starts_and_its_probes_pass(pod):
    deadline = time.monotonic() + 240
    while probe(pod, "startupProbe").returncode != 0:  # the startup probe: a real prediction
        if time.monotonic() > deadline:
            logs = podman("logs", "--tail", "60", pod["torchserve"], check=False)
            pytest.fail(f"{probe(pod, 'startupProbe').stdout}\ntorchserve's log:\n{logs.stdout}{logs.stderr}")
        time.sleep(5)
    for name in ("readinessProbe", "livenessProbe"):
        result = probe(pod, name)
        assert result.returncode == 0 and "READY" in result.stdout, result.stdout + result.stderr


def test_a_prediction_through_the_gateway_needs_the_token(pod):
    url = f"http://127.0.0.1:{GATEWAY_PORT}/predictions/cifar10"
    answer = requests.post(
        url,
        data=probe_png(),
        headers={"Authorization": f"Bearer {pod['token']}", "Content-Type": "image/png"},
        timeout=30,
    )
    assert answer.status_code == 200 and "prediction" in answer.json(), answer.text
    assert requests.post(url, data=probe_png(), timeout=30).status_code == 401


def test_the_root_is_read_only_and_logs_go_to_the_console(pod):
    result = podman("exec", pod["torchserve"], "touch", "/home/model-server/x", check=False)
    assert result.returncode != 0 and "Read-only" in result.stderr
    logs = podman("logs", pod["torchserve"]).stdout + podman("logs", pod["torchserve"]).stderr
    assert "org.pytorch.serve" in logs  # TorchServe's own log lines, on the console
