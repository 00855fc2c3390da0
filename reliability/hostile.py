"""Hostile and careless clients beside a steady good one posting a 32 x 32 JPEG back to back: what the
attackers were answered and how fast, the good client's success and p99, worker restarts, and the
server's memory (frontend + workers) until back to its baseline. reliability/rules.py says what passes.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import struct
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import psutil
from PIL import Image
from urllib3 import encode_multipart_formdata

from harness.server import LocalServer
from reliability.bad_inputs import encode_image, png_chunk
from reliability.drills import Call, answers, call, clients, error_message, wait_for, worker_pids
from reliability.rules import MEMORY_BACK_SECONDS
from serve.client import Client


def rle_bmp(width: int = 60_000_000) -> bytes:
    """1 KB: an 8-bit run-length-encoded BMP one row high, whose one pixel and end-of-line code make
    Pillow's pure-Python RLE decoder pad `width` bytes one at a time."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x01\x00\x00\x00\x00\x01"  # one pixel, end of line, end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, 1, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def many_scan_jpeg(side: int = 2048, scans: int = 2000) -> bytes:
    """A progressive JPEG whose last scan (a few bytes for a flat image) is repeated `scans` times:
    libjpeg reads every block of the image once per scan."""
    data = encode_image(Image.new("RGB", (side, side), (120, 80, 200)), "JPEG", progressive=True, quality=90)
    previous_end = data.rindex(b"\xff", 0, data.rindex(b"\xff\xda"))  # the table segment before the last scan
    while data[previous_end + 1] in (0x00, *range(0xD0, 0xD8)):
        previous_end = data.rindex(b"\xff", 0, previous_end)
    last = data[previous_end:-2]
    return data[:-2] + last * (scans - 1) + b"\xff\xd9"


def deep_png(side: int = 8000) -> bytes:
    """A 64-megapixel 16-bit grayscale PNG of zeros: 120 KB."""
    compressor = zlib.compressobj(9)
    rows = b"".join(compressor.compress(b"\0" * (1 + 2 * side)) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def chunk_flood_png(size: int) -> bytes:
    """A 32 x 32 PNG grown to `size` bytes by empty private chunks (12 bytes each) before its pixels:
    PIL reads them one at a time in Python, when it opens the file and again when it checks its CRCs."""
    data = encode_image(Image.new("RGB", (32, 32), (120, 80, 200)), "PNG")
    pixels_at = data.index(b"IDAT") - 4  # the first image-data chunk, its length field included
    empty = png_chunk(b"prIv", b"")  # ancillary and private: every decoder skips it
    return data[:pixels_at] + empty * ((size - len(data)) // len(empty)) + data[pixels_at:]


def fill_byte_jpeg(size: int) -> bytes:
    """A 32 x 32 JPEG grown to `size` bytes by 0xFF fill bytes (which may pad any marker) after its
    start marker: PIL's header parser reads them one at a time in Python."""
    data = encode_image(Image.new("RGB", (32, 32), (120, 80, 200)), "JPEG")
    return data[:2] + b"\xff" * (size - len(data)) + data[2:]


def pipelined(client: Client, bodies: list[bytes], read: bool = True) -> list[Call]:
    """Sends every body on one connection before reading an answer (HTTP/1.1 pipelining); with
    read=False the client goes away at once, and each request counts as 'abandoned'. Requests left
    unanswered when the server closes the connection count as 'closed' where its last answer said
    `Connection: close` (HTTP's way to tell a client to resend them), else as 'dropped'."""
    host, port = client.inference.split("//")[1].split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in client.auth_headers("inference").items())
    head = f"POST /predictions/cifar10 HTTP/1.1\r\nHost: {host}\r\n{head}"
    started, calls, announced = time.monotonic(), [], False
    with socket.create_connection((host, int(port)), timeout=120) as connection:
        with contextlib.suppress(OSError):
            for body in bodies:
                connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        with contextlib.suppress(OSError, http.client.HTTPException):
            while read and len(calls) < len(bodies):
                response = http.client.HTTPResponse(connection, method="POST")
                response.begin()
                response.read()
                calls.append(Call(started, time.monotonic(), response.status, ""))
                announced = response.will_close
    missing = len(bodies) - len(calls)
    unanswered = "closed" if announced else "dropped" if read else "abandoned"
    return calls + [Call(started, time.monotonic(), unanswered, "")] * missing


@dataclass
class Attack:
    name: str
    round: Callable[[Client], list[Call]]  # one attacker's requests and their answers
    allowed: tuple = (400,)  # the answers the attacker may get
    connections: int = 4
    once: bool = False  # one round (an operation), else rounds back to back for the whole attack
    good_clients: int = 1
    operation: bool = False  # an operator's command (its workers come and go): its seconds, no restart count


@cache
def attacks(good: bytes, max_body: int) -> list[Attack]:
    size = max_body - 64
    junk, bmp, jpeg, png = np.random.default_rng(1).bytes(size), rle_bmp(), many_scan_jpeg(), deep_png()
    chunk_flood, fill_bytes = chunk_flood_png(size), fill_byte_jpeg(size)
    photo = Image.open(io.BytesIO(good)).convert("RGB").resize((640, 480))
    big_jpeg = encode_image(photo, "JPEG", quality=90)
    truncated = [big_jpeg[: len(big_jpeg) * 7 // 10], encode_image(photo, "PNG")[:-12]]  # at 70 %, before IEND
    form, form_type = encode_multipart_formdata(
        [*((f"f{i}", "x") for i in range(20_000)), ("image", ("cat.jpg", good))]
    )
    return [
        Attack("RLE BMP, 1 KB, 60 MP", lambda c: [call(c, bmp)]),
        Attack("progressive JPEG, 2,000 scans", lambda c: [call(c, jpeg)]),
        Attack("64 MP 16-bit PNG", lambda c: [call(c, png)]),
        Attack("max-size PNG of empty chunks", lambda c: [call(c, chunk_flood)]),
        Attack("max-size JPEG of fill bytes", lambda c: [call(c, fill_bytes)]),
        Attack("truncated JPEG and PNG", lambda c: [call(c, body) for body in truncated]),
        Attack("form of 20,000 one-byte fields and an image", lambda c: [call(c, form, content_type=form_type)]),
        Attack("/explanations", lambda c: [call(c, good, route="explanations")], connections=2),
        Attack(
            "max-size bodies, 16 pipelined per connection", lambda c: pipelined(c, [junk] * 16), (400, 503, "closed"), 8
        ),
        Attack("250 pipelined, then gone", lambda c: pipelined(c, [good] * 250, read=False), ("abandoned",), 1, True),
    ]


def rss_bytes(server: LocalServer) -> int:
    total = 0
    for process in server.processes():
        with contextlib.suppress(psutil.Error):  # a worker that is exiting
            total += process.memory_info().rss
    return total


def run_attack(
    server: LocalServer, attack: Attack, good: bytes, seconds: float, settle: float = MEMORY_BACK_SECONDS
) -> dict:
    """`attack` for `seconds` beside `attack.good_clients` good clients, then up to `settle` seconds
    for the memory to come back; one row of the report."""
    pids, baseline, peak = worker_pids(server.client), rss_bytes(server), [0]

    def sample(_) -> list[Call]:  # a client that only samples the memory, every 0.25 s
        peak.append(rss_bytes(server))
        time.sleep(0.25)
        return []

    with (
        clients(server.client, 1, sample),
        clients(server.client, attack.good_clients, lambda c: [call(c, good)]) as load,
    ):
        time.sleep(0.5)
        with clients(server.client, attack.connections, attack.round, once=attack.once) as attackers:
            time.sleep(0 if attack.once else seconds)
    back = wait_for(lambda: rss_bytes(server) <= baseline * 1.1 + 64 * 2**20, settle, 1, None)
    seconds_taken = max((c.ended - c.started for c in attackers), default=None)
    latencies = sorted(c.ended - c.started for c in load)
    failures = [c for c in load if c.status != 200]
    return {
        "attack": attack.name,
        "allowed": list(attack.allowed),
        "attacker_requests": len(attackers),
        "attacker_answers": dict(Counter(c.status for c in attackers)),
        "attacker_errors": dict(Counter(error_message(c.body) for c in attackers if c.status not in attack.allowed)),
        "attacker_max_s": None if attack.operation or "abandoned" in attack.allowed else seconds_taken,
        "operation_s": seconds_taken if attack.operation else None,
        "good_requests": len(load),
        "good_success": 1 - len(failures) / max(len(load), 1),
        "good_failures": answers(failures),
        "good_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
        "worker_restarts": None if attack.operation else len(set(pids) - set(worker_pids(server.client))),
        "memory_baseline_mib": baseline / 2**20,
        "memory_peak_mib": max(peak) / 2**20,
        "memory_back_s": back,
        "memory_after_mib": rss_bytes(server) / 2**20,  # at the end of the wait: where it settled
    }


def operations(server: LocalServer) -> list[Attack]:
    """Retiring a version and scaling down, under 4 good clients: no request may be lost."""
    store = server.paths.model_store
    source = zipfile.ZipFile(store / "cifar10.mar")
    with zipfile.ZipFile(store / "cifar10-next.mar", "w", zipfile.ZIP_DEFLATED) as target:  # another modelVersion
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = "next"
                data = json.dumps(manifest).encode()
            target.writestr(item, data)

    def retire(client: Client) -> list[Call]:
        started, old = time.monotonic(), client.describe()[0]["modelVersion"]
        client.register("cifar10-next.mar", workers=1)
        client.set_default("next")
        client.retire(old)
        return [Call(started, time.monotonic(), 200, "")]

    def scale_down(client: Client) -> list[Call]:
        started = time.monotonic()
        for _ in range(3):
            client.scale(2)
            time.sleep(1)
            client.scale(1)
        return [Call(started, time.monotonic(), 200, "")]

    return [
        Attack("retire the default's predecessor under load", retire, (200,), 1, True, 4, operation=True),
        Attack("scale 1 -> 2 -> 1 workers under load, 3 times", scale_down, (200,), 1, True, 4, operation=True),
    ]
