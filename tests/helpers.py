"""Small helpers shared by tests (no fixtures here: those live in conftest.py)."""

import pytest
import torch

# GPU tests: `pytest -m gpu` selects them; on a machine without a CUDA device they are skipped.
needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)"),
]


def gpu_test(test):
    """Marks one test as a GPU test (as needs_gpu does for a whole module)."""
    for mark in needs_gpu:
        test = mark(test)
    return test
