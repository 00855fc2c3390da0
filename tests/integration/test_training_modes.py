"""Training modes that each take whole training runs: bit-identical reruns for a seed, the GPU
path's options on the CPU, and two DDP processes against one."""

import subprocess
import sys
from pathlib import Path

import torch
from helpers import REPO, metadata, train_run, weights_digest

SMALL = ("--train-subset", "2000", "--test-subset", "500")


def test_same_seed_gives_bit_identical_weights(tmp_path, data_source):
    first = train_run(tmp_path / "a", data_source, *SMALL, "--seed", "7")
    second = train_run(tmp_path / "b", data_source, *SMALL, "--seed", "7")
    other = train_run(tmp_path / "c", data_source, *SMALL, "--seed", "8")
    assert weights_digest(first) == weights_digest(second)
    assert weights_digest(first) != weights_digest(other)


def test_gpu_path_options_run_on_cpu(tmp_path, data_source):
    """bf16 autocast and torch.compile (what a GPU run uses) work on the CPU too; the export stays float32."""
    run = train_run(
        tmp_path, data_source, *SMALL, "--recipe", "fast", "--amp", "on", "--compile", "--batch-size", "128"
    )
    meta = metadata(run)
    assert meta["hyperparameters"]["amp"] == "on" and meta["hyperparameters"]["compile"] is True
    assert meta["recipe"] == "fast" and meta["hyperparameters"]["schedule"] == "onecycle"
    scripted = torch.jit.load(str(run / "model.pt"))
    assert scripted(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).dtype == torch.float32


def test_ddp_with_gloo_on_two_processes_matches_one(tmp_path, data_source):
    """torchrun, 2 processes x batch 64 against 1 process x batch 128, on the same data."""
    same_run = ("--epochs", "2", "--train-subset", "4000", "--val-size", "0")  # both export their final epoch
    common = [
        "--data",
        str(data_source),
        *same_run,
        "--test-subset",
        "1000",
        "--threads",
        "1",
        "--run-name",
        "run",
    ]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "train",
            *common,
            "--batch-size",
            "64",
            "--out-dir",
            str(tmp_path / "ddp"),
        ],
        check=True,
        cwd=REPO,
    )
    single = train_run(tmp_path / "single", data_source, *same_run, "--batch-size", "128")
    ddp_meta, single_meta = metadata(tmp_path / "ddp" / "run"), metadata(single)
    assert ddp_meta["world_size"] == 2 and single_meta["world_size"] == 1
    assert ddp_meta["epoch"] == single_meta["epoch"] == 2
    assert ddp_meta["test_accuracy"] > 0.25
    assert abs(ddp_meta["test_accuracy"] - single_meta["test_accuracy"]) < 0.06
