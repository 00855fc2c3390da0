"""The SimpleCNN and the CIFAR-10 label set: the only place that defines either."""

from model.simplecnn import CIFAR10_MEAN, CIFAR10_STD, CLASSES, SimpleCNN

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CLASSES", "SimpleCNN"]
