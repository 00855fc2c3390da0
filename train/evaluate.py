"""Offline evaluation of a TorchScript export on the CIFAR-10 test split: the answers the served
model must give (see harness/verify.py), computed by the training job's own code.

    python -m train.evaluate models/latest/model.pt --data ../shared/data/cifar10-jpeg.tar.gz

By default it evaluates the test images the run was measured on (`test_subset` in the run's
metadata.json, beside the model: 0 means the whole split), so its accuracy is comparable with the
metadata's `test_accuracy` (the exported model's, measured once after training), which it prints
beside its own.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from model import CLASSES
from train.data import load_cifar10, subset
from train.errors import RunNotFound, TrainError
from train.run import Run


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images, in eval mode.

    Always in float32, as TorchServe runs the export: the accuracy reported is the served one.
    """
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        outputs.append(model(batch.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(outputs).cpu()  # one copy back (one synchronization on a GPU)


# The low-confidence alert's threshold (deploy/monitoring/rules: the served predictions' share at most
# this confident, against the exported model's share on the test split, in its metadata.json).
LOW_CONFIDENCE = 0.5


def evaluate(model, images, labels, batch_size, device) -> dict:
    return score(predict(model, images, batch_size, device), labels)


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Loss, accuracy (overall and per class), confusion matrix of the logits for `labels`, and the
    share of predictions whose top-1 probability is at most LOW_CONFIDENCE."""
    predictions = logits.argmax(1)
    confusion = torch.bincount(labels * len(CLASSES) + predictions, minlength=len(CLASSES) ** 2)
    confusion = confusion.view(len(CLASSES), len(CLASSES))
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (predictions == labels).float().mean().item(),
        "per_class_accuracy": (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist(),
        "confusion": confusion.tolist(),
        "low_confidence_share": (F.softmax(logits.float(), 1).amax(1) <= LOW_CONFIDENCE).float().mean().item(),
    }


@dataclass
class Evaluation:
    indices: torch.Tensor  # positions in the test split, in load_cifar10's order
    labels: torch.Tensor
    logits: torch.Tensor
    sha256: str  # of the data source
    metrics: dict  # score: loss, accuracy, per-class accuracy, confusion

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)


def run_of(model_file: Path) -> Run | None:
    """The record of the run whose folder holds `model_file`; None for a model outside a run."""
    try:
        return Run.load(model_file.resolve().parent)
    except RunNotFound:
        return None


def evaluate_torchscript(
    model_file: Path, source: str | None, test_subset: int = 0, batch_size: int = 1000
) -> Evaluation:
    data = load_cifar10(source)
    indices, labels = subset(torch.arange(len(data.test_labels)), data.test_labels, test_subset)
    model = torch.jit.load(str(model_file), map_location="cpu")
    logits = predict(model, data.test_images[indices], batch_size, torch.device("cpu"))
    return Evaluation(indices, labels, logits, data.sha256, score(logits, labels))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a TorchScript file, e.g. models/latest/model.pt")
    parser.add_argument(
        "--data",
        default=os.environ.get("CIFAR10_DATA"),
        help="CIFAR-10 source (default: $CIFAR10_DATA, else torchvision's download)",
    )
    parser.add_argument(
        "--test-subset", type=int, help="evaluate this many test images (default: the run's; 0: all 10,000)"
    )
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--predictions", type=Path, help="write index,label,prediction per image to this CSV file")
    args = parser.parse_args(argv)

    try:
        record = run_of(args.model)
        test_subset = args.test_subset
        if test_subset is None:
            test_subset = record.hyperparameters.get("test_subset", 0) if record else 0
        result = evaluate_torchscript(args.model, args.data, test_subset, args.batch_size)
    except TrainError as error:
        raise SystemExit(f"error: {error}") from None
    accuracy = result.metrics["accuracy"]
    print(f"{args.model}: {len(result.labels):,} test images, accuracy {accuracy:.2%}")
    for name, value in zip(CLASSES, result.metrics["per_class_accuracy"]):
        print(f"  {name:<10} {value:.2%}")
    if record is not None:
        same_data = record.data.get("sha256") == result.sha256
        print(
            f"metadata.json: test_accuracy {record.test_accuracy:.2%} (epoch {record.epoch}); "
            f"{'same' if same_data else 'NOT the same'} data source; "
            f"{'equal' if round(accuracy, 4) == record.test_accuracy else 'DIFFERENT'} to 4 decimals"
        )
    if args.predictions:
        with open(args.predictions, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "label", "prediction"])
            for index, label, prediction in zip(
                result.indices.tolist(), result.labels.tolist(), result.predictions.tolist()
            ):
                writer.writerow([index, CLASSES[label], CLASSES[prediction]])
        print(f"wrote {args.predictions}")


if __name__ == "__main__":
    main()
