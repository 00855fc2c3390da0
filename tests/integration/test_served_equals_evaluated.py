"""Served = evaluated: every test image the run was measured on (1,000 here), sent through the HTTP
API of the real TorchServe, gets the class that the offline evaluation of the same TorchScript
gives (train.evaluate); the served accuracy is the metadata's. `make verify-served` does the same
for a deployment, on the whole test split."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, TEST_SUBSET, metadata

from harness.verify import compare
from train.data import decode_training_image, encoded_images, load_cifar10


def test_offline_evaluation_command_gives_the_metadatas_accuracy(trained_run, data_source):
    printed = subprocess.run(
        [sys.executable, "-m", "train.evaluate", str(trained_run / "model.pt"), "--data", str(data_source)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    accuracy = metadata(trained_run)["test_accuracy"]
    assert f"{TEST_SUBSET:,} test images, accuracy {accuracy:.2%}" in printed
    assert "same data source; equal to 4 decimals" in printed


def test_encoded_test_images_are_the_loaded_ones_in_the_same_order(data_source):
    files, labels = encoded_images(str(data_source))
    data = load_cifar10(str(data_source))
    assert len(files) == len(data.test_images) and labels.tolist() == data.test_labels.tolist()
    for index in np.random.default_rng(0).choice(len(files), 200, replace=False):
        np.testing.assert_array_equal(decode_training_image(files[index]), data.test_images[index].numpy())


def test_every_served_class_is_the_offline_one(server, trained_run, data_source):
    result = compare(server, trained_run, str(data_source), concurrency=16)
    assert result.images == TEST_SUBSET and not result.errors, result.errors[:5]
    assert result.same_class == result.images, result.mismatches[:10]
    assert round(result.served_accuracy, 4) == metadata(trained_run)["test_accuracy"] == result.metadata_accuracy
    assert result.ok


def test_a_server_with_another_version_is_refused(server, trained_run, data_source, tmp_path):
    other = tmp_path / "other-run"
    other.mkdir()
    shutil.copy(trained_run / "model.pt", other / "model.pt")
    meta = (trained_run / "metadata.json").read_text().replace(metadata(trained_run)["version"], "19700101.000000")
    (other / "metadata.json").write_text(meta)
    with pytest.raises(ValueError, match="version"):
        compare(server, other, str(data_source))
