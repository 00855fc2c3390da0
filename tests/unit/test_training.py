"""A short real training run: what it writes, and that its TorchScript export is the model."""

import torch
from helpers import REPO, metadata, train_run

from model import CLASSES, SimpleCNN
from train.data import load_cifar10
from train.main import random_crop_flip, subset


def test_run_writes_checkpoint_torchscript_metadata_and_plots(trained_run):
    for name in ("checkpoint.pt", "model.pt", "metadata.json", "curves.png", "confusion.png"):
        assert (trained_run / name).stat().st_size > 0, name
    assert not list(trained_run.glob(".*.tmp")), "a temporary file was left behind"
    assert (trained_run.parent / "latest").resolve() == trained_run.resolve()


def test_metadata_says_what_a_reader_needs(trained_run, data_source):
    meta = metadata(trained_run)
    assert meta["epoch"] == 1 and 0.1 < meta["test_accuracy"] <= 1
    assert list(meta["per_class_accuracy"]) == list(CLASSES)
    assert meta["hyperparameters"]["batch_size"] == 64 and meta["hyperparameters"]["lr"] == 1e-3
    assert meta["hyperparameters"]["optimizer"] == "adam" and meta["recipe"] == "baseline"
    assert meta["data"]["sha256"] == load_cifar10(str(data_source)).sha256
    assert meta["data"]["train_images"] == 5000 and meta["data"]["test_images"] == 1000
    assert meta["git_commit"] and meta["created"] and meta["torch_version"] == torch.__version__
    assert meta["parameters"] == 620_810 and meta["version"]


def test_torchscript_export_gives_the_eager_models_outputs(trained_run, data_source):
    checkpoint = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    eager = SimpleCNN().eval()
    eager.load_state_dict(checkpoint["state_dict"])
    scripted = torch.jit.load(str(trained_run / "model.pt"))
    data = load_cifar10(str(data_source))
    test_images, test_labels = subset(data.test_images, data.test_labels, 1000)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(test_images), eager(test_images), rtol=1e-4, atol=1e-5)
        accuracy = (scripted(test_images).argmax(1) == test_labels).float().mean().item()
    assert abs(accuracy - metadata(trained_run)["test_accuracy"]) < 1e-3  # the export is the model it reports


def test_augmentation_crops_and_mirrors_whole_batches():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    generator = torch.Generator().manual_seed(0)
    crops = [random_crop_flip(padded, 2, True, generator) for _ in range(50)]
    assert all(c.shape == images.shape for c in crops)
    # each crop is a window of the padded image, possibly mirrored
    windows = {(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)}
    seen = set()
    for crop in crops:
        for n in range(2):
            match = [
                (dy, dx, f)
                for dy, dx, f in windows
                if torch.equal(crop[n], (lambda w: w.flip(2) if f else w)(padded[n, :, dy : dy + 8, dx : dx + 8]))
            ]
            assert match, "crop is not a window of the padded image"
            seen.update(match)
    assert any(f for _, _, f in seen) and any(not f for _, _, f in seen)
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10


def weights_digest(run_dir) -> str:
    import hashlib

    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


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
    import subprocess
    import sys
    from pathlib import Path

    common = [
        "--data",
        str(data_source),
        "--epochs",
        "2",
        "--train-subset",
        "4000",
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
    single = train_run(
        tmp_path / "single", data_source, "--epochs", "2", "--train-subset", "4000", "--batch-size", "128"
    )
    ddp_meta, single_meta = metadata(tmp_path / "ddp" / "run"), metadata(single)
    assert ddp_meta["world_size"] == 2 and single_meta["world_size"] == 1
    assert ddp_meta["final_test_accuracy"] > 0.25
    assert abs(ddp_meta["final_test_accuracy"] - single_meta["final_test_accuracy"]) < 0.06
