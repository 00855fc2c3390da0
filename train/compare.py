"""Recipes side by side, from the runs' metadata.json: a markdown table (every run given, with the
command that reproduces it) and the per-epoch accuracy against training time as a PNG. The
per-epoch figures (exported epoch, final epoch, live weights) are on the split the run selected its
epoch on: validation (test for runs recorded before the validation split, train.plots.evaluated_split);
the test accuracy is the exported model's. On a shared machine wall times mostly measure the
neighbours; the fastest epoch's images/s is the least disturbed figure of a run's speed.

    python -m train.compare models/trials/* --plot docs/recipes.png
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from train.atomic import atomic_path
from train.config import RECIPES, Config
from train.plots import evaluated_split
from train.run import METADATA_FILE, Run

TARGET_ACCURACY = 0.82
# Options that say where a run reads and writes, not how it trains: left out of its command.
NOT_RECIPE = {"data", "out_dir", "run_name", "recipe"}


def command(meta: Run) -> str:
    """The `python -m train` command that gives this run's hyperparameters: its recipe, plus each
    option whose value differs from the recipe's."""
    recipe = {**dataclasses.asdict(Config()), **RECIPES.get(meta.recipe, {})}
    options = [f"--recipe {meta.recipe}"]
    for name, value in meta.hyperparameters.items():
        if name in NOT_RECIPE or recipe.get(name) == value:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        else:
            options.append(f"{flag} {value}")
    return "python -m train --data $CIFAR10_DATA " + " ".join(options)


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def table(runs: list[dict]) -> str:
    lines = [
        "| run | selected on | exported epoch | final epoch | live weights, final | test accuracy | wall time "
        "| fastest epoch | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for meta in runs:
        history, split = meta.history, evaluated_split(meta.history)
        exported = final = live = None
        if split:
            exported = history[meta.epoch - 1][f"{split}_accuracy"]
            final = history[-1][f"{split}_accuracy"]
            live = history[-1].get(f"live_{split}_accuracy")
        lines.append(
            f"| {meta.run} | {split or 'final epoch'} | {percent(exported)} ({meta.epoch}) | {percent(final)} "
            f"| {percent(live)} | {meta.test_accuracy:.2%} | {meta.total_seconds:.0f} s "
            f"| {max(r['images_per_second'] for r in history):,.0f} images/s | `{command(meta)}` |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(9, 5.5))
    splits = set()
    for meta in runs:
        split = evaluated_split(meta.history)
        if split is None:  # no per-epoch figures to draw
            continue
        splits.add(split)
        elapsed, points = 0.0, []
        for record in meta.history:
            elapsed += record["train_seconds"] + record["eval_seconds"]
            points.append((elapsed, 100 * record[f"{split}_accuracy"]))
        axis.plot(*zip(*points), "o-", markersize=3, label=f"{meta.run} (test {meta.test_accuracy:.2%})")
    axis.axhline(100 * TARGET_ACCURACY, color="gray", linestyle=":", label="target 82 %")
    measured_on = " or ".join(sorted(splits, reverse=True)) or "validation"
    axis.set(
        xlabel="training + evaluation time (s, wall clock, each run as measured)",
        ylabel=f"{measured_on} accuracy per epoch (%)",
        title=f"CIFAR-10 SimpleCNN: {measured_on} accuracy against training time",
        ylim=(60, 84),
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with metadata.json)")
    parser.add_argument("--plot", type=Path, help="write the accuracy-against-time PNG here")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        if (run / METADATA_FILE).exists() and not run.is_symlink():
            runs.append(Run.load(run))
    if not runs:
        raise SystemExit("error: none of the folders given holds a metadata.json")
    runs.sort(key=lambda meta: meta.created)
    print(table(runs))
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
