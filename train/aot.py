"""Adds an AOTInductor export (model.so, checked against the eager model) to a finished run:

    python -m train.aot [--run models/latest]

Not part of every training run: it compiles C++ (g++) for minutes on a small CPU, and the library
is bound to this torch version and CPU architecture. `python -m serve archive --format aotinductor`
then packs it for TorchServe; docs/portability.md says what that gives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model import SimpleCNN
from train.data import load_cifar10
from train.errors import TrainError
from train.export import export_aot_inductor
from train.run import Run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("models/latest"))
    args = parser.parse_args(argv)
    run = args.run.resolve()
    try:
        record = Run.load(run)
        model = SimpleCNN()
        model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"])
        test_images = load_cifar10(record.hyperparameters.get("data")).test_images
        check = export_aot_inductor(model, test_images, run / "model.so")
    except TrainError as error:
        raise SystemExit(f"error: {error}") from None
    record.aot_inductor_check = check
    record.files["aot_inductor"] = "model.so"
    record.save(run)
    print(f"wrote {run / 'model.so'}: {check}")


if __name__ == "__main__":
    main()
