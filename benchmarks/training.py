"""Training benchmark: the fast data path's recipes against the naive pipeline, side by side.

    python -m benchmarks.training --data PATH/cifar10-jpeg.tar.gz        (make bench-train)

1. The naive pipeline the Flask service used (ImageFolder + DataLoader with 2 workers + per-sample PIL
   transforms, default memory format, Adam 1e-3, batch 64), timed over a fixed number of steps
   and projected to a 10-epoch run.
2. Each recipe (default: baseline, fast), run in full through `python -m train` in its own process.

Writes reports/bench-train.{md,csv,png}: seconds per epoch, total, images/s, the exported model's
test accuracy, the final and best validation accuracy, peak memory, time to reach the baseline
recipe's final validation accuracy, and the speed-up.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks import command_line, command_parser
from harness.other_work import OtherWork, exits_when_busy
from harness.report import Report, percent, write_csv
from model import CIFAR10_MEAN, CIFAR10_STD, SimpleCNN
from train.atomic import atomic_path
from train.run import Run

TRAIN_IMAGES, EPOCHS = 50_000, 10


def image_folder(source: Path, root: Path = Path("data/imagefolder")) -> Path:
    """The naive pipeline reads JPEG files: unpack the archive once (a folder source is used as is)."""
    if source.is_dir():
        return source
    done = root / f".from-{source.stat().st_size}-{int(source.stat().st_mtime)}"
    if not done.exists():
        with tarfile.open(source) as archive:
            archive.extractall(root, filter="data")
        done.touch()
    return next(path.parent for path in root.rglob("train") if (path.parent / "test").is_dir())


def time_naive_pipeline(folder: Path, steps: int, warmup: int = 20) -> dict:
    """Images/s of the Flask service's pipeline done the usual way, over `steps` training steps."""
    from torchvision import datasets, transforms

    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    transform = transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(folder / "train", transform=transform), batch_size=64, shuffle=True, num_workers=2
    )
    model = SimpleCNN()
    model.normalize = torch.nn.Identity()  # the naive pipeline normalizes per sample, as the Flask service did
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    batches = iter(loader)
    for step in tqdm(range(warmup + steps), desc="naive pipeline", unit="step"):
        if step == warmup:
            started = time.time()
        images, labels = next(batches)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images_per_second = steps * 64 / (time.time() - started)
    return {
        "recipe": "naive (ImageFolder + DataLoader, per-sample PIL)",
        "images_per_second": round(images_per_second, 1),
        "seconds_per_epoch": round(TRAIN_IMAGES / images_per_second, 1),
        "total_seconds": round(EPOCHS * TRAIN_IMAGES / images_per_second, 1),
        "measured": f"{steps} steps, projected to {EPOCHS} epochs (evaluation not included)",
    }


def train(data: str, out_dir: Path, run_name: str, arguments: list[str]) -> tuple[Run, float]:
    """`python -m train` in its own process; its run's record and the process's wall time (seconds).
    Raises CalledProcessError when it fails."""
    started = time.time()
    command = [sys.executable, "-m", "train", "--data", data, "--out-dir", str(out_dir), "--run-name", run_name]
    subprocess.run([*command, *arguments], check=True)
    return Run.load(out_dir / run_name), time.time() - started


def run_recipe(recipe: str, data: str, out_dir: Path, extra: list[str]) -> dict:
    run_name = f"bench-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta, wall_seconds = train(data, out_dir, run_name, ["--recipe", recipe, *extra])
    history = meta.history
    elapsed = list(itertools.accumulate(r["train_seconds"] + r["eval_seconds"] for r in history))
    return {
        "recipe": recipe,
        "run": run_name,
        "images_per_second": round(sum(r["images_per_second"] for r in history) / len(history), 1),
        "seconds_per_epoch": round(elapsed[-1] / len(history), 1),
        "total_seconds": round(wall_seconds, 1),
        "test_accuracy": meta.test_accuracy,
        "final_validation_accuracy": history[-1].get("validation_accuracy"),
        "best_validation_accuracy": meta.selection["validation_accuracy"],
        "peak_memory_mb": meta.peak_memory_mb,
        "device": meta.device,
        "accuracy_curve": [
            (t, r["validation_accuracy"]) for t, r in zip(elapsed, history) if "validation_accuracy" in r
        ],
        "measured": f"{len(history)} epochs incl. evaluation, whole process",
    }


def write_report(rows: list[dict], out: Path, command: str, other_work: OtherWork) -> None:
    naive = rows[0]
    target = next((row["final_validation_accuracy"] for row in rows if row["recipe"] == "baseline"), None)
    for row in rows[1:]:
        reached = next((t for t, accuracy in row["accuracy_curve"] if target and accuracy >= target), None)
        row["seconds_to_baseline_final_validation_accuracy"] = round(reached, 1) if reached else None
        row["speedup_vs_naive"] = round(naive["total_seconds"] / row["total_seconds"], 2)
    accuracies = ["test_accuracy", "final_validation_accuracy", "best_validation_accuracy"]
    columns = ["recipe", "seconds_per_epoch", "total_seconds", "images_per_second", *accuracies]
    columns += ["seconds_to_baseline_final_validation_accuracy", "peak_memory_mb", "speedup_vs_naive", "measured"]
    percent_columns = dict.fromkeys(accuracies, percent)
    report = Report("Training benchmark", command, other_work)
    report.text(f"On {rows[-1].get('device', 'cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads.")
    report.table(rows, columns, percent_columns)
    report.text(
        "Accuracies on the data copy named by the command: `test_accuracy` is the exported model's, on the test "
        "split (evaluated once, after training); the others are on the validation split held out of the training "
        "images, where the exported epoch was selected. `seconds_to_baseline_final_validation_accuracy`: wall time "
        "of training + evaluation until the validation accuracy first reached the `baseline` recipe's final one."
    )
    report.write(out / "bench-train.md")
    write_csv(out / "bench-train.csv", rows, columns)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows[1:]:
        times, accuracies = zip(*row["accuracy_curve"])
        axis.plot(times, [100 * a for a in accuracies], "o-", label=row["recipe"])
    if target:
        axis.axhline(100 * target, color="gray", linestyle=":", label="baseline's final validation accuracy")
    axis.axvline(naive["total_seconds"], color="red", linestyle="--", label="naive pipeline, 10 epochs (projected)")
    axis.set(
        xlabel="wall-clock seconds (training + evaluation)",
        ylabel="validation accuracy (%)",
        title="CIFAR-10 SimpleCNN, 10 epochs",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    with atomic_path(out / "bench-train.png") as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


@exits_when_busy
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("benchmarks.training", __doc__)
    parser.add_argument("--recipes", nargs="+", default=["baseline", "fast"])
    parser.add_argument("--naive-steps", type=int, default=200)
    parser.add_argument("--models", type=Path, default=Path("models"))
    args, extra = parser.parse_known_args(argv)  # anything else goes to `python -m train`
    folder = image_folder(Path(args.data))
    with OtherWork(noisy=args.noisy) as other_work:
        rows = [time_naive_pipeline(folder, args.naive_steps)]
        rows += [run_recipe(recipe, args.data, args.models, extra) for recipe in args.recipes]
    write_report(rows, args.out, command_line("benchmarks.training", argv), other_work)


if __name__ == "__main__":
    main()
