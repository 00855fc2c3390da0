"""The training job's data sources, on tiny data sets the tests make themselves, and the validation
split held out of the training images."""

import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from model import CLASSES
from train.data import load_cifar10, validation_split
from train.errors import DataSourceError


def pixels_for(split: str, label: int, index: int) -> np.ndarray:
    """A distinct, deterministic 32 x 32 RGB image per (split, class, index)."""
    rng = np.random.default_rng([("train", "test").index(split), label, index])
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def make_tree(root, per_class=2, fmt="png"):
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(pixels_for(split, label, index)).save(root / split / name / f"{index:04d}.{fmt}")
    return root


def check(tensors, per_class=2):
    for split, images, labels in (
        ("train", tensors.train_images, tensors.train_labels),
        ("test", tensors.test_images, tensors.test_labels),
    ):
        assert images.dtype == torch.uint8 and images.shape == (10 * per_class, 3, 32, 32)
        assert sorted(labels.tolist()) == sorted(list(range(10)) * per_class)
        # every image arrives with its own label (PNG is lossless: pixels are exact)
        expected = {
            (label, index): pixels_for(split, label, index).transpose(2, 0, 1)
            for label in range(10)
            for index in range(per_class)
        }
        for image, label in zip(images.numpy(), labels.tolist()):
            assert any(np.array_equal(image, expected[(label, i)]) for i in range(per_class))
    assert len(tensors.sha256) == 64


def test_image_folder_tree(tmp_path):
    root = make_tree(tmp_path / "cifar")
    tensors = load_cifar10(str(root), cache_dir=tmp_path / "cache")
    check(tensors)
    assert tensors.source.startswith("imagefolder:")


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_of_a_tree_with_a_top_folder(tmp_path, suffix, mode):
    root = make_tree(tmp_path / "tree" / "cifar10")
    archive = tmp_path / f"cifar{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(root, arcname="cifar10")
    tensors = load_cifar10(str(archive), cache_dir=tmp_path / "cache")
    check(tensors)
    assert tensors.source.startswith("imagefolder-tar:")


def test_torchvision_batches_folder(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        split = "test" if name == "test_batch" else "train"
        count = 2 if split == "test" else (2 if name == "data_batch_1" else 0)
        rows = [
            (pixels_for(split, label, i).transpose(2, 0, 1).reshape(-1), label)
            for label in range(10)
            for i in range(count)
        ]
        batch = {
            "data": np.array([r for r, _ in rows], dtype=np.uint8).reshape(-1, 3072),
            "labels": [label for _, label in rows],
        }
        with open(root / name, "wb") as handle:
            pickle.dump(batch, handle)
    tensors = load_cifar10(str(tmp_path), cache_dir=tmp_path / "cache")  # the parent folder works too
    check(tensors)
    assert tensors.source.startswith("cifar-10-batches-py:")


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "cifar", per_class=1)
    first = load_cifar10(str(root), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    monkeypatch.setattr("train.data._decode_all", lambda *a: pytest.fail("decoded again"))
    second = load_cifar10(str(root), cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_images, second.train_images) and first.sha256 == second.sha256


def test_a_changed_source_is_decoded_anew(tmp_path):
    root = make_tree(tmp_path / "cifar", per_class=1)
    first = load_cifar10(str(root), cache_dir=tmp_path / "cache")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "cat" / "0000.png")
    second = load_cifar10(str(root), cache_dir=tmp_path / "cache")
    assert first.sha256 != second.sha256
    assert second.train_images[second.train_labels == 3].sum() == 0


def test_missing_source_says_what_was_expected(tmp_path):
    with pytest.raises(DataSourceError, match=r"does not exist.*cifar-10-batches-py.*train/<class>"):
        load_cifar10(str(tmp_path / "nowhere"), cache_dir=tmp_path / "cache")


def test_a_file_that_is_not_a_tar(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError, match="not a tar archive"):
        load_cifar10(str(tmp_path / "notes.txt"), cache_dir=tmp_path / "cache")


def test_a_folder_of_another_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataSourceError, match="neither known layout"):
        load_cifar10(str(tmp_path / "images"), cache_dir=tmp_path / "cache")


def test_unknown_class_folder(tmp_path):
    root = make_tree(tmp_path / "cifar", per_class=1)
    (root / "train" / "kangaroo").mkdir()
    Image.new("RGB", (32, 32)).save(root / "train" / "kangaroo" / "0000.png")
    with pytest.raises(DataSourceError, match="unknown class folder 'kangaroo'"):
        load_cifar10(str(root), cache_dir=tmp_path / "cache")


def test_a_class_without_images(tmp_path):
    root = make_tree(tmp_path / "cifar", per_class=1)
    (root / "test" / "truck" / "0000.png").unlink()
    with pytest.raises(DataSourceError, match="no test images for truck"):
        load_cifar10(str(root), cache_dir=tmp_path / "cache")


def test_training_job_fails_at_once_on_a_bad_source(tmp_path):
    """`python -m train --data <nothing>` (its main, in this process): a message, not a traceback."""
    from train.main import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(["--data", str(tmp_path / "nowhere")])
    assert str(exit_info.value).startswith("error:") and "does not exist" in str(exit_info.value)


def test_validation_split_is_stratified_deterministic_and_disjoint():
    """Each class gives its share of the held-out images (shares rounded by largest remainders, adding
    up to the size asked); the same seed draws the same images, another seed others; every image is
    either trained on or held out, never both."""
    counts = [700, 1300, 300, 1000, 1000, 1000, 1000, 1000, 1000, 2000]  # unbalanced, like a subset can be
    shuffle = torch.randperm(sum(counts), generator=torch.Generator().manual_seed(0))
    labels = torch.repeat_interleave(torch.arange(10), torch.tensor(counts))[shuffle]
    kept, held_out = validation_split(labels, 1000, seed=0)
    exact = torch.tensor(counts) * 1000 / sum(counts)
    per_class = torch.bincount(labels[held_out], minlength=10)
    assert per_class.sum() == 1000 and ((per_class == exact.floor()) | (per_class == exact.ceil())).all()
    assert per_class.tolist() == [68, 127, 29, 97, 97, 97, 97, 97, 97, 194]
    assert len(set(kept.tolist()) & set(held_out.tolist())) == 0
    assert sorted([*kept.tolist(), *held_out.tolist()]) == list(range(len(labels)))
    again_kept, again_held_out = validation_split(labels, 1000, seed=0)
    assert torch.equal(again_held_out, held_out) and torch.equal(again_kept, kept)
    assert not torch.equal(validation_split(labels, 1000, seed=1)[1], held_out)


def test_the_default_validation_split_of_cifar10_is_500_images_per_class():
    labels = torch.arange(50_000) % 10
    kept, held_out = validation_split(labels, 5000, seed=0)
    assert torch.bincount(labels[held_out]).tolist() == [500] * 10 and len(kept) == 45_000


def test_no_validation_split_keeps_every_image():
    labels = torch.arange(100) % 10
    kept, held_out = validation_split(labels, 0, seed=0)
    assert kept.tolist() == list(range(100)) and len(held_out) == 0
