"""The slim serving image's one change to TorchServe (deploy/docker/torchserve-0.12.0-without-torch.patch,
applied by deploy/docker/serve-slim.Dockerfile): it is made for the pinned torchserve, applies to
its file exactly, and the patched worker protocol imports and encodes answers without torch."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ts
from helpers import REPO

PATCH = REPO / "deploy" / "docker" / "torchserve-0.12.0-without-torch.patch"
PATCHED = "ts/protocol/otf_message_handler.py"


def pinned(requirements: str) -> str:
    return re.search(r"^torchserve==(\S+)$", (REPO / requirements).read_text(), re.M).group(1)


def test_the_patch_is_for_the_pinned_torchserve():
    version = importlib.metadata.version("torchserve")
    assert pinned("requirements.txt") == pinned("deploy/docker/requirements-slim.txt") == version
    assert PATCH.name.startswith(f"torchserve-{version}-")


def test_the_patched_worker_protocol_answers_without_torch(tmp_path):
    target = tmp_path / PATCHED
    target.parent.mkdir(parents=True)
    shutil.copy(Path(ts.__file__).parent.parent / PATCHED, target)
    subprocess.run(["git", "apply", "-p1", str(PATCH)], cwd=tmp_path, check=True)  # exact: no fuzz
    script = f"""
import importlib.util, sys
sys.modules["torch"] = None  # import torch raises ImportError
spec = importlib.util.spec_from_file_location("otf", {str(target)!r})
otf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(otf)
message = otf.create_predict_response(['{{"prediction": "cat"}}'], {{0: "request-1"}}, "Prediction success", 200)
assert b"request-1" in message and b'"prediction": "cat"' in message, message
"""
    subprocess.run([sys.executable, "-c", script], check=True)
