"""The handler's decoding (handler/cifar10_images.py) against the training job's, on real bytes."""

import io

import numpy as np
import pytest
import torch
from cifar10_images import InvalidImage, decode_image, request_payload
from PIL import Image

from model import SimpleCNN
from reliability.bad_inputs import encode_image
from train.data import decode_training_image


@pytest.fixture(scope="module")
def cifar_image(cifar_test_jpegs) -> Image.Image:
    return Image.open(io.BytesIO(cifar_test_jpegs["cat"][0])).convert("RGB")


def as_training_tensor(data: bytes) -> np.ndarray:
    return decode_training_image(data).transpose(1, 2, 0)


def test_real_cifar_jpegs_decode_exactly_as_in_training(cifar_test_jpegs):
    for images in cifar_test_jpegs.values():
        for data in images:
            np.testing.assert_array_equal(decode_image(data), as_training_tensor(data))


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


def test_sixteen_bit_png_keeps_its_brightness(cifar_image):
    gray = np.asarray(cifar_image.convert("L"), dtype=np.uint16)
    pixels = decode_image(encode_image(Image.fromarray(gray * 257), "PNG"))
    np.testing.assert_allclose(pixels[..., 0], gray, atol=1)


def test_transparent_pixels_become_white():
    pixels = decode_image(encode_image(Image.new("RGBA", (32, 32), (10, 200, 30, 0)), "PNG"))
    assert (pixels == 255).all()


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats(cifar_image, fmt):
    assert decode_image(encode_image(cifar_image, fmt)).shape == (32, 32, 3)


def test_handler_batch_gives_the_models_answer_on_training_tensors(cifar_test_jpegs):
    """Handler layout (N x H x W x C permuted: channels_last) and training layout give the same logits."""
    model = SimpleCNN().eval()
    blobs = [data for images in cifar_test_jpegs.values() for data in images]
    handler_batch = torch.from_numpy(np.stack([decode_image(b) for b in blobs])).permute(0, 3, 1, 2)
    training_batch = torch.from_numpy(np.stack([decode_training_image(b) for b in blobs]))
    with torch.inference_mode():
        torch.testing.assert_close(model(handler_batch), model(training_batch))


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


def test_serving_optimizations_keep_the_answers(trained_run, cifar_test_jpegs):
    """The frozen, channels_last module the handler serves answers exactly as the export does."""
    from cifar10_answers import answer_bodies
    from cifar10_torch_runtimes import inference_model

    from model import CLASSES

    blobs = [data for images in cifar_test_jpegs.values() for data in images]
    batch = torch.from_numpy(np.stack([decode_image(b) for b in blobs])).permute(0, 3, 1, 2)
    exported = torch.jit.load(str(trained_run / "model.pt")).eval()
    served = inference_model(torch.jit.load(str(trained_run / "model.pt")))
    with torch.inference_mode():
        assert answer_bodies(served(batch), list(CLASSES)) == answer_bodies(exported(batch), list(CLASSES))
