"""Training and serving read an image file into the same pixels: the training data's loader
(train.data) and a served request's batch (the handler's cifar10_images) for photos of other sizes,
modes and orientations than CIFAR-10's 32 x 32 JPEGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from cifar10_images import decode_payloads, request_payload
from PIL import Image

from train.data import decode_training_image
from train.errors import DataSourceError


def photo(size=(640, 480), mode="RGB") -> Image.Image:
    """A picture with structure in both directions (a turn or a flip changes its pixels)."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x * y / 255) % 256], axis=2).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return encoded(photo((320, 200)), "JPEG", quality=90, exif=exif.tobytes())


def transparent_png() -> bytes:
    image = photo((96, 64), "RGBA")
    alpha = np.zeros((64, 96), dtype=np.uint8)
    alpha[:, 48:] = 255  # left half transparent: white when served
    image.putalpha(Image.fromarray(alpha))
    return encoded(image, "PNG")


FILES = {
    "large JPEG": lambda: encoded(photo(), "JPEG", quality=92),
    "EXIF-rotated JPEG": rotated_jpeg,
    "RGBA PNG": transparent_png,
    "grayscale JPEG": lambda: encoded(photo((200, 150), "L"), "JPEG"),
    "palette GIF": lambda: encoded(photo((64, 64), "P"), "GIF"),
    "CMYK JPEG": lambda: encoded(photo((128, 96), "CMYK"), "JPEG"),
    "16-bit PNG": lambda: encoded(Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)), "PNG"),
    "BMP": lambda: encoded(photo((40, 40)), "BMP"),
    "WebP": lambda: encoded(photo((100, 80)), "WEBP"),
    "TIFF": lambda: encoded(photo((50, 70)), "TIFF"),
}


@pytest.mark.parametrize("name", FILES)
def test_training_sees_the_pixels_serving_sees(name):
    data = FILES[name]()
    errors = [None]
    served = decode_payloads([request_payload({"body": data})], errors)
    assert errors == [None]
    trained = decode_training_image(data)
    assert trained.shape == (3, 32, 32) and trained.dtype == np.uint8
    np.testing.assert_array_equal(trained, served[0])


def test_the_rotation_and_the_transparency_are_applied_for_training_too():
    rotated = decode_training_image(rotated_jpeg())
    unrotated = decode_training_image(encoded(photo((320, 200)), "JPEG", quality=90))
    assert not np.array_equal(rotated, unrotated)
    assert (decode_training_image(transparent_png())[:, :, :12] >= 250).all()  # white where transparent


def test_a_file_serving_refuses_stops_training_with_its_reason():
    with pytest.raises(DataSourceError, match="not_an_image"):
        decode_training_image(b"not an image")
