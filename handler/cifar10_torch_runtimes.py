"""The torch runtimes: TorchScript or an AOTInductor library, on the CPU or a CUDA device (where
32 x 32 JPEGs may be decoded on the GPU with nvJPEG). The only handler module that imports torch;
cifar10_runtimes.load_runtime imports it only for these runtimes.
"""

import io

import numpy as np
import torch
from cifar10_images import IMAGE_SIZE, decode_image, decode_payloads
from PIL import Image


class TorchRuntime:
    """A torch module (or any callable on uint8 N x 3 x 32 x 32 tensors) on `device`; requests are
    decoded by decode_batch, on the GPU where `jpeg_decoder` takes them."""

    def __init__(self, forward, device: torch.device, jpeg_decoder=None, gpu_min_batch: int = 1):
        self.forward = forward
        self.device = device
        self.jpeg_decoder = jpeg_decoder
        self.gpu_min_batch = gpu_min_batch

    def decode(self, payloads: list, errors: list) -> torch.Tensor | None:
        return decode_batch(payloads, errors, self.device, self.jpeg_decoder, self.gpu_min_batch)

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.forward(batch).float().cpu().numpy()

    def warm_up(self, largest_batch: int) -> None:
        """The first calls build and optimize the execution plan: paid here, not by a request. A GPU
        runs a forward pass in well under a millisecond: there every batch size is met once here (a
        new shape's first call on a GPU picks kernels), so that a worker just scaled up answers at once."""
        if self.device.type == "cuda":
            sizes = (1, 1, *range(1, largest_batch + 1), largest_batch)
        else:
            sizes = (1, 1, largest_batch, largest_batch)
        with torch.inference_mode():
            for size in sizes:
                self.forward(torch.zeros(size, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=self.device))

    def gpu_memory_bytes(self) -> int | None:
        """What this worker's CUDA caching allocator holds; None on the CPU."""
        return torch.cuda.memory_reserved(self.device) if self.device.type == "cuda" else None


def load_torch_runtime(runtime: str, path: str, gpu_id, threads: int, options) -> TorchRuntime:
    """`runtime` "torchscript" (model.pt) or "aotinductor" (model.so) on the worker's GPU when it has
    one (`gpu_id`), else the CPU. `threads`: torch intra-op threads (0: torch's default). `options`:
    the handler's options (cifar10_options.HandlerOptions: freeze, gpu_decode, gpu_decode_min_batch)."""
    if threads:
        torch.set_num_threads(threads)
    on_gpu = torch.cuda.is_available() and gpu_id is not None
    device = torch.device(f"cuda:{gpu_id}" if on_gpu else "cpu")
    if runtime == "aotinductor":
        if on_gpu:  # the loader has no device index: it takes the current device
            torch.cuda.set_device(device)
        forward = aot_inductor_model(torch._export.aot_load(path, device.type))
    else:
        module = torch.jit.load(path, map_location=device)
        forward = inference_model(module, freeze=options.freeze)
    jpeg_decoder = gpu_jpeg_decoder(device) if options.gpu_decode else None
    return TorchRuntime(forward, device, jpeg_decoder, options.gpu_decode_min_batch)


def inference_model(scripted: torch.jit.ScriptModule, freeze: bool = True) -> torch.jit.ScriptModule:
    """The exported TorchScript made ready to serve: eval mode, channels_last weights, frozen
    (batch norm folded into the convolutions, weights inlined as constants: about 1.7x faster at
    batch 64 on one CPU thread; outputs within 1e-5 of the unfrozen module). Call it after moving
    the module to its device."""
    model = scripted.eval().to(memory_format=torch.channels_last)
    return torch.jit.freeze(model) if freeze else model


def aot_inductor_model(runner):
    """An AOTInductor library's runner called like the TorchScript module: it wants contiguous
    (N x C x H x W) pixels, and may answer a list of outputs."""

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        logits = runner(pixels.contiguous())
        return logits[0] if isinstance(logits, (list, tuple)) else logits

    return forward


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

    `payloads` and `errors` as for cifar10_images.decode_payloads, which decodes every payload on
    the CPU, except that `jpeg_decoder` (a GPU decoder: a list of uint8 byte tensors -> a list of
    3 x 32 x 32 tensors) takes the JPEGs that gpu_decodable accepts when there are at least
    `gpu_min_batch` of them (a lone image decodes sooner on the CPU than a GPU call's fixed cost).
    A batch the GPU decoder refuses goes to the CPU whole. Returns None when no payload decoded.
    """
    on_gpu, gpu_pixels = [], []
    if jpeg_decoder is not None and len(payloads) >= gpu_min_batch:
        jpegs = [i for i, payload in enumerate(payloads) if payload is not None and gpu_decodable(payload)]
        if jpegs and len(jpegs) >= gpu_min_batch:
            try:
                gpu_pixels = jpeg_decoder([torch.frombuffer(bytearray(payloads[i]), dtype=torch.uint8) for i in jpegs])
                on_gpu = jpegs
            except RuntimeError:  # a file the GPU decoder refuses: the CPU decodes it (and words the error)
                pass
    taken = set(on_gpu)
    cpu_pixels = decode_payloads([None if i in taken else p for i, p in enumerate(payloads)], errors)
    if not taken:  # the CPU path as it always was
        if cpu_pixels is None:
            return None
        batch = torch.from_numpy(cpu_pixels)
        return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch
    decoded = torch.stack(gpu_pixels).to(device)
    if cpu_pixels is not None:  # a mixed batch: each image back in its request's row
        rows = [i for i, payload in enumerate(payloads) if payload is not None and errors[i] is None]
        batch = torch.empty(len(rows), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=device)
        batch[[row for row, i in enumerate(rows) if i in taken]] = decoded
        batch[[row for row, i in enumerate(rows) if i not in taken]] = torch.from_numpy(cpu_pixels).to(device)
        decoded = batch
    return decoded.contiguous(memory_format=torch.channels_last)
