"""One training step, written once: the eager loop (train.main) runs it, and the CUDA-graph path
(train.cuda_graph) captures the same function into a graph and replays it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    use_amp: bool,
    label_smoothing: float,
    cache_enabled: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (bf16 autocast when `use_amp`), cross-entropy, backward and the optimizer's step;
    returns the batch's mean loss (detached) and its count of correct answers, both on the device,
    so that the caller synchronizes with the device only when it chooses to. Autocast's weight cache
    must be off (`cache_enabled=False`) while a CUDA graph is captured."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp, cache_enabled=cache_enabled):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).sum()
