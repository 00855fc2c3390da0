"""--device parsing (train/device.py): pure logic, run on any machine; and the CLI's message."""

import pytest
import torch

from train.cuda_graph import graph_supported
from train.device import resolve_device
from train.errors import DeviceError
from train.main import main as train_main


@pytest.mark.parametrize(
    ("name", "local_rank", "gpus", "expected"),
    [
        ("cpu", 0, 0, torch.device("cpu")),
        ("cpu", 0, 2, torch.device("cpu")),
        ("auto", 0, 0, torch.device("cpu")),
        ("auto", 0, 1, torch.device("cuda", 0)),
        ("auto", 1, 2, torch.device("cuda", 1)),  # torchrun: one GPU per local rank
        ("cuda", 0, 1, torch.device("cuda", 0)),  # bare cuda gets an index (torch.cuda.set_device needs one)
        ("cuda", 3, 4, torch.device("cuda", 3)),
        ("cuda:1", 0, 2, torch.device("cuda", 1)),  # an explicit index wins over the rank
        (" CUDA:0 ", 0, 1, torch.device("cuda", 0)),
    ],
)
def test_device_names_resolve_to_an_indexed_device(name, local_rank, gpus, expected):
    device = resolve_device(name, local_rank, gpus)
    assert device == expected
    assert device.type == "cpu" or device.index is not None  # torch.cuda.set_device needs the index


@pytest.mark.parametrize(
    ("name", "local_rank", "gpus", "message"),
    [
        ("gpu", 0, 1, "expected auto, cpu, cuda or cuda:N"),
        ("cuda:x", 0, 1, "expected auto, cpu, cuda or cuda:N"),
        ("cpu:0", 0, 1, "expected auto, cpu, cuda or cuda:N"),
        ("mps", 0, 0, "expected auto, cpu, cuda or cuda:N"),
        ("cuda", 0, 0, "no CUDA device"),
        ("cuda:2", 0, 2, "GPU 2 does not exist; this machine has 2 GPU(s): 0..1"),
        ("cuda", 2, 2, "local rank 2"),
        ("auto", 1, 1, "local rank 1"),
    ],
)
def test_bad_device_names_raise_a_typed_error_that_says_what_would_do(name, local_rank, gpus, message):
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(name, local_rank, gpus)


def test_device_error_is_a_value_error():
    assert issubclass(DeviceError, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_train_cli_says_there_is_no_gpu_and_exits_nonzero():
    """`python -m train --device cuda` (its main, in this process): a message, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--device", "cuda", "--epochs", "1"])
    assert str(exit_info.value).startswith("error: --device cuda: this machine has no CUDA device")


@pytest.mark.parametrize(
    ("device", "optimizer", "world_size", "compile_model", "reason"),
    [
        (torch.device("cuda", 0), "adam", 1, False, None),  # the graphed step
        (torch.device("cpu"), "adam", 1, False, "CUDA graphs need a CUDA device"),
        (torch.device("cuda", 0), "sgd", 1, False, "built for Adam"),
        (torch.device("cuda", 0), "adam", 2, False, "torchrun runs the eager step"),
        (torch.device("cuda", 0), "adam", 1, True, "--compile"),
    ],
)
def test_where_the_graphed_step_runs(device, optimizer, world_size, compile_model, reason):
    why_not = graph_supported(device, optimizer, world_size, compile_model)
    assert why_not is None if reason is None else reason in why_not


def test_cuda_graph_on_without_a_gpu_is_refused_with_the_reason():
    """Refused before any data is read or anything written."""
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--device", "cpu", "--cuda-graph", "on", "--out-dir", "/nonexistent"])
    assert str(exit_info.value) == "error: --cuda-graph on: CUDA graphs need a CUDA device"
