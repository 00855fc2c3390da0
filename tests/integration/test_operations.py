"""The container files, checked without a Docker engine (none on these machines): Compose's own
validation, Docker's Dockerfile parser, hadolint, shellcheck, yamllint; and the image's health
check against the real TorchServe of the session."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path, PurePosixPath

import dockerfile
import pytest
import yaml
from helpers import REPO, require_tool

from container.keys import read_keys

COMPOSE_FILES = {  # file -> the variables it requires
    "docker-compose.yml": {"GRAFANA_ADMIN_PASSWORD"},
    "deploy/compose/gpu.yml": set(),
    "deploy/compose/local-data.yml": {"CIFAR10_DATA"},
}
SERVE_DOCKERFILES = ["deploy/docker/serve.Dockerfile", "deploy/docker/serve-slim.Dockerfile"]
DOCKERFILES = [*SERVE_DOCKERFILES, "deploy/docker/train.Dockerfile"]


def compose_config(*overrides: str, data_source: Path) -> dict:
    """`docker-compose config` of docker-compose.yml plus `overrides`: parsed and normalized by Compose."""
    files = ["docker-compose.yml", *overrides]
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only", "CIFAR10_DATA": str(data_source)}
    command = [require_tool("docker-compose")] + [arg for name in files for arg in ("-f", name)] + ["config"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("override", [None, "deploy/compose/gpu.yml", "deploy/compose/local-data.yml"])
def test_compose_files_validate(override, data_source):
    compose_config(*([override] if override else []), data_source=data_source)


def test_compose_needs_the_grafana_password_and_keeps_none(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "GRAFANA_ADMIN_PASSWORD"}
    (tmp_path / "empty.env").write_text("")  # not a developer's .env either
    command = [
        require_tool("docker-compose"),
        "--env-file",
        str(tmp_path / "empty.env"),
        "-f",
        "docker-compose.yml",
        "config",
        "-q",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


def host_ip_and_target(port) -> tuple[str, str]:
    """Compose 1.29 writes "127.0.0.1:8081:8081/tcp" (Compose 2: a mapping with host_ip, target)."""
    if isinstance(port, dict):
        return port.get("host_ip", "0.0.0.0"), str(port["target"])
    *host, _published, target = port.split("/")[0].split(":")
    return (host[0] if host else "0.0.0.0"), target


def test_compose_publishes_inference_only_beyond_this_host(data_source):
    services = compose_config(data_source=data_source)["services"]
    published = {
        (name, target): host_ip
        for name, service in services.items()
        for host_ip, target in map(host_ip_and_target, service.get("ports", []))
    }
    assert published == {
        ("torchserve", "8080"): "0.0.0.0",
        ("torchserve", "8081"): "127.0.0.1",
        ("torchserve", "8082"): "127.0.0.1",
        ("prometheus", "9090"): "127.0.0.1",
        ("alertmanager", "9093"): "127.0.0.1",
        ("grafana", "3000"): "127.0.0.1",
    }


def test_compose_runs_train_then_archive_then_torchserve(data_source):
    services = compose_config(data_source=data_source)["services"]
    assert services["archive"]["depends_on"] == {"train": {"condition": "service_completed_successfully"}}
    assert services["torchserve"]["depends_on"] == {"archive": {"condition": "service_completed_successfully"}}
    assert services["locust"]["depends_on"] == {"torchserve": {"condition": "service_healthy"}}


def test_gpu_override_reserves_gpus_and_builds_cuda_torch(data_source):
    services = compose_config("deploy/compose/gpu.yml", data_source=data_source)["services"]
    for name in ("train", "torchserve"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert services[name]["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch(path.rstrip("/"), pattern) or fnmatch.fnmatch(parts[0], pattern)
        for pattern in dockerignore_patterns()
    )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_path_a_dockerfile_copies_is_in_the_build_context(name):
    commands = dockerfile.parse_file(str(REPO / name))
    stages = {command.value[2].lower() for command in commands if command.cmd == "FROM" and len(command.value) == 3}
    copies = [command for command in commands if command.cmd in ("COPY", "ADD")]
    assert copies
    for command in copies:
        assert command.cmd == "COPY", command.original
        stage = next((flag.split("=", 1)[1] for flag in command.flags if flag.startswith("--from=")), None)
        if stage is not None:  # from a stage of this Dockerfile, never from another image
            assert stage.lower() in stages, command.original
            continue
        for source in command.value[:-1]:
            assert (REPO / source).exists(), f"{name}: {command.original}: {source} is not in the repository"
            assert not ignored(source), f"{name}: {command.original}: .dockerignore leaves {source} out"


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A service's mounts, source -> (target, read-only); a named volume's source is its name, a bind
    mount's its path. Compose 1.29 writes "source:target:mode", Compose 2 a mapping."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found[source] = (target, mode == ["ro"])
        else:
            found[volume.get("source", "")] = (volume["target"], bool(volume.get("read_only")))
    return found


def test_every_file_compose_mounts_or_builds_is_in_the_repository(data_source):
    files = [None, "deploy/compose/gpu.yml", "deploy/compose/local-data.yml"]
    for override in files:
        for name, service in compose_config(*([override] if override else []), data_source=data_source)[
            "services"
        ].items():
            if "build" in service:
                assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).is_file(), name
            for source in mounts(service):
                if source.startswith("/"):  # a bind mount (named volumes have no slash)
                    assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
                    if Path(source).resolve() != data_source.resolve():  # the local data copy lies outside, on purpose
                        assert Path(source).is_relative_to(REPO), f"{name} mounts {source} from outside the repository"


@pytest.mark.parametrize("override", [None, "deploy/compose/gpu.yml", "deploy/compose/local-data.yml"])
def test_only_torchserve_and_the_operator_mount_every_key(override, data_source):
    """key_file.json (the torchserve-run volume) holds the API key, which makes new keys and does not
    expire: TorchServe writes it, and its health check renews the management key with it; the
    operator's commands rotate keys with it. Nothing else mounts it."""
    services = compose_config(*([override] if override else []), data_source=data_source)["services"]
    assert {name for name, service in services.items() if "torchserve-run" in mounts(service)} == {"torchserve", "ops"}


@pytest.mark.parametrize("name", SERVE_DOCKERFILES)
def test_the_load_test_reads_the_inference_key_the_health_check_copies(name, data_source):
    check = next(command for command in dockerfile.parse_file(str(REPO / name)) if command.cmd == "HEALTHCHECK").value
    copy = PurePosixPath(check[check.index("--inference-key-file") + 1])
    services = compose_config(data_source=data_source)["services"]
    volume = next(
        source for source, (target, _) in mounts(services["torchserve"]).items() if target == str(copy.parent)
    )
    target, read_only = mounts(services["locust"])[volume]
    assert read_only and services["locust"]["environment"]["LOADTEST_KEY_FILE"] == f"{target}/{copy.name}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_pass_hadolint(name):
    result = subprocess.run([require_tool("hadolint"), name], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    scripts = [
        name
        for name in tracked
        if name.endswith(".sh")
        or (
            (REPO / name).is_file()
            and (REPO / name).read_bytes()[:64].startswith((b"#!/usr/bin/env bash", b"#!/bin/bash", b"#!/bin/sh"))
        )
    ]
    assert ".ci/run" in scripts
    result = subprocess.run([require_tool("shellcheck"), *scripts], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_operations_yaml_passes_yamllint():
    files = [
        *COMPOSE_FILES,
        "deploy/monitoring/prometheus.yml",
        "deploy/monitoring/alertmanager.yml",
        *(str(p.relative_to(REPO)) for p in (REPO / "deploy" / "monitoring" / "rules").rglob("*.yml")),
        "deploy/torchserve/metrics.yaml",
        ".hadolint.yaml",
        *(str(p.relative_to(REPO)) for p in (REPO / "deploy" / "monitoring" / "grafana").rglob("*.yml")),
    ]
    config = "{extends: default, rules: {line-length: {max: 130}, document-start: disable}}"
    result = subprocess.run(
        [require_tool("yamllint"), "-s", "-d", config, *files], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", SERVE_DOCKERFILES)
def test_serve_image_rewrites_only_the_bind_addresses_and_the_metrics_and_agent_paths(name, tmp_path):
    """Runs the serve Dockerfile's own sed on the repository's config.properties."""
    run = " ".join(
        command.value[0]
        for command in dockerfile.parse_file(str(REPO / name))
        if command.cmd == "RUN" and "config.properties" in command.value[0]
    )
    sed = re.search(r"sed -i -e .*? config\.properties", run).group(0)
    shutil.copy(REPO / "config.properties", tmp_path / "config.properties")
    subprocess.run(["bash", "-c", sed], cwd=tmp_path, check=True)
    before = (REPO / "config.properties").read_text().splitlines()
    after = (tmp_path / "config.properties").read_text().splitlines()
    changed = {b: a for b, a in zip(before, after) if b != a}
    assert changed == {
        "inference_address=http://127.0.0.1:8080": "inference_address=http://0.0.0.0:8080",
        "management_address=http://127.0.0.1:8081": "management_address=http://0.0.0.0:8081",
        "metrics_address=http://127.0.0.1:8082": "metrics_address=http://0.0.0.0:8082",
        "metrics_config=deploy/torchserve/metrics.yaml": "metrics_config=/home/model-server/metrics.yaml",
        "vmargs=-javaagent:frontend/build/frontend-agent.jar -Xms64m -Xmx1g -XX:G1PeriodicGCInterval=15000 -Dio.netty.allocator.type=unpooled": (
            "vmargs=-javaagent:/home/model-server/frontend-agent.jar -Xms64m -Xmx1g -XX:G1PeriodicGCInterval=15000 -Dio.netty.allocator.type=unpooled"
        ),
    }


def test_no_key_or_secret_is_committed_or_copied_into_an_image():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in tracked if Path(name).name in ("key_file.json", ".env")]
    for name in ("key_file.json", ".env"):
        assert ignored(name), f".dockerignore must keep {name} out of the build context"


def healthcheck(server_paths, server, *extra: str) -> subprocess.CompletedProcess:
    """The serve image's HEALTHCHECK command, against the session's TorchServe."""
    command = [
        sys.executable,
        "-m",
        "container.healthcheck",
        "--management",
        server.management,
        "--key-file",
        str(server_paths.workdir / "key_file.json"),
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_health_check_asks_for_a_ready_worker(server, server_paths):
    result = healthcheck(server_paths, server)
    assert result.returncode == 0 and "READY worker" in result.stdout, result.stdout
    result = healthcheck(server_paths, server, "--model", "no-such-model")
    assert result.returncode == 1 and "404" in result.stdout


def test_health_check_copies_the_inference_key_alone(server, server_paths, tmp_path):
    copy = tmp_path / "inference_key.json"
    result = healthcheck(server_paths, server, "--inference-key-file", str(copy))
    assert result.returncode == 0, result.stdout
    assert read_keys(copy) == {"inference": read_keys(server_paths.workdir / "key_file.json")["inference"]}
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_health_check_renews_a_refused_management_key(server, server_paths):
    key_file = server_paths.workdir / "key_file.json"
    keys = json.loads(key_file.read_text())
    keys["management"]["key"] = "expired"  # what TorchServe refuses once the real key expired
    key_file.write_text(json.dumps(keys))
    try:
        result = healthcheck(server_paths, server)
        assert result.returncode == 0, result.stdout
        renewed = json.loads(key_file.read_text())
        assert renewed["management"]["key"] not in ("expired", keys["API"]["key"])
        assert renewed["API"] == keys["API"] and renewed["inference"] == keys["inference"]
    finally:
        server.refresh_keys()
    assert server.describe()[0]["modelName"] == "cifar10"
