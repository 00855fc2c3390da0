"""Training configuration: plain defaults (the baseline recipe: the Flask service's), named recipes,
command-line overrides."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from train.errors import ConfigError


@dataclass
class Config:
    recipe: str = "baseline"
    data: str | None = None  # a local CIFAR-10 copy; default $CIFAR10_DATA, else torchvision's download
    out_dir: str = "models"
    run_name: str | None = None  # default: <recipe>-<UTC timestamp>
    epochs: int = 10
    batch_size: int = 64  # per process
    optimizer: str = dataclasses.field(default="adam", metadata={"choices": ("adam", "sgd")})
    lr: float = 1e-3  # the peak rate when schedule is onecycle
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # on convolution and linear weights only (not BatchNorm, not biases)
    label_smoothing: float = 0.0
    schedule: str = dataclasses.field(default="constant", metadata={"choices": ("constant", "onecycle")})
    warmup: float = 0.25  # onecycle: the fraction of the steps spent rising to the peak rate
    ema_decay: float = 0.0  # > 0: evaluate and export an exponential moving average of the weights
    dropout: float = 0.5  # the classifier's dropout rate while training (the network's own: 0.5; none at serving)
    crop_padding: int = 4
    flip: bool = True
    flip_only_epochs: int = 0  # the last N epochs without random crops (flip only)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = dataclasses.field(  # bf16 autocast for training steps
        default="auto", metadata={"choices": ("auto", "on", "off"), "help": "bf16 autocast: auto (on for CUDA)"}
    )
    compile: bool = False  # torch.compile the training step's model
    cuda_graph: str = dataclasses.field(  # the whole step as one CUDA graph
        default="auto", metadata={"choices": ("auto", "on", "off"), "help": "auto: CUDA, Adam, one process"}
    )
    eval_batch_size: int = 1000
    train_subset: int = 0  # 0: all 50,000 training images
    val_size: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "validation images held out of the training images (of --train-subset, when given); the "
            "epoch with the best validation accuracy is exported. Default: a tenth of the training images "
            "(5,000 of 50,000); 0: none, the final epoch is exported"
        },
    )
    test_subset: int = 0  # 0: all 10,000 test images
    threads: int = 0  # torch intra-op threads; 0: torch's default (one per core)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # a recipe's values too, not only the command line's
            choices = field.metadata.get("choices")
            if choices and getattr(self, field.name) not in choices:
                option = "--" + field.name.replace("_", "-")
                raise ConfigError(f"{option} {getattr(self, field.name)!r}: expected one of {', '.join(choices)}")
        if self.val_size is not None and self.val_size < 0:
            raise ConfigError(f"--val-size {self.val_size}: expected a number of images, 0 or more")
        if self.train_subset:  # else the number of training images is known once the data is loaded
            self.validation_size(self.train_subset)

    def validation_size(self, training_images: int) -> int:
        """How many of `training_images` are held out for validation; a ConfigError if none would be
        left to train on."""
        size = training_images // 10 if self.val_size is None else self.val_size
        if size >= training_images:
            raise ConfigError(
                f"--val-size {size} leaves none of the {training_images:,} training images to train on: "
                "hold out fewer (0: no validation split, the final epoch is exported)"
            )
        return size


# Each recipe overrides Config's defaults; the command line overrides the recipe.
RECIPES: dict[str, dict] = {
    # The Flask service's recipe, exactly: Adam 1e-3, batch 64, no schedule, no regularization.
    "baseline": {},
    # Same network, same 10 epochs, batch 64 and Adam; a one-cycle rate peaking at 3e-3, label
    # smoothing, and a lighter crop (1 px of padding: in 10 epochs this small network underfits,
    # and 4 px costs it more than it protects). Chosen from the runs listed in docs/training.md.
    "fast": {
        "lr": 3e-3,
        "schedule": "onecycle",
        "label_smoothing": 0.1,
        "crop_padding": 1,
    },
    # Same network, same 10 epochs, batch 64: SGD with Nesterov momentum (one-cycle, peak 0.05),
    # weight decay 5e-4 on the convolution and linear weights only, label smoothing 0.1, 1-px crops
    # and flips, the last 2 epochs without crops, and the classifier's dropout at 0.1 while
    # training (the network underfits in 10 epochs; the served network is the same). Chosen from
    # the second round of runs in docs/training.md: the first recipe to reach 82 %.
    "nesterov": {
        "optimizer": "sgd",
        "lr": 0.05,
        "schedule": "onecycle",
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "crop_padding": 1,
        "flip_only_epochs": 2,
        "dropout": 0.1,
    },
    # For a GPU: batch 512 (a batch 64 step leaves a large GPU idle), a one-cycle rate scaled up
    # for the larger batch, more epochs of fewer steps. See docs/gpu.md; measured by make gpu-check.
    "gpu-large-batch": {
        "batch_size": 512,
        "epochs": 16,
        "lr": 8e-3,
        "schedule": "onecycle",
        "label_smoothing": 0.1,
        "crop_padding": 1,
        "eval_batch_size": 10_000,
    },
}

# Names users may have typed before a recipe was renamed.
RECIPE_ALIASES = {"seed": "baseline"}


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train the SimpleCNN on CIFAR-10 and export it (TorchScript) for TorchServe.",
    )
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "recipe":
            parser.add_argument(
                flag,
                choices=sorted([*RECIPES, *RECIPE_ALIASES]),
                default="baseline",
                help="named hyperparameters (default: baseline; 'seed' is its old name)",
            )
        elif field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "int | None": int, "float": float}.get(field.type, str)
            help_text = field.metadata.get("help", f"default: {field.default}")
            choices = field.metadata.get("choices")
            parser.add_argument(flag, type=kind, default=None, choices=choices, help=help_text)
    args = vars(parser.parse_args(argv))
    args["recipe"] = RECIPE_ALIASES.get(args["recipe"], args["recipe"])
    overrides = {name: value for name, value in args.items() if value is not None}
    return Config(**{**RECIPES[args["recipe"]], **overrides})
