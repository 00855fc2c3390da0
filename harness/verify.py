"""Served = evaluated: sends CIFAR-10 test images through the HTTP API and compares every served
class with the offline evaluation (train.evaluate) of the same TorchScript model.

    python -m harness.verify --run models/latest --data ../shared/data/cifar10-jpeg.tar.gz
        [--reference-config CONFIG --reference-workdir DIR]

With a reference server (e.g. `make serve`'s TorchScript one while the server checked runs the
ONNX export), every answer must also match the reference's: the same top-3 classes, each
confidence within CONFIDENCE_TOLERANCE.

The images are the files of the data source (the JPEGs, for the image-folder copy), the test
images the run was measured on; the served model must be the run's version. Every served class
must equal the offline one, and the served accuracy the `test_accuracy` in the run's metadata.json
(the exported model's, measured once after training). Exits with status 1 otherwise. Any train/serve difference in decoding or
preprocessing shows up here.
"""

from __future__ import annotations

import argparse
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from model import CLASSES
from repo import REPO
from serve.client import Client
from serve.errors import ServiceError
from train.data import encoded_images
from train.evaluate import evaluate_torchscript
from train.run import Run

# Two runtimes' float32 probabilities differ in their last bits; rounded down to 4 decimals, a
# confidence can then differ by one unit of the 4th.
CONFIDENCE_TOLERANCE = 1e-4


@dataclass
class Comparison:
    version: str
    images: int = 0
    same_class: int = 0
    served_correct: int = 0
    offline_correct: int = 0
    metadata_accuracy: float | None = None  # compared only when every image of the run's test subset was sent
    mismatches: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    same_answer: int | None = None  # with a reference server: answers that match its answer
    largest_confidence_difference: float = 0.0

    @property
    def served_accuracy(self) -> float:
        return self.served_correct / max(self.images, 1)

    @property
    def offline_accuracy(self) -> float:
        return self.offline_correct / max(self.images, 1)

    @property
    def ok(self) -> bool:
        accuracy_ok = self.metadata_accuracy is None or round(self.served_accuracy, 4) == self.metadata_accuracy
        return self.images > 0 and not self.mismatches and not self.errors and accuracy_ok


def answer_difference(answer: dict, reference: dict) -> float | None:
    """The largest confidence difference of two answers with the same top-3 classes; None when the
    classes differ."""
    top3, expected = answer["top3_predictions"], reference["top3_predictions"]
    if [p["class"] for p in top3] != [p["class"] for p in expected]:
        return None
    return max(abs(p["confidence"] - q["confidence"]) for p, q in zip(top3, expected))


def compare(
    client: Client,
    run_dir: Path,
    source: str | None,
    model: str = "cifar10",
    limit: int | None = None,
    concurrency: int = 16,
    progress: bool = False,
    reference: Client | None = None,
) -> Comparison:
    record = Run.load(run_dir)
    served_version = client.describe(model)[0]["modelVersion"]
    if served_version != record.version:
        raise ValueError(f"the server's {model} is version {served_version}, the run {run_dir} is {record.version}")
    offline = evaluate_torchscript(run_dir / "model.pt", source, record.hyperparameters["test_subset"])
    if offline.sha256 != record.data["sha256"]:
        raise ValueError(
            f"{source} is not the data source the run was measured on (sha256 {record.data['sha256'][:12]}...)"
        )
    files, _ = encoded_images(source)
    chosen = range(len(offline.indices) if limit is None else min(limit, len(offline.indices)))
    local = threading.local()

    def served_answers(position: int) -> tuple[dict, dict | None] | Exception:
        if not hasattr(local, "client"):
            local.client = client.copy()
            local.reference = reference.copy() if reference else None
        image = files[offline.indices[position]]
        try:
            answer = local.client.predict(image, model=model, timeout=120)
            return answer, local.reference.predict(image, model=model, timeout=120) if reference else None
        except (ServiceError, OSError, KeyError) as error:
            return error

    result = Comparison(served_version, metadata_accuracy=record.test_accuracy if limit is None else None)
    if reference:
        result.same_answer = 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = tqdm(
            pool.map(served_answers, chosen), total=len(chosen), desc="served", unit="img", disable=not progress
        )
        for position, answers_or_error in zip(chosen, answers):
            label = CLASSES[offline.labels[position]]
            expected = CLASSES[offline.predictions[position]]
            record = {"index": int(offline.indices[position]), "label": label, "offline": expected}
            result.images += 1
            result.offline_correct += expected == label
            if isinstance(answers_or_error, Exception):
                result.errors.append({**record, "error": str(answers_or_error)})
                continue
            answer, reference_answer = answers_or_error
            served = answer["prediction"]
            if reference_answer is not None:
                difference = answer_difference(answer, reference_answer)
                if difference is None or difference > CONFIDENCE_TOLERANCE + 1e-9:
                    result.mismatches.append({**record, "answer": answer, "reference": reference_answer})
                else:
                    result.same_answer += 1
                    result.largest_confidence_difference = max(result.largest_confidence_difference, difference)
            result.served_correct += served == label
            if served == expected:
                result.same_class += 1
            else:
                top2 = offline.logits[position].topk(2).values
                result.mismatches.append({**record, "served": served, "offline_logit_margin": float(top2[0] - top2[1])})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m harness.verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=REPO / "models" / "latest", help="the training run whose model.pt is served"
    )
    parser.add_argument(
        "--data", default=os.environ.get("CIFAR10_DATA"), help="CIFAR-10 source the run used (default: $CIFAR10_DATA)"
    )
    parser.add_argument(
        "--config", type=Path, default=REPO / "config.properties", help="the server's config.properties"
    )
    parser.add_argument("--workdir", type=Path, default=REPO, help="the server's working directory (key_file.json)")
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--limit", type=int, help="send only the first N images (no accuracy check)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--reference-config", type=Path, help="a reference server's config.properties (its answers too)"
    )
    parser.add_argument("--reference-workdir", type=Path, help="the reference server's working directory")
    args = parser.parse_args(argv)

    client = Client.from_config(args.config, args.workdir)
    reference = None
    if args.reference_config:
        reference = Client.from_config(args.reference_config, args.reference_workdir or args.workdir)
    try:
        result = compare(
            client, args.run, args.data, args.model, args.limit, args.concurrency, progress=True, reference=reference
        )
    except (ValueError, ServiceError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{args.model} version {result.version}: {result.images:,} test images sent")
    print(f"  same class as the offline evaluation: {result.same_class:,} / {result.images:,}")
    if result.same_answer is not None:
        print(
            f"  same top 3 as the reference server, confidences within {CONFIDENCE_TOLERANCE:g}: "
            f"{result.same_answer:,} / {result.images:,} (largest difference {result.largest_confidence_difference:.4g})"
        )
    print(f"  HTTP errors: {len(result.errors)}")
    print(f"  accuracy served {result.served_accuracy:.4f}, offline {result.offline_accuracy:.4f}", end="")
    print(
        f", metadata.json {result.metadata_accuracy:.4f}"
        if result.metadata_accuracy is not None
        else " (metadata not compared: --limit)"
    )
    for record in (result.mismatches + result.errors)[:20]:
        print(f"  {record}")
    print("served = evaluated" if result.ok else "MISMATCH: served differs from evaluated")
    raise SystemExit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
