"""The handler's decoding (handler/cifar10_images.py) against the training job's, on images made here
(tests/integration/test_decoding.py: the same on the data set's own files)."""

import io

import cifar10_images
import numpy as np
import pytest
from cifar10_answers import error_body
from cifar10_images import InvalidImage, decode_image, request_payload
from helpers import synthetic_jpegs
from PIL import Image

from reliability.bad_inputs import encode_image
from train.data import decode_training_image


@pytest.fixture(scope="module")
def cifar_image() -> Image.Image:
    return Image.open(io.BytesIO(synthetic_jpegs(1)[0])).convert("RGB")


def as_training_tensor(data: bytes) -> np.ndarray:
    return decode_training_image(data).transpose(1, 2, 0)


@pytest.mark.parametrize("size", [32, 64, 100, 224, 640, 1600])
def test_png_of_any_size_decodes_exactly_as_in_training(cifar_image, size):
    data = encode_image(cifar_image.resize((size, size), Image.BICUBIC), "PNG")
    np.testing.assert_array_equal(decode_image(data), as_training_tensor(data))


@pytest.mark.parametrize("size", [64, 100, 224, 640, 1600])
def test_large_jpegs_decode_close_to_training(cifar_image, size):
    """The handler decodes big JPEGs at reduced DCT scale (draft): within a few levels of a full decode."""
    data = encode_image(cifar_image.resize((size, size), Image.BICUBIC), "JPEG", quality=90)
    difference = np.abs(decode_image(data).astype(int) - as_training_tensor(data).astype(int))
    assert difference.mean() < 3.0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb_32(cifar_image, mode):
    if mode == "I;16":
        image = Image.fromarray(np.asarray(cifar_image.convert("L"), dtype=np.uint16) * 257)
    else:
        image = cifar_image.resize((48, 40)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels = decode_image(encode_image(image, fmt))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("mode", "levels", "fmt"),
    [
        ("I;16", lambda gray: gray.astype(np.uint16) * 257, "PNG"),
        ("I;16", lambda gray: gray.astype(np.uint16) * 257, "TIFF"),
        ("I", lambda gray: gray.astype(np.int32), "TIFF"),  # 8-bit data in 32-bit integers
        ("I", lambda gray: gray.astype(np.int32) * 257, "TIFF"),  # 16-bit data in 32-bit integers
        ("F", lambda gray: gray.astype(np.float32) / 255, "TIFF"),  # 0..1
        ("F", lambda gray: gray.astype(np.float32), "TIFF"),  # 0..255
    ],
    ids=[
        "16-bit PNG",
        "16-bit TIFF",
        "32-bit TIFF of 8-bit levels",
        "32-bit TIFF of 16-bit levels",
        "float TIFF 0-1",
        "float TIFF 0-255",
    ],
)
def test_deep_grayscale_keeps_its_brightness(cifar_image, mode, levels, fmt):
    """Each mode deeper than 8 bits decodes to the 8-bit gray it was made from, by the range its values use."""
    gray = cifar_image.convert("L")
    deep = Image.fromarray(levels(np.asarray(gray)))
    assert deep.mode == mode
    np.testing.assert_array_equal(decode_image(encode_image(deep, fmt)), decode_image(encode_image(gray, "PNG")))


def test_transparent_pixels_become_white():
    pixels = decode_image(encode_image(Image.new("RGBA", (32, 32), (10, 200, 30, 0)), "PNG"))
    assert (pixels == 255).all()


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats(cifar_image, fmt):
    assert decode_image(encode_image(cifar_image, fmt)).shape == (32, 32, 3)


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"body": bytearray(b"raw")}, b"raw"),
        ({"image": bytearray(b"multipart")}, b"multipart"),
        ({"data": bytearray(b"field")}, b"field"),
        ({"upload": bytearray(b"any file field")}, b"any file field"),
    ],
)
def test_payload_is_found_in_the_body_or_a_form_field(row, expected):
    assert request_payload(row) == expected


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"body": bytearray()}, "empty"),
        ({"body": "some text"}, "not_an_image"),
        ({"body": {"json": True}}, "not_an_image"),
        ({}, "no_image"),
    ],
)
def test_payload_errors(row, reason):
    with pytest.raises(InvalidImage) as error:
        request_payload(row)
    assert error.value.reason == reason


def test_a_form_without_a_file_is_told_its_fields_and_what_to_send():
    with pytest.raises(InvalidImage) as error:
        request_payload({"note": "a cat", "name": "cat"}, text_fields={"note", "name"})
    assert error.value.reason == "no_file"
    assert "(name, note)" in str(error.value) and "curl -F image=@cat.jpg" in str(error.value)


def test_an_error_quotes_a_few_of_thousands_of_form_fields():
    """The answer stays small however many fields were sent (a body of hundreds of KB is cut off on its way)."""
    row = {f"field-{i:05d}-" + "x" * 500: "text" for i in range(5000)}
    with pytest.raises(InvalidImage) as error:
        request_payload(row, text_fields=set(row))
    body = error_body(error.value)
    assert len(body) < 1000, body
    assert "field-00000-" in body and "4995 more" in body and "curl -F image=@cat.jpg" in body


def test_a_decoders_long_message_is_quoted_cut_short_with_the_format(cifar_image, monkeypatch):
    def fail(image):
        raise ValueError("x" * 100_000)

    monkeypatch.setattr(cifar10_images, "_to_rgb", fail)  # fails on the image EXIF rotation returned
    with pytest.raises(InvalidImage) as error:
        decode_image(encode_image(cifar_image, "PNG"))
    assert error.value.reason == "corrupt" and len(str(error.value)) < 300
    assert str(error.value).startswith("corrupt or truncated PNG image: xxx")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not_an_image"),
        (b"hello, I am text", "not_an_image"),
        (b"<html><body>not an image</body></html>", "not_an_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not_an_image"),  # EPS is not among the accepted formats
    ],
)
def test_garbage_is_refused(data, reason):
    with pytest.raises(InvalidImage) as error:
        decode_image(data)
    assert error.value.reason == reason


def test_truncated_jpeg_is_refused(cifar_image):
    data = encode_image(cifar_image.resize((256, 256)), "JPEG")
    with pytest.raises(InvalidImage) as error:
        decode_image(data[: len(data) // 2])
    assert error.value.reason == "corrupt"
