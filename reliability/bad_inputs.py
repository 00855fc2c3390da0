"""What clients may send to /predictions/cifar10, good and bad, made on the spot, for
tests/integration/test_bad_input.py and the reliability report. Each `Input` says what the service
must answer: a prediction (200), or a 4xx whose JSON body names the problem.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import requests
from PIL import Image

from serve.client import Client

TORCHSERVE_MAX_REQUEST_SIZE = 6_553_500  # bytes, when config.properties does not set max_request_size


@dataclass
class Input:
    name: str
    status: int  # 200: a prediction; otherwise the 4xx the service must answer
    reason: str | None = None  # the InvalidImage reason in the JSON answer
    data: bytes | dict | None = None  # the raw body, or text fields (urlencoded, or beside `files`)
    files: dict | None = None  # multipart fields, as requests takes them
    headers: dict = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    body: dict | None  # the JSON answer, None when the body is not JSON
    text: str


def encode_image(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG (every CRC right) whose header declares width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * min(width, 4096)))  # one row's worth of data at most
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def break_png_crc(data: bytes, kind: bytes) -> bytes:
    """`data` with the CRC of its first `kind` chunk flipped (the chunk's bytes untouched)."""
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        if data[offset + 4 : offset + 8] == kind:
            crc_at = offset + 8 + length
            return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]
        offset += 12 + length
    raise ValueError(f"no {kind!r} chunk")


def block_image(source: Image.Image, width: int = 32, height: int = 24, block: int = 8) -> Image.Image:
    """`source` cut to width x height, each pixel blown up to a block x block square: every 8 x 8 JPEG
    block holds one colour, so a JPEG of it decodes to the same pixels rotated first or not."""
    return source.convert("RGB").crop((0, 0, width, height)).resize((width * block, height * block), Image.NEAREST)


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """The upright image stored turned a quarter left, with the EXIF tag that says 'turn it right'."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: viewers rotate 90 degrees clockwise to display
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    return encode_image(sideways, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def frames(source: Image.Image) -> list[Image.Image]:
    return [source.convert("RGB").rotate(30 * i) for i in range(3)]


def corpus(photo_jpeg: bytes, max_request_size: int = TORCHSERVE_MAX_REQUEST_SIZE) -> list[Input]:
    """Every input the service is checked against, made from one real JPEG."""
    photo = Image.open(io.BytesIO(photo_jpeg)).convert("RGB")
    big = photo.resize((96, 80), Image.BICUBIC)
    png = encode_image(big, "PNG")
    jpeg = encode_image(big.resize((256, 256)), "JPEG", quality=90)
    first, *more = frames(big)
    text, json_type = {"Content-Type": "text/plain"}, {"Content-Type": "application/json"}
    html = b"<html><body><img src=cat.jpg></body></html>"
    oversize = jpeg[:2] + bytes(max_request_size - 1)
    upload = {"upload": ("cat.jpg", jpeg, "image/jpeg")}
    many_fields = {f"field{i}": "x" for i in range(2000)}
    valid = {  # of any size, mode or container
        "large photo 6000x4000 JPEG": encode_image(photo.resize((6000, 4000), Image.BICUBIC), "JPEG", quality=80),
        "1x1 PNG": encode_image(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "3000x2 PNG (extreme aspect ratio)": encode_image(photo.resize((3000, 2)), "PNG"),
        "16-bit grayscale PNG": encode_image(Image.fromarray(np.asarray(big.convert("L"), np.uint16) * 257), "PNG"),
        "grayscale JPEG": encode_image(big.convert("L"), "JPEG"),
        "1-bit PNG": encode_image(big.convert("1"), "PNG"),
        "palette PNG": encode_image(big.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "RGBA PNG": encode_image(big.convert("RGBA"), "PNG"),
        "CMYK JPEG": encode_image(big.convert("CMYK"), "JPEG"),
        "CMYK TIFF": encode_image(big.convert("CMYK"), "TIFF"),
        "BMP": encode_image(big, "BMP"),
        "WebP": encode_image(big, "WEBP"),
        "animated GIF (3 frames)": encode_image(first, "GIF", save_all=True, append_images=more, duration=100, loop=0),
        "multi-page TIFF (3 pages)": encode_image(first, "TIFF", save_all=True, append_images=more),
        "EXIF-rotated JPEG": exif_rotated_jpeg(block_image(photo)),
    }
    return [
        # bad input: a 4xx whose JSON names the problem
        Input("empty body", 400, "empty", data=b""),
        Input("random bytes", 400, "not_an_image", data=np.random.default_rng(0).bytes(4096)),
        Input("plain text", 400, "not_an_image", data=b"a cat, probably", headers=text),
        Input("HTML", 400, "not_an_image", data=html, headers={"Content-Type": "text/html"}),
        Input("JSON", 400, "not_an_image", data=b'{"image": "cat.jpg"}', headers=json_type),
        Input("truncated JPEG", 400, "corrupt", data=jpeg[: len(jpeg) // 2]),
        Input("PNG, broken header CRC", 400, "not_an_image", data=break_png_crc(png, b"IHDR")),
        Input("PNG, broken image-data CRC", 400, "corrupt", data=break_png_crc(png, b"IDAT")),
        Input("decompression bomb (PNG declaring 40000x40000)", 400, "too_large", data=png_declaring(40_000, 40_000)),
        Input("decompression bomb (PNG declaring 65535x1000)", 400, "too_large", data=png_declaring(65_535, 1_000)),
        Input("multipart form with no file", 400, "no_file", data={"name": "cat"}, files={"note": (None, "a cat")}),
        Input("urlencoded form with no file", 400, "no_file", data={"name": "cat"}),
        Input("multipart form with an empty file", 400, "empty", files={"image": ("cat.jpg", b"", "image/jpeg")}),
        Input("multipart form of 2,000 text fields and a file", 400, data=many_fields, files=upload),
        Input("urlencoded form of 2,000 fields", 400, data=many_fields),
        Input("body over max_request_size", 413, data=oversize, headers={"Content-Type": "image/jpeg"}),
        *[Input(name, 200, data=data) for name, data in valid.items()],
        # the same image, however the request declares it
        Input("JPEG, no Content-Type", 200, data=jpeg),
        Input("JPEG declared text/plain", 200, data=jpeg, headers=text),
        Input("JPEG declared application/json", 200, data=jpeg, headers=json_type),
        Input(
            "JPEG declared application/octet-stream",
            200,
            data=jpeg,
            headers={"Content-Type": "application/octet-stream"},
        ),
        Input(
            "JPEG declared a urlencoded form (curl --data-binary)",
            200,
            data=jpeg,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Input("multipart file declared text/plain", 200, files={"image": ("cat.txt", jpeg, "text/plain")}),
        Input("multipart: a text field, then the file", 200, data={"name": "cat"}, files=upload),
        Input("multipart: image bytes as a text field named image", 200, files={"image": (None, jpeg)}),
    ]


def send(client: Client, item: Input) -> Answer:
    """POSTs one input on a connection of its own (safe from many threads at once)."""
    url, headers = f"{client.inference}/predictions/cifar10", {**client.auth_headers("inference"), **item.headers}
    response = requests.post(url, data=item.data, files=item.files, headers=headers, timeout=120)
    try:
        body = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body if isinstance(body, dict) else None, response.text)


def send_mixed(client: Client, items: list[Input], rounds: int = 2, threads: int = 32) -> list[tuple[Input, Answer]]:
    """Sends `items` `rounds` times, shuffled, `threads` at once (a batch's worth), so that the
    batches TorchServe forms mix bad inputs with good ones."""
    mix = items * rounds
    random.Random(0).shuffle(mix)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(zip(mix, pool.map(lambda item: send(client, item), mix)))


def keeps_the_rule(item: Input, answer: Answer) -> bool:
    """A prediction for a valid image; else the expected 4xx with a JSON message (and reason)."""
    body = answer.body or {}
    if item.status == 200:
        return answer.status == 200 and "prediction" in body
    return answer.status == item.status and bool(body.get("message")) and item.reason in (None, body.get("reason"))


def summarize_answer(answer: Answer) -> str:
    """One line for a report: the status and the prediction or the error."""
    if answer.body is None:
        return f"{answer.status} (no JSON body)"
    if "prediction" in answer.body:
        return f"{answer.status} prediction {answer.body['prediction']}"
    message = " ".join(str(answer.body.get("message", "")).split())
    message = "".join(c if c.isascii() and c.isprintable() else "?" for c in message)
    return f"{answer.status} {answer.body.get('reason') or answer.body.get('type')}: {message[:70]}"


def max_request_size(config_properties: dict[str, str]) -> int:
    return int(config_properties.get("max_request_size", TORCHSERVE_MAX_REQUEST_SIZE))
