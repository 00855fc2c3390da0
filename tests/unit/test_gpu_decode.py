"""GPU JPEG decoding in the handler (handler/cifar10_torch_runtimes.py): which files go to the GPU, and
that the answers do not change. The selection and the fallbacks run here on the CPU (torchvision's
CPU decoder stands in for nvJPEG: the same call, another device); the GPU-marked tests compare
nvJPEG with the CPU path where a CUDA device exists."""

import io

import pytest
import torch
from cifar10_images import InvalidImage, decode_image, pixel_array
from cifar10_torch_runtimes import decode_batch, gpu_decodable, gpu_jpeg_decoder
from helpers import gpu_test, synthetic_jpegs
from PIL import Image
from torchvision.io import decode_jpeg

from reliability.bad_inputs import encode_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its decoders


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return synthetic_jpegs(50)


@pytest.fixture(scope="module")
def cat(jpegs) -> Image.Image:
    return Image.open(io.BytesIO(jpegs[0])).convert("RGB")


def with_exif(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def progressive(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True)
    return buffer.getvalue()


def test_cifar_like_jpegs_go_to_the_gpu(jpegs):
    assert all(gpu_decodable(data) for data in jpegs)


@pytest.mark.parametrize(
    "make",
    [
        lambda cat: encode_image(cat, "PNG"),
        lambda cat: encode_image(cat.resize((64, 64)), "JPEG"),  # needs a resize: the CPU does it as in training
        lambda cat: encode_image(cat.convert("L"), "JPEG"),
        lambda cat: encode_image(cat.convert("CMYK"), "JPEG"),  # Adobe block
        lambda cat: with_exif(cat),
        lambda cat: progressive(cat),
        lambda cat: encode_image(cat, "JPEG")[:300],  # truncated
        lambda cat: b"",
        lambda cat: b"\xff\xd8\xff" + b"\x00" * 40 + b"\xff\xd9",
    ],
    ids=["png", "jpeg-64px", "grayscale", "cmyk", "exif", "progressive", "truncated", "empty", "garbage"],
)
def test_other_files_stay_on_the_cpu(cat, make):
    assert not gpu_decodable(make(cat))


def test_a_cpu_worker_gets_no_gpu_decoder():
    assert gpu_jpeg_decoder(torch.device("cpu")) is None


def mixed_requests(jpegs, cat):
    """A batch as a worker sees it: JPEGs for the GPU, other formats, bad files, a request with no image."""
    payloads = [
        jpegs[0],
        encode_image(cat, "PNG"),
        jpegs[1],
        b"not an image",
        None,
        with_exif(cat),
        jpegs[2],
        encode_image(cat, "JPEG")[:300],
        jpegs[3],
    ]
    errors = [InvalidImage("no_image", "no image") if payload is None else None for payload in payloads]
    return payloads, errors


def cpu_answer(payloads, errors):
    errors = list(errors)
    images = []
    for index, payload in enumerate(payloads):
        if payload is None:
            continue
        try:
            images.append(decode_image(payload))
        except InvalidImage as error:
            errors[index] = error
    return torch.from_numpy(pixel_array(images)), errors


def reasons(errors):
    return [None if error is None else (error.reason, str(error)) for error in errors]


def test_without_a_gpu_decoder_the_batch_is_the_cpu_paths(jpegs, cat):
    payloads, errors = mixed_requests(jpegs, cat)
    expected, expected_errors = cpu_answer(payloads, errors)
    batch = decode_batch(payloads, errors, torch.device("cpu"))
    assert torch.equal(batch, expected) and batch.stride() == expected.stride()
    assert reasons(errors) == reasons(expected_errors)


def test_decoder_gets_only_the_gpu_jpegs_and_the_batch_keeps_request_order(jpegs, cat):
    payloads, errors = mixed_requests(jpegs, cat)
    expected, expected_errors = cpu_answer(payloads, errors)
    calls = []

    def decoder(blobs):
        calls.append([bytes(blob.numpy()) for blob in blobs])
        return decode_jpeg(blobs)

    batch = decode_batch(payloads, errors, torch.device("cpu"), decoder)
    assert calls == [[jpegs[0], jpegs[1], jpegs[2], jpegs[3]]]
    assert torch.equal(batch, expected)  # libjpeg-turbo both ways: the same pixels, in the same rows
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert reasons(errors) == reasons(expected_errors)


def test_a_batch_of_gpu_jpegs_only(jpegs):
    payloads, errors = list(jpegs[:8]), [None] * 8
    expected, _ = cpu_answer(payloads, errors)
    batch = decode_batch(payloads, errors, torch.device("cpu"), decode_jpeg)
    assert torch.equal(batch, expected) and batch.is_contiguous(memory_format=torch.channels_last)
    assert errors == [None] * 8


def test_batches_with_fewer_gpu_jpegs_than_the_minimum_stay_on_the_cpu(jpegs, cat):
    calls = []

    def decoder(blobs):
        calls.append(len(blobs))
        return decode_jpeg(blobs)

    for payloads, expected_calls in (
        (list(jpegs[:7]), []),  # 7 JPEGs < 8
        ([*jpegs[:7], encode_image(cat, "PNG")], []),  # 8 requests, 7 GPU JPEGs
        (list(jpegs[:8]), [8]),
    ):
        calls.clear()
        errors = [None] * len(payloads)
        expected, _ = cpu_answer(payloads, errors)
        assert torch.equal(decode_batch(payloads, errors, torch.device("cpu"), decoder, gpu_min_batch=8), expected)
        assert calls == expected_calls


def test_a_failing_gpu_decoder_falls_back_to_the_cpu(jpegs, cat):
    payloads, errors = mixed_requests(jpegs, cat)
    expected, expected_errors = cpu_answer(payloads, errors)

    def refusing(blobs):
        raise RuntimeError("nvjpeg: unsupported")

    batch = decode_batch(payloads, errors, torch.device("cpu"), refusing)
    assert torch.equal(batch, expected)
    assert reasons(errors) == reasons(expected_errors)


def test_a_batch_of_bad_files_only_gives_no_batch(cat):
    payloads = [b"", encode_image(cat, "JPEG")[:300]]
    errors = [None, None]
    assert decode_batch(payloads, errors, torch.device("cpu"), decode_jpeg) is None
    assert all(isinstance(error, InvalidImage) for error in errors)


@gpu_test
def test_nvjpeg_gives_the_cpu_paths_answers(jpegs, cat, trained_run):
    device = torch.device("cuda", 0)
    decoder = gpu_jpeg_decoder(device)
    assert decoder is not None, "torchvision could not decode JPEGs on this GPU"
    payloads, errors = mixed_requests(jpegs, cat)
    expected, expected_errors = cpu_answer(payloads, errors)
    batch = decode_batch(payloads, errors, device, decoder)
    assert batch.device.type == "cuda" and reasons(errors) == reasons(expected_errors)
    difference = (batch.cpu().int() - expected.int()).abs()
    assert difference.float().mean() < 1.0 and difference.max() <= 16
    model = torch.jit.load(str(trained_run / "model.pt")).eval()
    with torch.inference_mode():
        on_cpu = model(expected).argmax(1)
        on_gpu = model.to(device)(batch).argmax(1).cpu()
    assert torch.equal(on_gpu, on_cpu)
