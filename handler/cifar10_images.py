"""Requests in, pixels out, for the CIFAR-10 model: a TorchServe request row -> its image bytes ->
32 x 32 RGB uint8 pixels, with one clear error per bad input. numpy and Pillow only: this is the one
decoding path of every runtime (cifar10_runtimes.py), torch or not.

Lives beside cifar10_handler.py in the .mar (TorchServe wants the handler module to define a single
class, and this keeps the decoding testable without a TorchServe worker). The serving benchmark's
alternative servers use it too, so every system compared does exactly the same work.
"""

import io
import time

import numpy as np
from cifar10_budget import BATCH_DECODE_SECONDS, MAX_PIXELS, OverBudget, admit, check_memory, cpu_deadline
from PIL import Image, ImageOps

IMAGE_SIZE = 32
# Formats a client may send. Naming them stops PIL from trying its other plugins (EPS, for one,
# would run Ghostscript on the request's bytes).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG covers MPO (multi-picture) files too
# What each format may cost (pixels, memory, CPU time) is in cifar10_budget.py.
Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS.values())  # PIL's own bomb check, as a second line
Image.init()  # register every plugin now: Image.open(formats=...) knows only the registered ones
# Fields searched, in this order, for the image; otherwise the first field that holds bytes.
IMAGE_FIELDS = ("body", "image", "data", "file")
# What an error message may quote of the request: a few field names, each cut short, and a
# decoder's own message, cut short too. The answer stays small whatever was sent.
QUOTED_FIELDS = 5
QUOTED_NAME_CHARACTERS = 40
QUOTED_MESSAGE_CHARACTERS = 200
# The level of white of each grayscale mode deeper than 8 bits: the first of these levels that
# holds an image's brightest value, else that value (_eight_bit_gray).
DEEP_GRAY_WHITES = {"I;16": (65535,), "I": (255, 65535), "F": (1.0, 255)}


class InvalidImage(ValueError):
    """A request that cannot be classified; `reason` is a short machine-readable label, `status`
    the HTTP status of its answer (400; 503 for a batch out of time, which a retry may pass)."""

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason = reason
        self.status = status

    def detached(self) -> "InvalidImage":
        """This error without its traceback and causes, to be kept as a request's answer. They hold
        the frames that raised it, and with them the batch's request bodies, in a reference cycle
        that only Python's cyclic collector frees: an idle worker would keep the bodies of its last
        bad requests (hundreds of MiB after a flood of large ones)."""
        self.__traceback__ = self.__cause__ = self.__context__ = None
        return self


def request_payload(row, text_fields=frozenset()) -> bytes:
    """The image bytes of one TorchServe request row (raw body or a multipart field).

    `text_fields`: the form fields that came as text rather than as a file; one of them is taken
    only when it bears one of IMAGE_FIELDS' names (`curl -F "image=<cat.jpg"`).
    """
    if not isinstance(row, dict):
        raise InvalidImage("no_image", "request carries no image")
    for name in IMAGE_FIELDS:
        if name in row:
            return _as_bytes(row[name], name)
    for name, value in row.items():
        if name not in text_fields and isinstance(value, (bytes, bytearray)) and value:
            return bytes(value)
    if row.keys() & set(text_fields):
        raise InvalidImage(
            "no_file",
            f"no file in the form, only text fields ({_some_of(sorted(row))}): "
            "send the image as a file field, e.g. curl -F image=@cat.jpg",
        )
    raise InvalidImage(
        "no_image",
        "no image in the request: send the image as the raw body or as a multipart file field named 'image'",
    )


def _some_of(names: list[str]) -> str:
    """The first QUOTED_FIELDS names, each cut short, and how many more there are."""
    quoted = ", ".join(_cut(name, QUOTED_NAME_CHARACTERS) for name in names[:QUOTED_FIELDS])
    return f"{quoted} and {len(names) - QUOTED_FIELDS} more" if len(names) > QUOTED_FIELDS else quoted


def _cut(text: str, characters: int) -> str:
    return text if len(text) <= characters else text[: characters - 3] + "..."


def _as_bytes(value, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise InvalidImage("empty", f"empty {name}: expected the bytes of an image")
        return bytes(value)
    if isinstance(value, str):
        raise InvalidImage(
            "not_an_image", f"{name} is text, not an image: expected JPEG, PNG, GIF, BMP, WebP or TIFF bytes"
        )
    raise InvalidImage(
        "not_an_image", f"{name} is JSON, not an image: expected JPEG, PNG, GIF, BMP, WebP or TIFF bytes"
    )


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image -> 32 x 32 x 3 uint8 RGB: first frame, EXIF rotation applied, alpha over white.

    Within the budget of cifar10_budget.py: its caps checked once the header is read, its CPU time
    bounded from the moment the file is opened. A truncated image (pixel data missing) is an error:
    `corrupt`; a file whose pixels are all there but whose end marker or trailer is missing is served."""
    try:
        with cpu_deadline():
            return _pixels(_opened(data), data)
    except OverBudget as error:
        raise InvalidImage(error.reason, str(error)) from error


def _opened(data: bytes) -> Image.Image:
    """The image with its header read, its pixels not yet decoded."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:
        raise InvalidImage("too_large", f"image too large: {error}") from error
    except Exception as error:  # PIL's plugins raise OSError, SyntaxError, ValueError, struct.error...
        raise InvalidImage(
            "not_an_image", "not a decodable image: expected JPEG, PNG, GIF, BMP, WebP or TIFF bytes"
        ) from error


def _pixels(image: Image.Image, data: bytes) -> np.ndarray:
    """The opened image admitted by the budget, checked and decoded; a decoder that fails means `corrupt`."""
    image_format = image.format  # the images that decoding makes from this one have none
    try:
        admit(image, data)
        if image.format == "PNG":  # PIL decodes PNG pixels without checking their chunks' CRCs; verify() does
            Image.open(io.BytesIO(data), formats=("PNG",)).verify()
        image.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # JPEG only: decode at 1/2..1/8 scale when that is still >= 32 px
        check_memory(image)
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an image that needs no turn
        image = _to_rgb(image)
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise InvalidImage("too_large", f"image too large: {error}") from error
    except Exception as error:  # truncated or corrupt data fails in many ways inside the decoders
        message = _cut(str(error), QUOTED_MESSAGE_CHARACTERS)
        raise InvalidImage("corrupt", f"corrupt or truncated {image_format} image: {message}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    whites = DEEP_GRAY_WHITES.get(image.mode[:4])  # I;16B, I;16L... are I;16 in another byte order
    if whites:
        image = Image.fromarray(_eight_bit_gray(image, whites), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _eight_bit_gray(image: Image.Image, whites: tuple) -> np.ndarray:
    """A grayscale image deeper than 8 bits as 8-bit levels, by the range its values use: 16-bit
    modes (I;16, I;16B...) by 65535. 32-bit integers (I) hold what their writer put there: values
    within 0..255 are 8-bit levels, within 0..65535 16-bit levels, larger ones are scaled by the
    largest. Floats (F): within 0..1 the usual 0..1 levels, within 0..255 8-bit levels, larger
    ones scaled by the largest. Negative values and NaN are black."""
    pixels = np.nan_to_num(np.array(image, dtype=np.float32), copy=False)
    brightest = float(pixels.max())
    pixels *= 255.0 / next((white for white in whites if brightest <= white), brightest)
    return np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels).astype(np.uint8)


def decode_payloads(payloads: list, errors: list) -> np.ndarray | None:
    """The decodable payloads as one N x 3 x 32 x 32 uint8 batch (pixel_array), in request order.

    `payloads[i]` is the image bytes of request i, or None where `errors[i]` already holds its
    InvalidImage (or where another decoder took it); a payload that does not decode gets its
    InvalidImage put into `errors`. Once the batch has spent BATCH_DECODE_SECONDS decoding, the
    rest get a 503 `busy` (retry): the batch stays far inside responseTimeout whatever it holds.
    Returns None when no payload decoded.
    """
    images, started = [], time.monotonic()
    for index, payload in enumerate(payloads):
        if payload is None:
            continue
        try:
            if time.monotonic() - started > BATCH_DECODE_SECONDS:
                raise InvalidImage("busy", "this batch ran out of decoding time: retry", status=503)
            images.append(decode_image(payload))
        except InvalidImage as error:
            errors[index] = error.detached()
    return pixel_array(images) if images else None


def pixel_array(images: list[np.ndarray]) -> np.ndarray:
    """N decoded images (H x W x C) -> N x C x H x W uint8, a channels_last view: the model's fastest layout."""
    return np.stack(images).transpose(0, 3, 1, 2)
