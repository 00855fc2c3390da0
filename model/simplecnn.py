"""SimpleCNN for CIFAR-10, as the Flask project this service replaces defined it.

The network takes raw pixels (uint8 or float in 0..255, N x 3 x 32 x 32) and normalizes them
itself with CIFAR-10's mean and std. Training, offline evaluation and the TorchServe handler
therefore feed it the same thing (decoded by one decoder, handler/cifar10_images.py), and the
exported TorchScript carries the normalization with it: serving cannot drift from training.
"""

import torch
from torch import nn

# CIFAR-10's label order (also the alphabetical order of the class folders).
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Normalize(nn.Module):
    """Maps pixels in 0..255 to CIFAR-10-standardized floats (buffers only, no parameters)."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.scale.dtype) * self.scale - self.shift


class SimpleCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels) and a two-layer classifier: 620,810 parameters."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.normalize = Normalize()
        self.features = nn.Sequential(
            _conv_block(3, 32),
            _conv_block(32, 64),
            _conv_block(64, 128),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of N x 3 x 32 x 32 images with values in 0..255."""
        return self.classifier(self.features(self.normalize(pixels)))
