"""Requests in, answers out, for the CIFAR-10 model: image bytes -> 32 x 32 RGB uint8 (with one
clear error per bad input), and a batch of logits -> the Flask service's JSON answers.

Lives beside cifar10_handler.py in the .mar (TorchServe wants the handler module to define a single
class, and this keeps the decoding testable without a TorchServe worker). The serving benchmark's
alternative servers use it too, so every system compared does exactly the same work.
"""

import io
import json

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SIZE = 32
TOP_K = 3
# Formats a client may send. Naming them stops PIL from trying its other plugins (EPS, for one,
# would run Ghostscript on the request's bytes).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG covers MPO (multi-picture) files too
# Anything over this many pixels is refused before decoding (decompression bombs); a 48 MP
# phone photo still fits.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own bomb check, as a second line
Image.init()  # register every plugin now: Image.open(formats=...) knows only the registered ones
# Fields searched, in this order, for the image; otherwise the first field that holds bytes.
IMAGE_FIELDS = ("body", "image", "data", "file")


class InvalidImage(ValueError):
    """A request that cannot be classified; `reason` is a short machine-readable label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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
            f"no file in the form, only text fields ({', '.join(sorted(row))}): "
            "send the image as a file field, e.g. curl -F image=@cat.jpg",
        )
    raise InvalidImage(
        "no_image",
        "no image in the request: send the image as the raw body or as a multipart file field named 'image'",
    )


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
    """Encoded image -> 32 x 32 x 3 uint8 RGB: first frame, EXIF rotation applied, alpha over white."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:
        raise InvalidImage("too_large", f"image too large: {error}") from error
    except Exception as error:  # PIL's plugins raise OSError, SyntaxError, ValueError, struct.error...
        raise InvalidImage(
            "not_an_image", "not a decodable image: expected JPEG, PNG, GIF, BMP, WebP or TIFF bytes"
        ) from error
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InvalidImage("too_large", f"image is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels are accepted")
    try:
        if image.format == "PNG":  # PIL decodes PNG pixels without checking their chunks' CRCs; verify() does
            Image.open(io.BytesIO(data), formats=("PNG",)).verify()
        image.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # JPEG only: decode at 1/2..1/8 scale when that is still >= 32 px
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise InvalidImage("too_large", f"image too large: {error}") from error
    except Exception as error:  # truncated or corrupt data fails in many ways inside the decoders
        raise InvalidImage("corrupt", f"corrupt or truncated {image.format} image: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grayscale
        pixels = np.asarray(image, dtype=np.float32)
        scale = 255.0 / 65535.0 if image.mode != "F" else 255.0 / max(float(pixels.max()), 1e-12)
        image = Image.fromarray((pixels * scale).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def error_body(error: InvalidImage) -> str:
    return json.dumps({"code": 400, "type": "InvalidImage", "reason": error.reason, "message": str(error)})


def inference_model(scripted: torch.jit.ScriptModule, freeze: bool = True) -> torch.jit.ScriptModule:
    """The exported TorchScript made ready to serve: eval mode, channels_last weights, frozen
    (batch norm folded into the convolutions, weights inlined as constants: about 1.7x faster at
    batch 64 on one CPU thread; outputs within 1e-5 of the unfrozen module). Call it after moving
    the module to its device."""
    model = scripted.eval().to(memory_format=torch.channels_last)
    return torch.jit.freeze(model) if freeze else model


class OnnxModel:
    """An ONNX Runtime session called like the TorchScript module: N x 3 x 32 x 32 uint8 pixels in
    (a tensor, any memory layout), float32 logits out (a tensor). CPU only.

    onnxruntime is imported here and only here: archives that serve TorchScript do not need it.
    """

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(pixels.cpu().numpy())}
        return torch.from_numpy(self.session.run(None, feed)[0])


# Start-of-frame markers of baseline and extended sequential Huffman JPEGs (what nvJPEG's batched
# decoder handles); progressive, lossless and arithmetic-coded files go to the CPU.
SEQUENTIAL_FRAMES = (0xC0, 0xC1)


def gpu_decodable(data: bytes) -> bool:
    """True for a JPEG that the GPU decodes to what decode_image gives: 32 x 32, three YCbCr
    components (ids 1, 2, 3, as JFIF writes them), sequential, with no EXIF block (which may rotate
    the image) and no Adobe block (which may say the pixels are RGB or CMYK). Anything else, and
    anything that does not parse, is left to the CPU path, which also words its errors."""
    if data[:3] != b"\xff\xd8\xff" or not data.endswith(b"\xff\xd9"):  # truncated files fail on the CPU
        return False
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if (marker == 0xE1 and segment.startswith(b"Exif")) or (marker == 0xEE and segment.startswith(b"Adobe")):
            return False
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            if marker not in SEQUENTIAL_FRAMES or len(segment) < 15:
                return False
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            components = segment[5]
            ids = bytes(segment[6 + 3 * i] for i in range(min(components, 3)))
            return (width, height) == (IMAGE_SIZE, IMAGE_SIZE) and components == 3 and ids == b"\x01\x02\x03"
        if marker == 0xDA:  # start of scan before any frame header
            return False
        position += 2 + length
    return False


def gpu_jpeg_decoder(device: torch.device):
    """torchvision's batched JPEG decoder (nvJPEG) on a CUDA `device`, for decode_batch; None on a
    CPU worker, without torchvision, or where a probe JPEG does not decode within a few levels of
    the CPU's pixels (a build without GPU decoding): the CPU path serves then."""
    if device.type != "cuda":
        return None
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None

    def decode(blobs: list[torch.Tensor]) -> list[torch.Tensor]:
        return decode_jpeg(blobs, device=device)

    gradient = np.add.outer(np.arange(IMAGE_SIZE), np.arange(IMAGE_SIZE)).astype(np.uint8) * 4
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gradient, gradient.T, 255 - gradient], axis=2)).save(buffer, "JPEG", quality=90)
    probe = buffer.getvalue()
    try:
        for count in (2, 1):  # also warms up the batched decoder, so that a first request does not pay for it
            pixels = decode([torch.frombuffer(bytearray(probe), dtype=torch.uint8)] * count)[0].cpu()
    except (RuntimeError, TypeError, ValueError):
        return None
    expected = torch.from_numpy(decode_image(probe)).permute(2, 0, 1)
    if pixels.shape != expected.shape or (pixels.int() - expected.int()).abs().max() > 8:
        return None
    return decode


def decode_batch(
    payloads: list, errors: list, device: torch.device, jpeg_decoder=None, gpu_min_batch: int = 1
) -> torch.Tensor | None:
    """The decodable payloads as one N x 3 x 32 x 32 uint8 batch on `device`, in request order.

    `payloads[i]` is the image bytes of request i, or None where `errors[i]` already holds its
    InvalidImage; a payload that does not decode gets its InvalidImage put into `errors`.
    `jpeg_decoder` (a GPU decoder: a list of uint8 byte tensors -> a list of 3 x 32 x 32 tensors)
    takes the JPEGs that gpu_decodable accepts when there are at least `gpu_min_batch` of them (a
    lone image decodes sooner on the CPU than a GPU call's fixed cost); the rest, and all of them
    when it is None or when it fails, go through decode_image on the CPU. Returns None when no
    payload decoded.
    """
    on_gpu = []
    if jpeg_decoder is not None and len(payloads) >= gpu_min_batch:
        on_gpu = [i for i, payload in enumerate(payloads) if payload is not None and gpu_decodable(payload)]
    gpu_pixels = {}
    if on_gpu and len(on_gpu) >= gpu_min_batch:
        try:
            blobs = [torch.frombuffer(bytearray(payloads[i]), dtype=torch.uint8) for i in on_gpu]
            gpu_pixels = dict(zip(on_gpu, jpeg_decoder(blobs)))
        except RuntimeError:  # a file the GPU decoder refuses: the CPU decodes it (and words the error)
            gpu_pixels = {}
    cpu_images, cpu_rows, gpu_rows, row = [], [], [], 0
    for index, payload in enumerate(payloads):
        if payload is None:
            continue
        if index in gpu_pixels:
            gpu_rows.append(row)
        else:
            try:
                cpu_images.append(decode_image(payload))
            except InvalidImage as error:
                errors[index] = error
                continue
            cpu_rows.append(row)
        row += 1
    if row == 0:
        return None
    if not gpu_pixels:  # the CPU path as it always was
        batch = pixel_batch(cpu_images)
        return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch
    decoded = torch.stack([gpu_pixels[i] for i in on_gpu]).to(device)
    if cpu_images:  # a mixed batch: each image back in its request's row
        batch = torch.empty(row, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=device)
        batch[gpu_rows] = decoded
        batch[cpu_rows] = pixel_batch(cpu_images).to(device)
        decoded = batch
    return decoded.contiguous(memory_format=torch.channels_last)


def pixel_batch(images: list[np.ndarray]) -> torch.Tensor:
    """N decoded images (H x W x C) -> N x C x H x W uint8, a channels_last view: the model's fastest layout."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def answer_bodies(logits: torch.Tensor, classes: list[str]) -> list[str]:
    """The seed's JSON answer per row: top class, its confidence, and the top 3 with theirs."""
    top = torch.softmax(logits.float(), dim=1).topk(TOP_K, dim=1)
    confidences = (top.values.double() * 1e4).floor().div(1e4).tolist()  # rounded down: never sums above 1
    bodies = []
    for row_confidences, row_classes in zip(confidences, top.indices.tolist()):
        top3 = [{"class": classes[c], "confidence": p} for p, c in zip(row_confidences, row_classes)]
        bodies.append(
            json.dumps({"prediction": top3[0]["class"], "confidence": top3[0]["confidence"], "top3_predictions": top3})
        )
    return bodies
