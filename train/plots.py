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


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    epochs = [record["epoch"] for record in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_axis.plot(epochs, [r["test_loss"] for r in history], "o-", label="test")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axis.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train (augmented)")
    accuracy_axis.plot(epochs, [100 * r["test_accuracy"] for r in history], "o-", label="test")
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
