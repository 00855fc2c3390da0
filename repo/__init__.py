"""The checkout's root folder, and the handler's modules made importable from it."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANDLER_DIR = REPO / "handler"


def import_handler_modules() -> None:
    """Puts handler/ on the import path. The handler's modules are top-level modules inside the
    .mar (`import cifar10_images`); training and the benchmarks import them the same way, so that
    they decode exactly as serving does."""
    if str(HANDLER_DIR) not in sys.path:
        sys.path.insert(0, str(HANDLER_DIR))
