"""TorchServe handler for the CIFAR-10 SimpleCNN: image bytes in, the Flask service's JSON answer out.

Self-contained on purpose: it runs inside the TorchServe worker, which has this file, the modules
beside it in the .mar (cifar10_images, cifar10_runtimes, cifar10_torch_runtimes, cifar10_answers,
cifar10_metrics), the model (TorchScript model.pt, model.onnx run by ONNX Runtime, or an AOTInductor
model.so) and index_to_name.json, and nothing of this repository. The model normalizes pixels
itself, so the handler only decodes images.

A plain class, not TorchServe's BaseHandler (which imports torch): an ONNX archive is served by a
worker that has no torch at all. torch is imported only by the torch runtimes.

Each request of a batch stands alone: one that is not a decodable image gets HTTP 400 and a JSON
error naming the problem, the others of its batch get their predictions, the worker stays up.
"""

import contextlib
import ctypes
import json
import os
import time

import numpy as np
from cifar10_answers import error_body, probabilities_of, probability_answers
from cifar10_images import InvalidImage, request_payload
from cifar10_metrics import BatchMetrics, timed
from cifar10_runtimes import load_runtime

STATUS_PHRASES = {400: "Bad Request", 503: "Service Unavailable"}
GPU_MEMORY_EVERY = 1000  # batches between two readings of the worker's GPU memory
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default threshold, kept fixed


def keep_large_blocks_returnable() -> None:
    """Large request bodies must not stay in the worker's memory after their batch. glibc serves a
    block of 128 KiB or more with its own mmap (returned to the system when freed) until one such
    block is freed; then it raises that threshold, and later large blocks come from the heap,
    which keeps them once freed. Fixing the threshold (mallopt) keeps every large block returnable.
    Nothing to do where the C library is not glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class Cifar10Handler:
    """preprocess (decode a batch) -> inference (one forward pass) -> postprocess (JSON per request)."""

    def __init__(self):
        self.context = None
        self.runtime = None
        self.classes = []

    def initialize(self, context):
        # model-config.yaml's `handler:` section. torch_threads: intra-op threads per worker (on a
        # small CPU the Java frontend needs a core too, and oversubscribed threads spin); ONNX Runtime
        # gets as many. freeze: serve the frozen module (default), or the export as it is (to measure
        # what freezing buys). runtime: torchscript (default, model.pt), onnxruntime (model.onnx,
        # `python -m serve archive --format onnx`; CPU only) or aotinductor (model.so, --format
        # aotinductor). gpu_decode: on a GPU worker, decode 32 x 32 JPEGs with nvJPEG (default), other
        # files on the CPU; gpu_decode_min_batch: only batches with at least this many such JPEGs
        # (smaller ones: the CPU).
        self.context = context
        keep_large_blocks_returnable()
        options = (context.model_yaml_config or {}).get("handler", {})
        mapping = _archive_json(context, "index_to_name.json")
        self.classes = [mapping[str(i)] for i in range(len(mapping))]
        self.batch_metrics = BatchMetrics(context, self.classes)
        self.batch_metrics.worker_started(_archive_json(context, "metadata.json"))  # the run's, packed by serve archive
        self.runtime = load_runtime(context, options)
        self.runtime.warm_up(int(context.system_properties.get("batch_size") or 1))
        self.batches = 0
        self.record_gpu_memory()

    def record_gpu_memory(self):
        """This worker's GPU memory (what its CUDA caching allocator holds), as cifar10_gpu_memory_bytes."""
        reserved = self.runtime.gpu_memory_bytes()
        if reserved is not None:
            self.batch_metrics.gpu_memory(reserved)

    def handle(self, data, context):
        """TorchServe's entry point, per batch; records HandlerTime as TorchServe's own handlers do."""
        started = time.time()
        self.context = context
        output = self.postprocess(self.inference(self.preprocess(data)))
        context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
        return output

    @timed("cifar10_decode_seconds")
    def preprocess(self, requests):
        """Decodes each request; returns the batch of good images and one error (or None) per request."""
        payloads, errors = [], []
        for index, row in enumerate(requests):
            try:  # TorchServe's own handlers would explain (or fail) the whole batch of a request to /explanations
                if self.context.get_request_header(index, "explain") == "True":
                    raise InvalidImage(
                        "no_explanations", "this model serves predictions only: POST the image to /predictions"
                    )
                payloads.append(request_payload(row, self._text_fields(index, row)))
                errors.append(None)
            except InvalidImage as error:
                payloads.append(None)
                errors.append(error.detached())
        return self.runtime.decode(payloads, errors), errors

    def _text_fields(self, index, row) -> set:
        """Form fields sent as text: TorchServe gives an uploaded file its content type, a text field none."""
        if not isinstance(row, dict):
            return set()
        return {
            name
            for name in row
            if name != "body" and not (self.context.get_request_header(index, name) or {}).get("content-type")
        }

    @timed("cifar10_inference_seconds")
    def inference(self, data):
        batch, errors = data
        if batch is None:
            return None, errors
        return self.runtime.logits(batch), errors

    def postprocess(self, data):
        """One JSON body per request, in request order: an answer, or the error with its status (400, 503)."""
        logits, errors = data
        self.batches += 1
        if self.batches % GPU_MEMORY_EVERY == 0:
            self.record_gpu_memory()
        probabilities = probabilities_of(logits) if logits is not None else np.empty((0, len(self.classes)))
        self.batch_metrics.count(errors, probabilities)
        answers = iter(probability_answers(probabilities, self.classes))
        responses = []
        for index, error in enumerate(errors):
            self.context.set_response_content_type(index, "application/json")
            if error is None:
                responses.append(next(answers))
            else:
                self.context.set_response_status(error.status, STATUS_PHRASES[error.status], index)
                if error.status == 503:
                    self.context.set_response_header(index, "Retry-After", "1")
                responses.append(error_body(error))
        return responses


def _archive_json(context, name: str):
    """A JSON file of the model archive, which `serve archive` packs."""
    path = os.path.join(context.system_properties.get("model_dir"), name)
    if not os.path.isfile(path):
        raise RuntimeError(f"{name} is missing from the model archive: build it with `python -m serve archive`")
    with open(path) as file:
        return json.load(file)
