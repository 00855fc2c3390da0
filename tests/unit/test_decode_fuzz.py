"""Mutated image bytes thrown at the handler's decode path (handler/cifar10_images.py): each gives a
32 x 32 RGB array or our InvalidImage, never another exception. Bounded to a few seconds."""

import io

import numpy as np
import pytest
from cifar10_images import InvalidImage, decode_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reliability.bad_inputs import encode_image, exif_rotated_jpeg, frames


def base_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    animated = frames(image)
    return [
        encode_image(image, "JPEG"),
        encode_image(image, "JPEG", progressive=True),
        encode_image(image.convert("CMYK"), "JPEG"),
        exif_rotated_jpeg(image),
        encode_image(image, "PNG"),
        encode_image(Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)), "PNG"),
        encode_image(image.convert("P"), "PNG", transparency=0),
        encode_image(image, "GIF", save_all=True, append_images=animated[1:]),
        encode_image(image, "BMP"),
        encode_image(image, "WEBP"),
        encode_image(image, "TIFF", save_all=True, append_images=animated[1:]),
        encode_image(image, "TIFF", compression="tiff_lzw"),
    ]


BASE_IMAGES = base_images()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE_IMAGES)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "repeat", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
        elif kind == "splice":  # the head of one format on the body of another
            other = draw(st.sampled_from(BASE_IMAGES))
            data = data[:at] + other[at:]
    return bytes(data)


@pytest.mark.filterwarnings("ignore")  # PIL warns about the damage it skips over: expected here
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_decode_or_raise_invalid_image(data):
    try:
        pixels = decode_image(data)
    except InvalidImage as error:
        assert error.reason in ("not_an_image", "corrupt", "too_large") and str(error)
        return
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_base_images_are_valid_images():
    """The fuzz starts from images the decoder accepts (else it would test garbage only)."""
    for data in BASE_IMAGES:
        assert decode_image(data).shape == (32, 32, 3), Image.open(io.BytesIO(data)).format
