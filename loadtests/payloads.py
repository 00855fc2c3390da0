"""The images the load tests send, built once from CIFAR-10's test split (not committed).

    python -m loadtests.payloads [--data PATH] [--out loadtests/payloads]

One subfolder per kind of payload: jpeg-32, the test images as the 32 x 32 JPEGs a CIFAR-10 client
sends (quality 75); jpeg-224 ... png-1600, the first few per class enlarged (bicubic) to 224, 640 and
1,600 px as JPEG (quality 90) and PNG, what a phone or a web page would upload; and `manifest.json`
last, which says where the images came from. Locust reads the folder into memory at start (`load`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

from PIL import Image

DEFAULT_FOLDER = Path(__file__).resolve().parent / "payloads"
ENLARGED_SIZES = (224, 640, 1600)
KINDS = ("jpeg-32", *tuple(f"{fmt}-{size}" for size in ENLARGED_SIZES for fmt in ("jpeg", "png")))
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
MANIFEST = "manifest.json"


def encode_payload(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=75 if image.size[0] == 32 else 90)  # PNG ignores quality
    return buffer.getvalue()


def build(source: str | None, out: Path, per_class: int, enlarged_per_class: int) -> dict:
    """Writes the payload folder (replacing an old one only once the new one is complete)."""
    from model import CLASSES  # the data set loader needs torch; Locust itself never comes here
    from train.data import load_cifar10

    data = load_cifar10(source)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for kind in KINDS:
        (staging / kind).mkdir(parents=True)
    for label, name in enumerate(CLASSES):
        indices = (data.test_labels == label).nonzero().flatten()[:per_class].tolist()
        for rank, index in enumerate(indices):
            image = Image.fromarray(data.test_images[index].permute(1, 2, 0).numpy(), "RGB")
            stem = f"{name}-{index:05d}"
            (staging / "jpeg-32" / f"{stem}.jpg").write_bytes(encode_payload(image, "jpeg"))
            if rank >= enlarged_per_class:
                continue
            for size in ENLARGED_SIZES:
                enlarged = image.resize((size, size), Image.BICUBIC)
                for fmt, suffix in (("jpeg", "jpg"), ("png", "png")):
                    (staging / f"{fmt}-{size}" / f"{stem}.{suffix}").write_bytes(encode_payload(enlarged, fmt))
    counts = {kind: len(list((staging / kind).iterdir())) for kind in KINDS}
    manifest = {"source": data.source, "sha256": data.sha256, "split": "test", "classes": [*CLASSES], "counts": counts}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return manifest


def load(folder: Path) -> dict[str, list[bytes]]:
    """Every payload of the folder, by kind, in memory."""
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(
            f"no payloads in {folder}: build them with `make payloads` "
            f"(or `python -m loadtests.payloads --data PATH --out {folder}`)"
        )
    payloads = {kind: [path.read_bytes() for path in sorted((folder / kind).iterdir())] for kind in KINDS}
    empty = [kind for kind, files in payloads.items() if not files]
    if empty:
        raise FileNotFoundError(f"{folder} has no images of kind {', '.join(empty)}: rebuild it")
    return payloads


def bad_payloads(payloads: dict[str, list[bytes]]) -> dict[str, tuple[bytes, str]]:
    """Requests the service must refuse with HTTP 400: name -> (body, content type)."""
    jpeg = payloads["jpeg-32"][0]
    return {
        "empty": (b"", "application/octet-stream"),
        "text": (b"this is a text file, not an image\n", "text/plain"),
        "truncated-jpeg": (jpeg[: len(jpeg) * 4 // 5], "image/jpeg"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.payloads", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data_help = "CIFAR-10 copy in any layout the training job reads (else torchvision's download)"
    parser.add_argument("--data", default=os.environ.get("CIFAR10_DATA"), help=data_help)
    parser.add_argument("--out", type=Path, default=DEFAULT_FOLDER, help="payload folder")
    parser.add_argument("--per-class", type=int, default=20, help="32 px test images per class")
    parser.add_argument("--enlarged-per-class", type=int, default=3, help="of those, how many are also enlarged")
    args = parser.parse_args(argv)
    if not 1 <= args.enlarged_per_class <= args.per_class:
        parser.error("need 1 <= --enlarged-per-class <= --per-class")
    manifest = build(args.data, args.out, args.per_class, args.enlarged_per_class)
    total = sum(manifest["counts"].values())
    print(f"{total} payloads in {args.out} ({', '.join(f'{k}: {n}' for k, n in manifest['counts'].items())})")


if __name__ == "__main__":
    main()
