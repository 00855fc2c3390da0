"""Servers the serving benchmark compares ours against; each uses handler/cifar10_images.py so that
all of them decode and answer exactly as our TorchServe handler does."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "handler"))

from model import CLASSES  # noqa: E402


def load_model(path: str) -> torch.jit.ScriptModule:
    model = torch.jit.load(path, map_location="cpu").eval()
    return model.to(memory_format=torch.channels_last)


__all__ = ["CLASSES", "load_model"]
