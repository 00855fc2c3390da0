"""Benchmarks. The handler's modules (handler/cifar10_images.py) are top-level modules inside the
.mar; the benchmarks import them the same way, so handler/ goes on the path when this package loads."""

import sys
from pathlib import Path

HANDLER = str(Path(__file__).resolve().parent.parent / "handler")
if HANDLER not in sys.path:
    sys.path.insert(0, HANDLER)
