"""Package a training run into model-store/<name>.mar with torch-model-archiver.

The archive holds the model (the TorchScript export by default; with model_format "onnx" the ONNX
export, run by ONNX Runtime), our handler, the model config (batching, workers) and
index_to_name.json made from the run's class list; its version is the run's `version` from metadata.json.
It is built in a temporary folder and renamed into the store, so a server never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from repo import REPO
from serve.errors import ArchiveError
from train.errors import TrainError
from train.run import METADATA_FILE, Run

HANDLER = REPO / "handler" / "cifar10_handler.py"
# The modules the handler imports, packed beside it: the worker has nothing of this repository; and
# the v2 protocol's tensor metadata, which the handler and the frontend agent read there.
HANDLER_MODULES = [
    REPO / "handler" / f"cifar10_{name}.py"
    for name in ("images", "budget", "options", "runtimes", "torch_runtimes", "answers", "metrics", "v2")
] + [REPO / "handler" / "cifar10_v2.json"]
MODEL_CONFIG = REPO / "handler" / "model-config.yaml"
GPU_MODEL_CONFIG = REPO / "handler" / "model-config.gpu.yaml"
# --format -> (the run's model file, the model config that serves it by default)
FORMATS = {
    "torchscript": ("model.pt", MODEL_CONFIG),
    "onnx": ("model.onnx", REPO / "handler" / "model-config.onnx.yaml"),
    "aotinductor": ("model.so", REPO / "handler" / "model-config.aotinductor.yaml"),  # python -m train.aot first
}

# TorchServe's configuration under KServe, copied into the storage layout (deploy/kserve)
KSERVE_CONFIG = REPO / "deploy" / "kserve" / "config.properties"


def build_archive(
    run_dir: Path,
    model_store: Path,
    name: str = "cifar10",
    model_config: Path | None = None,
    versioned: bool = False,
    model_format: str = "torchscript",
) -> Path:
    """Writes model_store/<name>.mar, or <name>-<version>.mar when `versioned` (to serve it beside
    the archive already there; TorchServe knows both as model <name>, by their versions).
    `model_config` defaults to the one that serves `model_format` (FORMATS)."""
    run_dir = run_dir.resolve()
    try:
        record = Run.load(run_dir)
    except TrainError as error:
        raise ArchiveError(f"{error}; train a model first (make train)") from None
    metadata_file = run_dir / METADATA_FILE
    model_file, default_config = FORMATS[model_format]
    if not (run_dir / model_file).exists():
        raise ArchiveError(f"{run_dir / model_file} not found: the run predates that export; train again")
    model_config = model_config or default_config
    model_store.mkdir(parents=True, exist_ok=True)
    target = model_store / (f"{name}-{record.version}.mar" if versioned else f"{name}.mar")
    with tempfile.TemporaryDirectory(dir=model_store) as scratch:
        scratch = Path(scratch)
        index_to_name = scratch / "index_to_name.json"
        index_to_name.write_text(json.dumps({str(i): c for i, c in enumerate(record.classes)}))
        subprocess.run(
            [
                str(Path(sys.executable).with_name("torch-model-archiver")),
                "--model-name",
                name,
                "--version",
                record.version,
                "--serialized-file",
                str(run_dir / model_file),
                "--handler",
                str(HANDLER),
                "--config-file",
                str(model_config),
                "--extra-files",
                ",".join(map(str, [*HANDLER_MODULES, index_to_name, metadata_file])),
                "--export-path",
                str(scratch),
            ],
            check=True,
            # The archiver stages files in $TMPDIR/<model name>: a scratch of its own, else two archives
            # built at once on one machine (tests, the fleet drill) overwrite each other's files.
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        os.replace(scratch / f"{name}.mar", target)
    print(f"wrote {target} ({model_file}, version {record.version}, test accuracy {record.test_accuracy:.2%})")
    return target


def kserve_layout(run_dir: Path, out: Path, model_format: str = "onnx") -> Path:
    """The storage layout KServe mounts at /mnt/models for deploy/kserve's runtime, in `out`:
    config/config.properties (deploy/kserve's) and model-store/cifar10.mar (ONNX by default: the
    slim image serves ONNX archives only). Returns the archive."""
    archive = build_archive(run_dir, out / "model-store", model_format=model_format)
    (out / "config").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(KSERVE_CONFIG, out / "config" / "config.properties")
    return archive
