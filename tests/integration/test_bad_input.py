"""Whatever a client sends, against the real TorchServe (conftest.server): bad input gets a 4xx
whose JSON names the problem, alone or mixed into batches with good images, and costs nothing
else (the good requests get their predictions, the worker process stays the same); valid images
of any size, mode or container get a prediction. The corpus is reliability/bad_inputs.py."""

import io

import numpy as np
import pytest
from cifar10_images import decode_image
from helpers import assert_prediction
from PIL import Image

from reliability.bad_inputs import (
    Input,
    block_image,
    corpus,
    encode_image,
    exif_rotated_jpeg,
    keeps_the_rule,
    max_request_size,
    send,
    send_mixed,
    summarize_answer,
)
from reliability.drills import worker_pids
from serve.client import sample_jpeg
from serve.config import properties

# For the test ids only: the corpus has the same inputs whatever image it is made from.
SAMPLE = corpus(sample_jpeg())
CASES = [item.name for item in SAMPLE]


@pytest.fixture(scope="module")
def inputs(server_paths, cifar_test_jpegs) -> dict[str, Input]:
    made = corpus(cifar_test_jpegs["cat"][0], max_request_size(properties(server_paths.config)))
    return {item.name: item for item in made}


def assert_answer_keeps_the_rule(item: Input, answer):
    assert keeps_the_rule(item, answer), f"{item.name}: {summarize_answer(answer)}"
    if item.status == 200:
        assert_prediction(answer.body)


@pytest.mark.parametrize("name", CASES)
def test_each_input_alone(server, inputs, name):
    item = inputs[name]
    pids = worker_pids(server)
    assert_answer_keeps_the_rule(item, send(server, item))
    assert set(pids) <= set(worker_pids(server))  # none died or was replaced (one still starting may join)


def test_bad_inputs_mixed_into_concurrent_batches_fail_alone(server, inputs, cifar_test_jpegs):
    good = [
        Input(f"CIFAR-10 test image {i}", 200, data=blob)
        for i, blob in enumerate(blob for images in cifar_test_jpegs.values() for blob in images)
    ]
    alone = {item.name: server.predict(item.data)["prediction"] for item in good}
    pids = worker_pids(server)
    for item, answer in send_mixed(server, list(inputs.values()) + good):
        assert_answer_keeps_the_rule(item, answer)
        if item.name in alone:
            assert answer.body["prediction"] == alone[item.name], item.name
    assert set(pids) <= set(worker_pids(server))


def test_exif_rotation_is_honoured(server, cifar_test_jpegs):
    """A photo stored sideways with its EXIF orientation tag is classified as the upright photo."""
    upright = block_image(Image.open(io.BytesIO(cifar_test_jpegs["horse"][0])))
    upright_jpeg = encode_image(upright, "JPEG", quality=100, subsampling=0)
    rotated = exif_rotated_jpeg(upright)
    sideways = encode_image(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=100, subsampling=0)
    np.testing.assert_array_equal(decode_image(rotated), decode_image(upright_jpeg))
    assert np.abs(decode_image(sideways).astype(int) - decode_image(upright_jpeg)).mean() > 10  # the tag matters
    assert server.predict(rotated) == server.predict(upright_jpeg)
