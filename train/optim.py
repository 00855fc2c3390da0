"""What a training step updates besides the network's own layers: the optimizer (with weight decay on
the weights only), its learning-rate schedule, the dropout rate, and an exponential moving average
of the weights."""

from __future__ import annotations

import copy

import torch

from train.config import Config


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the convolution and linear weights only: BatchNorm's scales and shifts and the
    biases are left undecayed (decaying them only pulls the network towards zero output)."""
    decayed = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    undecayed = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": undecayed, "weight_decay": 0.0}]


def make_optimizer(cfg: Config, model: torch.nn.Module, steps_per_epoch: int, cycle_momentum: bool = True):
    """`cycle_momentum` False: the one-cycle schedule leaves the momentum alone (the CUDA-graph step
    captures it once)."""
    groups = parameter_groups(model, cfg.weight_decay)
    # Config admits these choices only (train/config.py)
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    scheduler = None
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=cfg.epochs * steps_per_epoch,
            pct_start=cfg.warmup,
            cycle_momentum=cycle_momentum,
        )
    return optimizer, scheduler


def set_dropout(model: torch.nn.Module, rate: float) -> None:
    """Sets every Dropout layer's training-time rate. Dropout has no weights and does nothing in
    eval mode, so the network trained, exported and served is the same whatever the rate."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = rate


class WeightAverage:
    """An exponential moving average of a model's weights and of its BatchNorm running statistics,
    kept in a copy of the model (`average`), which is what gets evaluated and exported.

    The running statistics are averaged like the weights, so the copy's BatchNorm layers describe
    activations of (nearly) the averaged weights. The decay ramps up as min(decay, (1 + t) / (10 + t))
    over the first steps, so the average does not keep the random initialization for long.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.average = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._averaged = [t for t in self._floats(self.average)]
        self._live = [t for t in self._floats(model)]

    @staticmethod
    def _floats(model: torch.nn.Module) -> list[torch.Tensor]:
        tensors = [*model.parameters(), *model.buffers()]
        return [t.detach() for t in tensors if t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._averaged, self._live, 1.0 - decay)
