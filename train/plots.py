"""Training curves and the confusion matrix as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from train.atomic import atomic_path


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def evaluated_split(history: list[dict]) -> str | None:
    """The split each epoch of a run was evaluated on, and its exported epoch selected on: "validation";
    None for a run without a validation split (no evaluation per epoch: the final epoch is exported);
    "test" for runs recorded before the validation split existed (reports/recipes/ holds some).
    The history's records name their figures after it: `validation_accuracy`, `test_loss`, ..."""
    return next((split for split in ("validation", "test") if f"{split}_accuracy" in history[0]), None)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Training loss and accuracy per epoch, beside those of the split each epoch was evaluated on."""
    epochs = [record["epoch"] for record in history]
    split = evaluated_split(history)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    accuracy_axis.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train (augmented)")
    if split:
        loss_axis.plot(epochs, [r[f"{split}_loss"] for r in history], "o-", label=split)
        accuracy_axis.plot(epochs, [100 * r[f"{split}_accuracy"] for r in history], "o-", label=split)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    _save(figure, path)


def plot_confusion(confusion: list[list[int]], classes, path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    peak = max(max(row) for row in confusion)
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            axis.text(j, i, count, ha="center", va="center", fontsize=7, color="white" if count > peak / 2 else "black")
    _save(figure, path)
