"""The handler's decoding on the data set's own files: the served pixels are the trained ones, the
served module answers as the export does, grayscale deeper than 8 bits decodes to the 8-bit gray it
holds, and CIFAR-10's JPEGs are the files a GPU worker decodes on the GPU (tests/unit/test_images.py
and test_gpu_decode.py: the same rules on images made there)."""

import io

import numpy as np
import pytest
import torch
from cifar10_images import decode_image
from cifar10_torch_runtimes import gpu_decodable
from PIL import Image

from model import SimpleCNN
from reliability.bad_inputs import encode_image
from train.data import decode_training_image


def as_training_tensor(data: bytes) -> np.ndarray:
    return decode_training_image(data).transpose(1, 2, 0)


def test_real_cifar_jpegs_decode_exactly_as_in_training(cifar_test_jpegs):
    for images in cifar_test_jpegs.values():
        for data in images:
            np.testing.assert_array_equal(decode_image(data), as_training_tensor(data))


@pytest.mark.parametrize(
    ("mode", "levels"),
    [
        ("I;16", lambda gray: gray.astype(np.uint16) * 257),
        ("I", lambda gray: gray.astype(np.int32)),
        ("F", lambda gray: gray.astype(np.float32) / 255),
    ],
    ids=["16-bit", "32-bit integer", "float"],
)
def test_deep_grayscale_tiffs_decode_as_their_8_bit_gray(cifar_test_jpegs, mode, levels):
    """A test image's gray saved as a 16-bit, 32-bit integer or float TIFF gives the pixels (so the
    class) of the 8-bit gray it was made from."""
    for images in cifar_test_jpegs.values():
        for data in images[:2]:
            gray = Image.open(io.BytesIO(data)).convert("L")
            deep = Image.fromarray(levels(np.asarray(gray)))
            assert deep.mode == mode
            expected = decode_image(encode_image(gray, "PNG"))
            np.testing.assert_array_equal(decode_image(encode_image(deep, "TIFF")), expected)


def test_handler_batch_gives_the_models_answer_on_training_tensors(cifar_test_jpegs):
    """Handler layout (N x H x W x C permuted: channels_last) and training layout give the same logits."""
    model = SimpleCNN().eval()
    blobs = [data for images in cifar_test_jpegs.values() for data in images]
    handler_batch = torch.from_numpy(np.stack([decode_image(b) for b in blobs])).permute(0, 3, 1, 2)
    training_batch = torch.from_numpy(np.stack([decode_training_image(b) for b in blobs]))
    with torch.inference_mode():
        torch.testing.assert_close(model(handler_batch), model(training_batch))


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


def test_real_cifar_jpegs_go_to_the_gpu(cifar_test_jpegs):
    assert all(gpu_decodable(data) for images in cifar_test_jpegs.values() for data in images)
