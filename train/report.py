"""Render the results of the model being served (make report).

    python -m train.report [--archive model-store/cifar10.mar | --run models/<run>]

Reads metadata.json from inside the archive (so it describes exactly what TorchServe loads) or
from a run folder, and writes reports/model/: summary.md, curves.png and confusion.png.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from train.atomic import atomic_write_text
from train.errors import RunNotFound, TrainError
from train.plots import evaluated_split, plot_confusion, plot_curves
from train.run import METADATA_FILE, Run


def load_run(archive: Path | None, run: Path | None) -> tuple[Run, str]:
    """The run's record, from its folder or from inside the archive; and where it came from."""
    if run is not None:
        return Run.load(run), str(run)
    if not archive.exists():
        raise RunNotFound(f"{archive} not found; build it with `make archive` or pass --run models/<run>")
    with zipfile.ZipFile(archive) as mar:
        return Run.from_json(mar.read(METADATA_FILE), f"{archive}:{METADATA_FILE}"), str(archive)


def selection(meta: Run) -> str:
    """Which epoch was exported and how it was chosen, with its accuracy and the final epoch's."""
    split = evaluated_split(meta.history)
    if split is None:
        return f"epoch {meta.epoch}, the final one (no validation split)"
    exported, final = (meta.history[index][f"{split}_accuracy"] for index in (meta.epoch - 1, -1))
    return f"epoch {meta.epoch}, the best on the {split} split ({exported:.2%}; final epoch {final:.2%})"


def summary(meta: Run, origin: str) -> str:
    per_class = "\n".join(f"| {name} | {accuracy:.2%} |" for name, accuracy in meta.per_class_accuracy.items())
    split = evaluated_split(meta.history)
    history = "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.4f} | "
        + (f"{r[f'{split}_loss']:.4f} | {r[f'{split}_accuracy']:.2%}" if split else "— | —")
        + f" | {r['train_seconds']} |"
        for r in meta.history
    )
    data = meta.data
    held_out = f"{data['validation']['images']:,} validation / " if "validation" in data else ""
    return f"""# Model report: {meta.run} (version {meta.version})

From `{origin}`. Recipe `{meta.recipe}`, trained {meta.created} on {meta.device} in {meta.total_seconds} s
(git {meta.git_commit}, torch {meta.torch_version}); data `{data["source"]}`
(sha256 {data["sha256"][:16]}…, {data["train_images"]:,} train / {held_out}{data["test_images"]:,} test images).

**Test accuracy {meta.test_accuracy:.2%}** of the exported model: {selection(meta)}.

![training curves](curves.png)

![confusion matrix](confusion.png)

| class | accuracy |
|---|---|
{per_class}

| epoch | train loss | {split or "validation"} loss | {split or "validation"} accuracy | train seconds |
|---|---|---|---|---|
{history}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", type=Path, default=Path("model-store/cifar10.mar"))
    source.add_argument("--run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/model"))
    args = parser.parse_args(argv)
    try:
        meta, origin = load_run(args.archive, args.run)
    except TrainError as error:
        raise SystemExit(f"error: {error}") from None
    plot_curves(meta.history, args.out / "curves.png", title=meta.run)
    plot_confusion(
        meta.confusion_matrix,
        meta.classes,
        args.out / "confusion.png",
        title=f"{meta.run}, epoch {meta.epoch}",
    )
    atomic_write_text(args.out / "summary.md", summary(meta, origin))
    print(f"wrote {args.out}/summary.md, curves.png, confusion.png: {meta.run}, test accuracy {meta.test_accuracy:.2%}")


if __name__ == "__main__":
    main()
