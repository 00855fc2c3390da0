"""CIFAR-10 as uint8 tensors, from whichever source a user has, decoded once and cached.

Sources, in the order a user would prefer them:
  1. torchvision's download of the real data set (the default, where the network allows);
  2. a local ``cifar-10-batches-py`` folder (torchvision's / the original Python format);
  3. a local image-folder tree ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``;
  4. a ``.tar`` / ``.tar.gz`` of such a tree (e.g. ``../shared/data/cifar10-jpeg.tar.gz``).
A local source (2-4) is chosen with ``--data PATH`` or the ``CIFAR10_DATA`` environment variable.

Whatever the source, the result is a :class:`Cifar10Tensors`: images N x 3 x 32 x 32 uint8, labels
int64 in CIFAR-10's label order, and the SHA-256 of the source. It is cached on disk under
``data/cache/`` keyed by that checksum, so the decode runs once per source.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from model import CLASSES
from repo import import_handler_modules
from train.atomic import atomic_path
from train.errors import DataSourceError

import_handler_modules()
from cifar10_images import InvalidImage, decode_image  # noqa: E402  (serving's decoder: a module of the .mar)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CACHE_FORMAT = 2  # bump when the cached layout or the decoding changes


@dataclass
class Cifar10Tensors:
    train_images: torch.Tensor  # N x 3 x 32 x 32, uint8
    train_labels: torch.Tensor  # N, int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str  # what was read, e.g. "imagefolder-tar:/path/to/cifar10-jpeg.tar.gz"
    sha256: str  # checksum of the source's bytes


def sha256_of_files(paths: list[Path], root: Path | None = None) -> str:
    """One SHA-256 over several files: each relative name, then its bytes."""
    digest = hashlib.sha256()
    for path in paths:
        if root is not None:
            digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def decode_training_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> 3 x 32 x 32 uint8, by serving's own decoder (handler/cifar10_images.py:
    first frame, EXIF rotation, alpha over white, resized to 32 x 32), so that a model trains on the
    pixels it will be served. Raises DataSourceError for a file serving would refuse."""
    try:
        return decode_image(data).transpose(2, 0, 1)
    except InvalidImage as error:
        raise DataSourceError(f"an image of the data set cannot be decoded ({error.reason}): {error}") from None


def _split_and_class(name: str) -> tuple[str, int] | None:
    """'.../train/cat/0001.jpg' -> ('train', 3); None for anything that is not such an image."""
    parts = Path(name).parts
    if len(parts) < 3 or not name.lower().endswith(IMAGE_SUFFIXES):
        return None
    split, class_name = parts[-3], parts[-2]
    if split not in ("train", "test"):
        return None
    if class_name not in CLASSES:
        raise DataSourceError(f"{name}: unknown class folder {class_name!r}; expected one of {', '.join(CLASSES)}")
    return split, CLASSES.index(class_name)


def _decode_all(items: list[tuple[str, int, bytes]], what: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(split, label, bytes) triples -> {split: (images, labels)}, decoding in worker processes."""
    splits = {}
    for split in ("train", "test"):
        chosen = [(label, data) for s, label, data in items if s == split]
        counts = np.bincount([label for label, _ in chosen], minlength=len(CLASSES))
        if not chosen or (counts == 0).any():
            missing = [CLASSES[i] for i in np.flatnonzero(counts == 0)]
            raise DataSourceError(
                f"{what}: no {split} images for {', '.join(missing)}; expected "
                f"{split}/<class>/*.jpg for each of the ten classes"
            )
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            arrays = list(
                tqdm(
                    pool.map(decode_training_image, [data for _, data in chosen], chunksize=256),
                    total=len(chosen),
                    desc=f"decode {split}",
                    unit="img",
                )
            )
        splits[split] = (
            torch.from_numpy(np.stack(arrays)),
            torch.tensor([label for label, _ in chosen], dtype=torch.int64),
        )
    return splits


def _tar_items(path: Path) -> list[tuple[str, int, bytes]]:
    items = []
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                found = _split_and_class(member.name) if member.isfile() else None
                if found:
                    items.append((*found, archive.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataSourceError(f"{path}: not a readable .tar/.tar.gz archive ({error})") from error
    return items


def _load_tar(path: Path) -> tuple[dict, str]:
    return _decode_all(_tar_items(path), str(path)), f"imagefolder-tar:{path}"


def _folder_items(root: Path) -> list[tuple[str, int, bytes]]:
    files = sorted(p for p in root.glob("*/*/*") if p.is_file())
    items = []
    for path in files:
        found = _split_and_class(str(path.relative_to(root)))
        if found:
            items.append((*found, path.read_bytes()))
    return items


def _load_folder(root: Path) -> tuple[dict, str]:
    return _decode_all(_folder_items(root), str(root)), f"imagefolder:{root}"


def _load_batches(root: Path) -> tuple[dict, str]:
    """The original CIFAR-10 Python pickles: rows of 3072 bytes, channel-major."""
    splits = {"train": ([], []), "test": ([], [])}
    for name in BATCH_FILES:
        with open(root / name, "rb") as handle:
            try:
                batch = pickle.load(handle, encoding="latin1")
                images, labels = batch["data"], batch["labels"]
            except Exception as error:
                raise DataSourceError(f"{root / name}: not a CIFAR-10 batch file ({error})") from error
        split = "test" if name == "test_batch" else "train"
        splits[split][0].append(np.asarray(images, dtype=np.uint8).reshape(-1, 3, 32, 32))
        splits[split][1].append(np.asarray(labels, dtype=np.int64))
    tensors = {
        split: (torch.from_numpy(np.concatenate(imgs)), torch.from_numpy(np.concatenate(labels)))
        for split, (imgs, labels) in splits.items()
    }
    return tensors, f"cifar-10-batches-py:{root}"


def _identify(path: Path):
    """Which loader reads `path`, its checksum function, or a DataSourceError saying what was expected."""
    expected = (
        "expected a cifar-10-batches-py folder (data_batch_1..5, test_batch), a folder with "
        "train/<class>/*.jpg and test/<class>/*.jpg, or a .tar/.tar.gz of such a folder"
    )
    if not path.exists():
        raise DataSourceError(f"CIFAR-10 source {path} does not exist; {expected}")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataSourceError(f"{path} is a file but not a tar archive; {expected}")
        return _load_tar, lambda: sha256_of_files([path])
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if all((path / name).is_file() for name in BATCH_FILES):
        return (lambda _: _load_batches(path)), lambda: sha256_of_files([path / n for n in BATCH_FILES])
    if (path / "train").is_dir() and (path / "test").is_dir():
        return _load_folder, lambda: sha256_of_files(sorted(p for p in path.glob("*/*/*") if p.is_file()), path)
    raise DataSourceError(f"{path} is a folder of neither known layout; {expected}")


def download(root: Path) -> Path:
    """The real CIFAR-10 through torchvision; a clear error where the network does not allow it."""
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(root), train=True, download=True)
    except Exception as error:  # urllib raises several kinds; all mean the same to the user
        raise DataSourceError(
            f"could not download CIFAR-10 into {root} ({error}). Point CIFAR10_DATA (or --data) "
            "at a local copy: a cifar-10-batches-py folder, an image-folder tree or a .tar.gz of one"
        ) from error
    return root / "cifar-10-batches-py"


def load_cifar10(
    source: str | None, download_root: Path = Path("data"), cache_dir: Path = Path("data/cache")
) -> Cifar10Tensors:
    """CIFAR-10 from `source` (a local path) or, when None, torchvision's download; cached as tensors."""
    path = Path(source).expanduser().resolve() if source else download(download_root)
    loader, checksum = _identify(path)
    sha256 = checksum()
    cache = cache_dir / f"cifar10-{sha256[:16]}-v{CACHE_FORMAT}.pt"
    if cache.exists():
        cached = torch.load(cache, weights_only=True)
        if cached["sha256"] == sha256:
            return Cifar10Tensors(**cached)
    splits, described = loader(path)
    tensors = Cifar10Tensors(*splits["train"], *splits["test"], source=described, sha256=sha256)
    with atomic_path(cache) as tmp:
        torch.save(vars(tensors), tmp)
    return tensors


def encoded_images(
    source: str | None, split: str = "test", download_root: Path = Path("data")
) -> tuple[list[bytes], torch.Tensor]:
    """The split's images as files a client would send, and their labels, in load_cifar10's order.

    An image-folder source gives its own files; the pickled batches hold pixels only, which are
    sent as PNG (lossless, so the pixels are the same).
    """
    path = Path(source).expanduser().resolve() if source else download(download_root)
    loader, _ = _identify(path)
    if loader in (_load_tar, _load_folder):
        items = _tar_items(path) if loader is _load_tar else _folder_items(path)
        chosen = [(label, data) for s, label, data in items if s == split]
        return [data for _, data in chosen], torch.tensor([label for label, _ in chosen], dtype=torch.int64)
    splits, _ = loader(path)
    images, labels = splits[split]
    files = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files, labels


def subset(images, labels, count):
    """The first `count` images of a fixed shuffle (the same subset whatever the seed)."""
    if not count or count >= len(images):
        return images, labels
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    return images[keep], labels[keep]


VALIDATION_SEED = 0  # the same images are held out for every run of the same data, whatever its --seed
VALIDATION_DRAWN = (
    "from the training images (the --train-subset, when given): each class gives its share of them "
    "(largest remainders), its images chosen by a shuffle seeded with `seed`; trained on the rest"
)


def validation_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the images kept for training and of the `size` held out for validation, each in
    ascending order. Class-stratified: each class gives its share of `size` (rounded by largest
    remainders, so the shares add up to `size`); which of its images is drawn by a shuffle seeded
    with `seed`."""
    exact = torch.bincount(labels, minlength=len(CLASSES)).double() * size / len(labels)
    shares = exact.floor().long()
    rounded_up = torch.argsort(exact - shares, descending=True, stable=True)[: size - int(shares.sum())]
    shares[rounded_up] += 1
    generator = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    for label, share in enumerate(shares.tolist()):
        members = torch.nonzero(labels == label).flatten()
        held_out[members[torch.randperm(len(members), generator=generator)[:share]]] = True
    return torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten()


def random_crop_flip(
    padded: torch.Tensor, pad: int, flip: bool, generator: torch.Generator, crop: bool = True
) -> torch.Tensor:
    """Per-image random crops (and mirror images) of a padded batch, in one gather, no Python loop.
    `crop` False: every image's centre (the original), mirrored or not."""
    n, _, side, _ = padded.shape
    size = side - 2 * pad
    device = padded.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator)
    offsets = (offsets if crop else torch.full_like(offsets, pad)).to(device)
    steps = torch.arange(size, device=device)
    rows = (offsets[0] + steps)[:, None, :, None]
    cols = offsets[1] + steps
    if flip:  # a mirror image is a crop whose columns are read right to left
        mirrored = (torch.rand(n, 1, generator=generator) < 0.5).to(device)
        cols = torch.where(mirrored, cols.flip(1), cols)
    channels = torch.arange(padded.shape[1], device=device)[None, :, None, None]
    return padded[torch.arange(n, device=device)[:, None, None, None], channels, rows, cols[:, None, None, :]]
