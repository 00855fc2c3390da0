"""Which torch device a training process runs on: `auto`, `cpu`, `cuda`, `cuda:N`, also under torchrun.

`torch.cuda.set_device` wants an index, so a bare `cuda` is resolved here to this process's GPU:
LOCAL_RANK under torchrun (one process per GPU), else GPU 0. The parsing is pure (it takes the
number of GPUs as an argument) so that it is tested on machines without one.
"""

from __future__ import annotations

import os
import re

import torch

from train.errors import DeviceError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(name: str, local_rank: int = 0, cuda_devices: int = 0) -> torch.device:
    """The torch.device for `--device name` in the process of rank `local_rank` on its machine,
    where `cuda_devices` GPUs are visible. A CUDA device always comes back with its index."""
    match = DEVICE_PATTERN.match(name.strip().lower())
    if not match or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N (N a GPU index)")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        kind = "cuda" if cuda_devices else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not cuda_devices:
        raise DeviceError(
            f"--device {name}: this machine has no CUDA device (torch sees none); use --device cpu or auto"
        )
    chosen = int(index) if index is not None else local_rank
    if chosen >= cuda_devices:
        what = f"GPU {chosen}" if index is not None else f"local rank {local_rank} (one GPU per process)"
        raise DeviceError(
            f"--device {name}: {what} does not exist; this machine has {cuda_devices} GPU(s): 0..{cuda_devices - 1}"
        )
    return torch.device("cuda", chosen)


def training_device(name: str) -> torch.device:
    """resolve_device for this process on this machine (LOCAL_RANK from torchrun, the visible GPUs)."""
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return resolve_device(name, int(os.environ.get("LOCAL_RANK", "0")), cuda_devices)
