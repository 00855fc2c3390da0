"""A short real training run: what it writes, how its epoch was selected (on the validation split,
never the test split), and that its TorchScript export is the model it reports."""

import subprocess
import sys

import pytest
import torch
from helpers import REPO, TEST_SUBSET, metadata, train_run

from model import CLASSES, SimpleCNN
from train.data import VALIDATION_SEED, load_cifar10, subset
from train.evaluate import evaluate


def test_run_writes_checkpoint_torchscript_metadata_and_plots(trained_run):
    for name in ("checkpoint.pt", "model.pt", "metadata.json", "curves.png", "confusion.png"):
        assert (trained_run / name).stat().st_size > 0, name
    assert not list(trained_run.glob(".*.tmp")), "a temporary file was left behind"
    assert (trained_run.parent / "latest").resolve() == trained_run.resolve()


def test_metadata_says_what_a_reader_needs(trained_run, data_source):
    meta = metadata(trained_run)
    assert meta["epoch"] == 1 and 0.1 < meta["test_accuracy"] <= 1
    assert list(meta["per_class_accuracy"]) == list(CLASSES)
    assert 0 <= meta["low_confidence_share"] <= 1  # the low-confidence alert's reference
    assert meta["hyperparameters"]["batch_size"] == 64 and meta["hyperparameters"]["lr"] == 1e-3
    assert meta["hyperparameters"]["optimizer"] == "adam" and meta["recipe"] == "baseline"
    assert meta["data"]["sha256"] == load_cifar10(str(data_source)).sha256
    assert meta["data"]["train_images"] == 4500 and meta["data"]["test_images"] == 1000
    assert meta["data"]["validation"]["images"] == 500 and meta["data"]["validation"]["seed"] == VALIDATION_SEED
    assert meta["git_commit"] and meta["created"] and meta["torch_version"] == torch.__version__
    assert meta["parameters"] == 620_810 and meta["version"]


def test_the_epoch_is_selected_on_validation_and_the_test_split_is_evaluated_once(trained_run):
    meta = metadata(trained_run)
    assert meta["selection"]["selected_on"] == "validation" and meta["epoch"] == 1
    assert meta["selection"]["validation_accuracy"] == round(meta["history"][0]["validation_accuracy"], 4)
    assert "no part in selecting it" in meta["selection"]["test_split"]
    assert not any(key.startswith("test") for record in meta["history"] for key in record)  # no per-epoch test figure


def test_torchscript_export_gives_the_eager_models_outputs_and_the_metadatas_test_accuracy(trained_run, data_source):
    checkpoint = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    eager = SimpleCNN().eval()
    eager.load_state_dict(checkpoint["state_dict"])
    scripted = torch.jit.load(str(trained_run / "model.pt"))
    data = load_cifar10(str(data_source))
    test_images, test_labels = subset(data.test_images, data.test_labels, TEST_SUBSET)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(test_images), eager(test_images), rtol=1e-4, atol=1e-5)
    result = evaluate(scripted, test_images, test_labels, 1000, torch.device("cpu"))
    meta = metadata(trained_run)  # the export, on the test split, is the model it reports: the same figures
    assert round(result["accuracy"], 4) == meta["test_accuracy"] == round(checkpoint["test_accuracy"], 4)
    assert [round(a, 4) for a in result["per_class_accuracy"]] == list(meta["per_class_accuracy"].values())
    assert result["confusion"] == meta["confusion_matrix"]


@pytest.mark.parametrize("val_size", ["300", "0"])
def test_the_exported_epoch_is_the_best_on_validation_or_else_the_final_one(tmp_path, data_source, val_size):
    run = train_run(tmp_path, data_source, "--epochs", "2", "--train-subset", "2000", "--val-size", val_size)
    meta = metadata(run)
    scores = [record.get("validation_accuracy") for record in meta["history"]]
    assert meta["data"]["train_images"] + meta["data"]["validation"]["images"] == 2000
    assert meta["data"]["validation"]["images"] == int(val_size)
    if val_size == "0":
        assert meta["selection"]["selected_on"] == "final_epoch" and meta["epoch"] == 2
        assert meta["selection"]["validation_accuracy"] is None and scores == [None] * 2
    else:
        assert meta["selection"]["selected_on"] == "validation"
        assert meta["epoch"] == 1 + scores.index(max(scores))  # the first of the best
        assert meta["selection"]["validation_accuracy"] == round(max(scores), 4)


def test_a_run_logged_to_a_file_writes_one_line_per_epoch_and_no_progress_frames(tmp_path, data_source):
    command = [sys.executable, "-m", "train", "--data", str(data_source), "--epochs", "2", "--out-dir", str(tmp_path)]
    command += ["--train-subset", "600", "--test-subset", "200"]
    logged = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)  # pipes: no terminal
    output = logged.stdout + logged.stderr
    assert "\r" not in output
    assert [line.split()[:2] for line in output.splitlines() if line.startswith("epoch ")] == [
        ["epoch", "1"],
        ["epoch", "2"],
    ]
