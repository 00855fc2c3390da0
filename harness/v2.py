"""Open Inference Protocol v2 requests as the clients send them (docs/api.md), for the tests and the
benchmark: one BYTES input `images`, in JSON (base64) or in the binary data extension."""

from __future__ import annotations

import base64
import json
import struct


def json_request(images: list[bytes], **request) -> dict:
    """The JSON body: each image base64-encoded (JSON carries text only)."""
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)], "data": data}], **request}


def binary_request(images: list[bytes], **request) -> tuple[bytes, int]:
    """The binary data extension's body (the JSON header, then each image as a length-prefixed BYTES
    element) and the header's length (the Inference-Header-Content-Length header), as Triton's and
    KServe's clients send it by default."""
    data = b"".join(struct.pack("<I", len(image)) + image for image in images)
    tensor = {
        "name": "images",
        "datatype": "BYTES",
        "shape": [len(images)],
        "parameters": {"binary_data_size": len(data)},
    }
    header = json.dumps({"inputs": [tensor], **request}).encode()
    return header + data, len(header)
