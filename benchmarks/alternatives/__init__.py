"""Servers the serving benchmark compares ours against; each uses handler/cifar10_images.py so that
all of them decode and answer exactly as our TorchServe handler does (benchmarks/__init__.py puts
handler/ on the path); the benchmarks take the handler's helpers from here."""

import numpy as np
import torch
from cifar10_images import decode_image, pixel_array
from cifar10_runtimes import OnnxRuntime
from cifar10_torch_runtimes import inference_model

from model import CLASSES


class OnnxModel(OnnxRuntime):
    """The handler's ONNX Runtime adapter called like the TorchScript module: tensors in and out."""

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(super().__call__(pixels.cpu().numpy()))


def pixel_batch(images: list[np.ndarray]) -> torch.Tensor:
    """N decoded images (H x W x C) -> the N x C x H x W uint8 tensor the torch runtimes take (a
    channels_last view of the handler's pixel_array)."""
    return torch.from_numpy(pixel_array(images))


def load_model(path: str) -> torch.jit.ScriptModule:
    """The exported TorchScript, prepared exactly as our handler prepares it."""
    return inference_model(torch.jit.load(path, map_location="cpu"))


__all__ = ["CLASSES", "OnnxModel", "decode_image", "load_model", "pixel_batch"]
