"""The decoding budget (handler/cifar10_budget.py): images whose decoding cost is not bounded by
their pixels are refused before decoding, and an image over its CPU time is stopped, whether it
spends it in the pixels or in a header crafted to be slow to read.
The payloads are the hostile drill's (reliability/hostile.py)."""

import pytest
from cifar10_budget import OverBudget, cpu_deadline
from cifar10_images import InvalidImage, decode_image
from helpers import REPO

from reliability.hostile import chunk_flood_png, deep_png, fill_byte_jpeg, many_scan_jpeg, rle_bmp
from serve.config import properties

MAX_BODY = int(properties(REPO / "config.properties")["max_request_size"])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: rle_bmp(width=4_000_000), "unsupported_format"),  # within the pixel cap: refused for its encoding
        (lambda: rle_bmp(), "too_large"),
        (lambda: many_scan_jpeg(side=256, scans=100), "too_costly"),  # small, but 100 scans
        (lambda: deep_png(side=2100), "too_large"),  # 4.4 MP: over the 4.2 MP of a PNG
        (lambda: chunk_flood_png(MAX_BODY), "too_costly"),  # 32 x 32, but 174k chunks to read
        (lambda: fill_byte_jpeg(MAX_BODY), "too_costly"),  # 32 x 32, but 2 MiB of header to read
    ],
    ids=["RLE BMP", "RLE BMP over the cap", "many scans", "16-bit PNG over the cap", "empty chunks", "fill bytes"],
)
def test_costly_images_are_refused_with_a_reason(payload, reason):
    with pytest.raises(InvalidImage) as refused:
        decode_image(payload())
    assert refused.value.reason == reason and refused.value.status == 400, str(refused.value)


def test_a_16_bit_png_within_the_cap_decodes():
    assert decode_image(deep_png(side=1024)).shape == (32, 32, 3)


def test_the_cpu_deadline_stops_work_in_progress():
    with pytest.raises(OverBudget), cpu_deadline(0.05):
        while True:
            sum(range(10_000))
