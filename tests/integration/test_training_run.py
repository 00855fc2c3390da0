"""A short real training run: what it writes, and that its TorchScript export is the model."""

import torch
from helpers import metadata

from model import CLASSES, SimpleCNN
from train.data import load_cifar10, subset


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
