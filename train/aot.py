"""Adds an AOTInductor export (model.so, checked against the eager model) to a finished run:

    python -m train.aot [--run models/latest]

Not part of every training run: it compiles C++ (g++) for minutes on a small CPU, and the library
is bound to this torch version and CPU architecture. `python -m serve archive --format aotinductor`
then packs it for TorchServe; docs/portability.md says what that gives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model import SimpleCNN
from train.atomic import atomic_write_text
from train.data import DataSourceError, load_cifar10
from train.export import ExportMismatch, export_aot_inductor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("models/latest"))
    args = parser.parse_args(argv)
    run = args.run.resolve()
    metadata = json.loads((run / "metadata.json").read_text())
    model = SimpleCNN()
    model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"])
    try:
        test_images = load_cifar10(metadata["hyperparameters"].get("data")).test_images
        check = export_aot_inductor(model, test_images, run / "model.so")
    except (DataSourceError, ExportMismatch) as error:
        raise SystemExit(f"error: {error}") from None
    metadata["aot_inductor_check"] = check
    metadata["files"]["aot_inductor"] = "model.so"
    atomic_write_text(run / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    print(f"wrote {run / 'model.so'}: {check}")


if __name__ == "__main__":
    main()
