"""The whole training step captured once in a CUDA graph and replayed: the same math as the eager
step (train.step), without its per-step kernel launches and host synchronizations.

A SimpleCNN step at batch 64 is a few hundred small kernels; launched one by one from Python the
GPU waits on the CPU (launch-bound). Captured in a `torch.cuda.CUDAGraph`, a step is one replay:
the inputs are copied into static tensors, the graph runs forward, loss, backward, Adam's update
(`capturable=True`: its step counter and learning rate live on the GPU) and adds the step's loss
and correct answers to sums on the GPU, read once per epoch. A learning-rate schedule writes the
rate into the optimizer's tensor between replays. Adam's beta1 is a constant of the graph, so a
one-cycle schedule does not cycle it on this path (train.main builds it with cycle_momentum=False).

Capture needs a few eager warm-up steps (on a side stream, so that the caching allocator and cuDNN
settle); they change the weights and Adam's moments, so both are saved before and restored after:
the first replay is the run's first step. A batch smaller than the captured one (the epoch's last)
runs eagerly, with the same function.
"""

from __future__ import annotations

import torch

from train.step import training_step

WARMUP_STEPS = 3


def graph_supported(device: torch.device, optimizer_name: str, world_size: int, compile_model: bool) -> str | None:
    """None when the graphed step can run here, else why not (the eager step runs instead)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if optimizer_name != "adam":
        return "the graphed step is built for Adam (capturable); other optimizers run eagerly"
    if world_size > 1:
        return "DDP's gradient all-reduce is not captured; torchrun runs the eager step"
    if compile_model:
        return "--compile runs its own graphs; the eager step is used with it"
    return None


class GraphedTrainStep:
    """Call `run(x, y)` per step, `sums()` once per epoch. Builds (captures) on the first full batch."""

    def __init__(self, model, optimizer, batch_size: int, use_amp: bool, label_smoothing: float):
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.use_amp, self.label_smoothing = batch_size, use_amp, label_smoothing
        self.graph = None
        self.static_x = self.static_y = None
        device = next(model.parameters()).device
        # The rate a schedule changes becomes a tensor on the GPU that the graph reads.
        for group in optimizer.param_groups:
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        self.rates = [group["lr"] for group in optimizer.param_groups]
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One training step on (x, y), run as it is or while being captured."""
        loss, correct = training_step(
            self.model, self.optimizer, x, y, self.use_amp, self.label_smoothing, cache_enabled=False
        )
        self.loss_sum += loss * len(y)
        self.correct += correct

    def run(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(y) != self.batch_size:
            self.step(x, y)
            return
        if self.graph is None:
            self._capture(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()

    def follow_schedule(self) -> None:
        """After a scheduler step: the rate it set goes into the tensor the graph reads (recent
        PyTorch schedulers fill a tensor rate in place; older ones replace it with a float)."""
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            if group["lr"] is not rate:
                rate.fill_(float(group["lr"]))
                group["lr"] = rate

    def start_epoch(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def sums(self) -> tuple[float, int]:
        """The epoch's summed loss and correct count (one host synchronization)."""
        return self.loss_sum.item(), int(self.correct.item())

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x = x.clone().contiguous(memory_format=torch.channels_last)
        self.static_y = y.clone()
        saved_model = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        saved_optimizer = {
            param: {key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()}
            for param, state in self.optimizer.state.items()
        }
        saved_sums = (self.loss_sum.clone(), self.correct.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.step(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step(self.static_x, self.static_y)
        # Undo the warm-up: weights, batch-norm statistics, Adam's moments and step count, the sums.
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(saved_model[name])
            for param, state in self.optimizer.state.items():
                for key, value in state.items():
                    if not torch.is_tensor(value):
                        continue
                    if param in saved_optimizer:
                        value.copy_(saved_optimizer[param][key])
                    else:  # state that the warm-up created starts from zero, as Adam's own does
                        value.zero_()
        self.loss_sum.copy_(saved_sums[0])
        self.correct.copy_(saved_sums[1])
