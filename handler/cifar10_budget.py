"""What decoding one image may cost: no request may take more than a bounded slice of a worker,
and one image never makes its batch outlast responseTimeout.

- An allow-list of formats, each with the most pixels it may declare. A JPEG is decoded at 1/8
  scale (draft mode) when that still leaves >= 32 px, so its cost is mostly reading the file; the
  others are decoded whole. A classifier of 32 x 32 pixels needs none of this, but photos as
  phones send them must pass.
- Refused whatever their size, because their decoding cost is not bounded by their pixels:
  run-length-encoded BMPs (Pillow decodes them in pure Python, a byte at a time) and progressive
  JPEGs with more scans than encoders write (each scan reads every block of the image again).
- A memory bound on the decoded pixels (with the copies that converting them takes), and a CPU
  time bound per image, enforced from the moment its file is opened (a timer signal in the
  worker's main thread): a header can cost more than any pixels, PIL reading thousands of empty
  PNG chunks or JPEG fill bytes one at a time in Python.
Each refusal is an InvalidImage whose reason names the budget; its batch-mates are untouched.
"""

import contextlib
import signal
import threading

# format -> the most pixels an image of it may declare
MAX_PIXELS = {
    "JPEG": 24_000_000,  # 6000 x 4000, decoded at 1/8 scale
    "MPO": 24_000_000,  # JPEGs with more pictures after the first (phones write them)
    "PNG": 4_200_000,  # 2048 x 2048 and a little more
    "GIF": 4_200_000,
    "WEBP": 4_200_000,
    "TIFF": 4_200_000,
    "BMP": 4_200_000,
}
PROGRESSIVE_JPEG_MAX_PIXELS = 12_000_000  # every coefficient is kept in memory until the last scan
MAX_JPEG_SCANS = 40  # libjpeg writes 10 for a colour image, mozjpeg up to about 20
BMP_RLE = (1, 2)  # BMP compression codes of RLE8 and RLE4
MEMORY_BYTES = 96 * 2**20  # decoded pixels, with the copies that converting them takes
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3, "YCbCr": 3}
CONVERSION_COPIES = 3  # decoded, converted (e.g. 16-bit to float), RGB
CPU_SECONDS = 0.25  # per image
BATCH_DECODE_SECONDS = 10.0  # per batch (wall clock): a third of model-config.yaml's responseTimeout


class OverBudget(BaseException):
    """An image that would cost more than its budget; `reason` is the InvalidImage label.

    Not an Exception: the deadline raises it wherever decoding happens to be, and PIL's own
    `except Exception` blocks (some turn any error into "not this format, try the next") must let
    it through, as they let KeyboardInterrupt through."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def admit(image, data: bytes) -> None:
    """Raises OverBudget for an opened (not yet decoded) image outside the budget."""
    width, height = image.size
    limit = MAX_PIXELS.get(image.format)
    if limit is None:
        raise OverBudget("unsupported_format", f"{image.format} images are not served")
    if image.format == "BMP" and image.info.get("compression") in BMP_RLE:
        raise OverBudget("unsupported_format", "run-length-encoded BMP is not served: send an uncompressed BMP or PNG")
    if image.format in ("JPEG", "MPO") and (image.info.get("progressive") or image.info.get("progression")):
        limit = PROGRESSIVE_JPEG_MAX_PIXELS
        scans = data.count(b"\xff\xda")  # start-of-scan markers (entropy-coded data never holds 0xFF 0xDA)
        if scans > MAX_JPEG_SCANS:
            raise OverBudget(
                "too_costly", f"progressive JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are accepted"
            )
    if width * height > limit:
        raise OverBudget(
            "too_large",
            f"image is {width}x{height} pixels; at most {limit:,} pixels are accepted for {image.format} "
            "(the model sees 32 x 32: scale the image down before sending it)",
        )


def check_memory(image) -> None:
    """Raises OverBudget when the decoded pixels would not fit the memory budget (call after draft())."""
    width, height = image.size
    needed = width * height * BYTES_PER_PIXEL.get(image.mode, 4) * CONVERSION_COPIES
    if needed > MEMORY_BYTES:
        raise OverBudget("too_large", f"{width}x{height} {image.mode} image needs {needed / 2**20:.0f} MiB to decode")


_deadline = {"seconds": None}  # set while a cpu_deadline block runs


def _expired(signum, frame):
    if _deadline["seconds"] is not None:  # a late signal, after the block ended, is ignored
        raise OverBudget("too_costly", f"decoding took more than {_deadline['seconds']:g} s of CPU")


@contextlib.contextmanager
def cpu_deadline(seconds: float = CPU_SECONDS):
    """Raises OverBudget inside the block once this process has spent `seconds` of CPU time in it.

    A timer signal (SIGPROF) can only be handled in the main thread: elsewhere the block runs
    without the deadline (the format and size checks, and the request size, still bound it, less
    tightly). The handler stays installed once set: restoring the default action would let a
    signal still on its way end the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGPROF) is not _expired:
        signal.signal(signal.SIGPROF, _expired)
    _deadline["seconds"] = seconds
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        _deadline["seconds"] = None
