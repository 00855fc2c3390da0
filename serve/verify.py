"""Served = evaluated: sends CIFAR-10 test images through the HTTP API and compares every served
class with the offline evaluation (train.evaluate) of the same TorchScript model.

    python -m serve.verify --run models/latest --data ../shared/data/cifar10-jpeg.tar.gz

The images are the files of the data source (the JPEGs, for the image-folder copy), the test
images the run was measured on; the served model must be the run's version. Every served class
must equal the offline one, and the served accuracy the best epoch's `test_accuracy` in the run's
metadata.json. Exits with status 1 otherwise. Any train/serve difference in decoding or
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
from serve.archive import REPO
from serve.client import Client, ServiceError
from train.data import encoded_images
from train.evaluate import evaluate_torchscript, run_metadata


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


def compare(
    client: Client,
    run_dir: Path,
    source: str | None,
    model: str = "cifar10",
    limit: int | None = None,
    concurrency: int = 16,
    progress: bool = False,
) -> Comparison:
    metadata = run_metadata(run_dir / "model.pt")
    served_version = client.describe(model)[0]["modelVersion"]
    if served_version != metadata["version"]:
        raise ValueError(
            f"the server's {model} is version {served_version}, the run {run_dir} is {metadata['version']}"
        )
    offline = evaluate_torchscript(run_dir / "model.pt", source, metadata["hyperparameters"]["test_subset"])
    if offline.sha256 != metadata["data"]["sha256"]:
        raise ValueError(
            f"{source} is not the data source the run was measured on (sha256 {metadata['data']['sha256'][:12]}...)"
        )
    files, _ = encoded_images(source)
    chosen = range(len(offline.indices) if limit is None else min(limit, len(offline.indices)))
    local = threading.local()

    def served_class(position: int) -> str | Exception:
        if not hasattr(local, "client"):
            local.client = client.copy()
        try:
            return local.client.predict(files[offline.indices[position]], model=model, timeout=120)["prediction"]
        except (ServiceError, OSError, KeyError) as error:
            return error

    result = Comparison(served_version, metadata_accuracy=metadata["test_accuracy"] if limit is None else None)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = tqdm(
            pool.map(served_class, chosen), total=len(chosen), desc="served", unit="img", disable=not progress
        )
        for position, served in zip(chosen, answers):
            label = CLASSES[offline.labels[position]]
            expected = CLASSES[offline.predictions[position]]
            record = {"index": int(offline.indices[position]), "label": label, "offline": expected}
            result.images += 1
            result.offline_correct += expected == label
            if isinstance(served, Exception):
                result.errors.append({**record, "error": str(served)})
                continue
            result.served_correct += served == label
            if served == expected:
                result.same_class += 1
            else:
                top2 = offline.logits[position].topk(2).values
                result.mismatches.append({**record, "served": served, "offline_logit_margin": float(top2[0] - top2[1])})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve.verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    args = parser.parse_args(argv)

    client = Client.from_config(args.config, args.workdir)
    try:
        result = compare(client, args.run, args.data, args.model, args.limit, args.concurrency, progress=True)
    except (ValueError, ServiceError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{args.model} version {result.version}: {result.images:,} test images sent")
    print(f"  same class as the offline evaluation: {result.same_class:,} / {result.images:,}")
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
