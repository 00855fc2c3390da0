"""The Open Inference Protocol v2 (KServe v2, Triton) over REST, for the CIFAR-10 handler: a v2
inference request in, its encoded images out; probabilities in, a v2 response out.

The model's tensors are those of cifar10_v2.json, packed beside this module in the .mar, where the
frontend agent reads them too (GET /v2/models/cifar10): one BYTES input of one or more encoded
images, as base64 strings in JSON or as the binary data extension's length-prefixed elements
after the JSON header (`Inference-Header-Content-Length`); outputs label (BYTES), confidence and
probabilities (FP32), each in JSON or as binary data, as the request asks. docs/api.md is the
contract. A request that breaks it is an InvalidImage with reason `invalid_v2_request` (400).
"""

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cifar10_images import InvalidImage

METADATA = json.loads(Path(__file__).with_name("cifar10_v2.json").read_text())
INPUT = METADATA["inputs"][0]
OUTPUTS = {output["name"]: output for output in METADATA["outputs"]}
# Set by the frontend agent on the requests it routes from /v2/models/{name}[/versions/{v}]/infer;
# it removes the header from every other request.
PROTOCOL_HEADER = "inference_protocol"
HEADER_LENGTH = "inference-header-content-length"  # the binary data extension's, in any case
LENGTH_PREFIX = struct.Struct("<I")  # a BYTES element's length, before its bytes
REASON = "invalid_v2_request"


@dataclass
class Outputs:
    """What a v2 request asked back: its `id` (echoed) and each output's name with whether it goes
    as binary data."""

    request_id: str | None
    binary: dict[str, bool]


def is_v2(headers: dict) -> bool:
    return headers.get(PROTOCOL_HEADER) == "v2"


def parse(body, headers: dict, max_images: int) -> tuple[list[bytes], Outputs]:
    """A v2 inference request (`body`: the worker's row["body"], bytes or the JSON it decoded) ->
    its images' bytes and what to answer. Raises InvalidImage (invalid_v2_request)."""
    header_length = next((value for name, value in headers.items() if name.lower() == HEADER_LENGTH), None)
    binary = b""
    if header_length is not None and isinstance(body, (bytes, bytearray)):  # else the worker read it all as JSON
        if not str(header_length).isdigit() or int(header_length) > len(body):
            _refuse(f"Inference-Header-Content-Length {header_length!r} is not a length within the body")
        body, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    request = _json(body)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        _refuse(f"expected 'inputs' to hold one input, {_described(INPUT)}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT["name"] or tensor.get("datatype") != INPUT["datatype"]:
        _refuse(
            f"expected {_described(INPUT)}, got {str(tensor.get('name'))[:40]!r} of {str(tensor.get('datatype'))[:10]}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
        _refuse("the input's 'shape' must be a list of sizes")
    count = math.prod(shape)
    if not 1 <= count <= max_images:
        _refuse(f"the input holds {count} images: send 1 to {max_images} a request")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or not 0 <= size <= len(binary):
            _refuse(f"binary_data_size {size!r} is not a length within the binary data ({len(binary)} bytes)")
        images, rest = _binary_elements(binary[:size], count), binary[size:]
    else:
        images, rest = _base64_elements(tensor.get("data"), count), binary
    if len(rest):
        _refuse(f"{len(rest)} bytes after the input's binary data")
    return images, _outputs(request)


def _json(body) -> dict:
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            body = json.loads(bytes(body) if isinstance(body, memoryview) else body)
        except (UnicodeDecodeError, ValueError):
            _refuse("the body (or its JSON header) is not JSON")
    if not isinstance(body, dict):
        _refuse("the request must be a JSON object")
    return body


def _binary_elements(data: memoryview, count: int) -> list[bytes]:
    """BYTES elements in the binary data extension: each a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + LENGTH_PREFIX.size > len(data):
            _refuse(f"binary data element {len(elements)} has no complete 4-byte length")
        (length,) = LENGTH_PREFIX.unpack_from(data, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > len(data):
            _refuse(f"binary data element {len(elements)} declares {length} bytes, {len(data) - offset} are left")
        elements.append(bytes(data[offset : offset + length]))
        offset += length
    if len(elements) != count:
        _refuse(f"the shape holds {count} images, the binary data {len(elements)}")
    return elements


def _base64_elements(data, count: int) -> list[bytes]:
    """BYTES elements in JSON: strings (nested lists allowed), each an image in base64."""
    flat = list(_flattened(data)) if isinstance(data, list) else None
    if flat is None or not all(isinstance(element, str) for element in flat):
        _refuse("the input's 'data' must be a list of base64 strings (or send binary data)")
    if len(flat) != count:
        _refuse(f"the shape holds {count} images, 'data' {len(flat)}")
    images = []
    for index, element in enumerate(flat):
        try:
            images.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            _refuse(f"element {index} of 'data' is not base64")
    return images


def _flattened(data):
    for item in data:
        if isinstance(item, list):
            yield from _flattened(item)
        else:
            yield item


def _outputs(request: dict) -> Outputs:
    parameters = request.get("parameters") or {}
    request_id = request.get("id")
    if not isinstance(parameters, dict) or not isinstance(request_id, (str, type(None))):
        _refuse("'parameters' must be an object and 'id' a string")
    binary = parameters.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None:
        return Outputs(request_id, dict.fromkeys(OUTPUTS, binary))
    if not isinstance(asked, list) or not all(isinstance(output, dict) for output in asked):
        _refuse("'outputs' must be a list of objects")
    chosen = {}
    for output in asked:
        name = output.get("name")
        if name not in OUTPUTS:
            _refuse(f"no output named {str(name)[:40]!r}: the outputs are {', '.join(OUTPUTS)}")
        chosen[name] = (output.get("parameters") or {}).get("binary_data", binary) is True
    return Outputs(request_id, chosen)


def response(probabilities: np.ndarray, classes: list[str], outputs: Outputs, model: str, version: str):
    """The v2 response to one request whose images got these probabilities (N x classes, float32):
    a JSON str, or bytes (JSON header, then the binary outputs) with the header's length."""
    top = probabilities.argmax(axis=1)
    values = {
        "label": np.array([classes[index] for index in top.tolist()], dtype=object),
        "confidence": probabilities[np.arange(len(top)), top],
        "probabilities": probabilities,
    }
    tensors, raw = [], []
    for name, binary in outputs.binary.items():
        value = values[name]
        tensor = {"name": name, "datatype": OUTPUTS[name]["datatype"], "shape": list(value.shape)}
        if binary:
            raw.append(_serialized(value))
            tensor["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            tensor["data"] = value.ravel().tolist()
        tensors.append(tensor)
    answer = {"model_name": model, "model_version": version, "outputs": tensors}
    if outputs.request_id is not None:
        answer["id"] = outputs.request_id
    header = json.dumps(answer)
    if not raw:
        return header, None
    header = header.encode()
    return b"".join([header, *raw]), len(header)


def _serialized(value: np.ndarray) -> bytes:
    if value.dtype == object:  # BYTES: each element's length, then its UTF-8 bytes
        return b"".join(LENGTH_PREFIX.pack(len(text)) + text for text in (str(v).encode() for v in value.ravel()))
    return value.astype("<f4").tobytes()


def error_body(error: InvalidImage, element: int | None = None) -> str:
    """The v2 error answer: what was wrong, and with which image of the request."""
    where = f"element {element} of input '{INPUT['name']}': " if element is not None else ""
    return json.dumps({"error": where + str(error)})


def _described(tensor: dict) -> str:
    return f"{tensor['name']!r} of {tensor['datatype']}"


def _refuse(message: str):
    raise InvalidImage(REASON, message)
