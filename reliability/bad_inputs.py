"""What clients may send to /predictions/cifar10, good and bad, generated on the spot (nothing is
committed): the tests (tests/integration/test_bad_input.py) and the reliability report send the same corpus.

Each `Input` says what the service must answer: a prediction (200), or a 4xx whose JSON body
names the problem (`reason` is the handler's InvalidImage label). Where TorchServe's frontend
answers before our handler and does not keep that rule, `frontend_gap` says what it does instead.
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
EXIF_ORIENTATION = 0x0112


@dataclass
class Input:
    name: str
    status: int  # 200: a prediction; otherwise the 4xx the service must answer
    reason: str | None = None  # the InvalidImage reason in the JSON answer
    data: bytes | dict | None = None  # the raw body, or text fields (urlencoded, or beside `files`)
    files: dict | None = None  # multipart fields, as requests takes them
    headers: dict = field(default_factory=dict)
    frontend_gap: str | None = None  # how TorchServe's frontend breaks the rule for this input


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
    """`source` cut to width x height and blown up into block x block squares of one colour each.

    A JPEG of such an image decodes to the same pixels whether or not it was rotated first (each
    8 x 8 DCT block holds one colour), so an EXIF-rotated copy must give exactly the same answer.
    """
    return source.convert("RGB").crop((0, 0, width, height)).resize((width * block, height * block), Image.NEAREST)


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """The upright image stored turned a quarter left, with the EXIF tag that says 'turn it right'."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # viewers rotate 90 degrees clockwise to display
    return encode_image(
        upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=100, subsampling=0, exif=exif.tobytes()
    )


def large_photo(source: Image.Image, size=(6000, 4000)) -> bytes:
    """A photo-sized JPEG (smooth, so it stays a few MB: under TorchServe's request size limit)."""
    return encode_image(source.convert("RGB").resize(size, Image.BICUBIC), "JPEG", quality=80)


def frames(source: Image.Image, count: int = 3) -> list[Image.Image]:
    rgb = source.convert("RGB")
    return [rgb.rotate(30 * i) for i in range(count)]


def corpus(photo_jpeg: bytes, max_request_size: int = TORCHSERVE_MAX_REQUEST_SIZE) -> list[Input]:
    """Every input the service is checked against, made from one real JPEG."""
    photo = Image.open(io.BytesIO(photo_jpeg)).convert("RGB")
    big = photo.resize((96, 80), Image.BICUBIC)
    gray16 = Image.fromarray(np.asarray(big.convert("L"), dtype=np.uint16) * 257)
    png = encode_image(big, "PNG")
    jpeg = encode_image(big.resize((256, 256)), "JPEG", quality=90)
    animated = frames(big)
    pages = frames(big)
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    return [
        # bad input: a 4xx whose JSON names the problem
        Input("empty body", 400, "empty", data=b""),
        Input("random bytes", 400, "not_an_image", data=np.random.default_rng(0).bytes(4096)),
        Input("plain text", 400, "not_an_image", data=b"a cat, probably", headers={"Content-Type": "text/plain"}),
        Input(
            "HTML",
            400,
            "not_an_image",
            data=b"<html><body><img src=cat.jpg></body></html>",
            headers={"Content-Type": "text/html"},
        ),
        Input("JSON", 400, "not_an_image", data=b'{"image": "cat.jpg"}', headers={"Content-Type": "application/json"}),
        Input("truncated JPEG", 400, "corrupt", data=jpeg[: len(jpeg) // 2]),
        Input("PNG, broken header CRC", 400, "not_an_image", data=break_png_crc(png, b"IHDR")),
        Input("PNG, broken image-data CRC", 400, "corrupt", data=break_png_crc(png, b"IDAT")),
        Input("decompression bomb (PNG declaring 40000x40000)", 400, "too_large", data=png_declaring(40_000, 40_000)),
        Input("decompression bomb (PNG declaring 65535x1000)", 400, "too_large", data=png_declaring(65_535, 1_000)),
        Input("multipart form with no file", 400, "no_file", data={"name": "cat"}, files={"note": (None, "a cat")}),
        Input("urlencoded form with no file", 400, "no_file", data={"name": "cat"}),
        Input("multipart form with an empty file", 400, "empty", files={"image": ("cat.jpg", b"", "image/jpeg")}),
        Input(
            "JPEG declared as a urlencoded form (curl --data-binary)",
            400,
            None,
            data=jpeg,
            headers=form_type,
            frontend_gap="TorchServe's frontend parses the body as a form and answers 500 ErrorDataDecoderException",
        ),
        Input(
            "body over max_request_size",
            413,
            None,
            data=jpeg[:2] + bytes(max_request_size + 1 - 2),
            headers={"Content-Type": "image/jpeg"},
            frontend_gap="TorchServe's frontend answers 413 with an empty body, not JSON",
        ),
        # valid images of any size, mode or container: a prediction
        Input("large photo 6000x4000 JPEG", 200, data=large_photo(photo)),
        Input("1x1 PNG", 200, data=encode_image(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")),
        Input("3000x2 PNG (extreme aspect ratio)", 200, data=encode_image(photo.resize((3000, 2)), "PNG")),
        Input("16-bit grayscale PNG", 200, data=encode_image(gray16, "PNG")),
        Input("grayscale JPEG", 200, data=encode_image(big.convert("L"), "JPEG")),
        Input("1-bit PNG", 200, data=encode_image(big.convert("1"), "PNG")),
        Input("palette PNG", 200, data=encode_image(big.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")),
        Input("RGBA PNG", 200, data=encode_image(big.convert("RGBA"), "PNG")),
        Input("CMYK JPEG", 200, data=encode_image(big.convert("CMYK"), "JPEG")),
        Input("CMYK TIFF", 200, data=encode_image(big.convert("CMYK"), "TIFF")),
        Input("BMP", 200, data=encode_image(big, "BMP")),
        Input("WebP", 200, data=encode_image(big, "WEBP")),
        Input(
            "animated GIF (3 frames)",
            200,
            data=encode_image(animated[0], "GIF", save_all=True, append_images=animated[1:], duration=100, loop=0),
        ),
        Input(
            "multi-page TIFF (3 pages)",
            200,
            data=encode_image(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
        ),
        Input("EXIF-rotated JPEG", 200, data=exif_rotated_jpeg(block_image(photo))),
        # the same image, however the request declares it
        Input("JPEG, no Content-Type", 200, data=jpeg),
        Input("JPEG declared text/plain", 200, data=jpeg, headers={"Content-Type": "text/plain"}),
        Input("JPEG declared application/json", 200, data=jpeg, headers={"Content-Type": "application/json"}),
        Input("multipart file declared text/plain", 200, files={"image": ("cat.txt", jpeg, "text/plain")}),
        Input(
            "multipart: a text field, then the file",
            200,
            data={"name": "cat"},
            files={"upload": ("cat.jpg", jpeg, "image/jpeg")},
        ),
        Input("multipart: image bytes as a text field named image", 200, files={"image": (None, jpeg)}),
    ]


def send(client: Client, item: Input, model: str = "cifar10", timeout: float = 120) -> Answer:
    """POSTs one input on a connection of its own (safe from many threads at once)."""
    response = requests.post(
        f"{client.inference}/predictions/{model}",
        data=item.data,
        files=item.files,
        headers={**client.auth_headers("inference"), **item.headers},
        timeout=timeout,
    )
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
    if item.status == 200:
        return answer.status == 200 and answer.body is not None and "prediction" in answer.body
    return (
        answer.status == item.status
        and answer.body is not None
        and bool(answer.body.get("message"))
        and (item.reason is None or answer.body.get("reason") == item.reason)
    )


def summarize_answer(answer: Answer) -> str:
    """One line for a report: the status and the prediction or the error."""
    if answer.body is None:
        return f"{answer.status} (no JSON body)"
    if "prediction" in answer.body:
        return f"{answer.status} prediction {answer.body['prediction']}"
    message = "".join(
        c if c.isascii() and c.isprintable() else "?" for c in " ".join(str(answer.body.get("message", "")).split())
    )
    return f"{answer.status} {answer.body.get('reason') or answer.body.get('type')}: {message[:70]}"


def max_request_size(config_properties: dict[str, str]) -> int:
    return int(config_properties.get("max_request_size", TORCHSERVE_MAX_REQUEST_SIZE))
