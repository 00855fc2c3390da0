"""TorchServe handler for the CIFAR-10 SimpleCNN: image bytes in, the Flask service's JSON answer out.

Self-contained on purpose: it runs inside the TorchServe worker, which has this file, the modules
beside it in the .mar (cifar10_images, cifar10_runtimes, cifar10_torch_runtimes, cifar10_answers,
cifar10_metrics, cifar10_v2 with cifar10_v2.json), the model (TorchScript model.pt, model.onnx run by ONNX Runtime, or an AOTInductor
model.so) and index_to_name.json, and nothing of this repository. The model normalizes pixels
itself, so the handler only decodes images.

A plain class, not TorchServe's BaseHandler (which imports torch): an ONNX archive is served by a
worker that has no torch at all. torch is imported only by the torch runtimes.

Each request of a batch stands alone: one that is not a decodable image gets HTTP 400 and a JSON
error naming the problem, the others of its batch get their predictions, the worker stays up. A
request of the Open Inference Protocol v2 (cifar10_v2.py) is one request of a batch like the others;
it may carry several images, and one bad image fails its request (400, naming the image), not the
batch.
"""

import contextlib
import ctypes
import json
import os
import time

import cifar10_v2
import numpy as np
from cifar10_answers import error_body, prediction_bodies, probabilities
from cifar10_images import InvalidImage, request_payload
from cifar10_metrics import BatchMetrics, timed
from cifar10_options import HandlerOptions
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
        options = HandlerOptions.from_section((context.model_yaml_config or {}).get("handler"))  # before any work
        self.context = context
        keep_large_blocks_returnable()
        mapping = _archive_json(context, "index_to_name.json")
        self.classes = [mapping[str(i)] for i in range(len(mapping))]
        self.batch_metrics = BatchMetrics(context, self.classes)
        self.batch_metrics.worker_started(_archive_json(context, "metadata.json"))  # the run's, packed by serve archive
        self.runtime = load_runtime(context, options)
        self.max_images = int(context.system_properties.get("batch_size") or 1)  # per v2 request
        self.runtime.warm_up(self.max_images)
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
        """Decodes each request's images; returns the batch of good images, one error (or None) per
        image, and per request a job: its images' places in that list, whether it is a v2 request,
        and what it asked back (v2; None for a v2 request refused before its images were read).
        (Tuples: TorchServe wants the handler's module to define a single class.)"""
        payloads, errors, jobs = [], [], []
        for index, row in enumerate(requests):
            headers = self.context.get_all_request_header(index)
            start, v2, outputs = len(payloads), cifar10_v2.is_v2(headers), None
            try:  # TorchServe's own handlers would explain (or fail) the whole batch of a request to /explanations
                if headers.get("explain") == "True":
                    raise InvalidImage(
                        "no_explanations", "this model serves predictions only: POST the image to /predictions"
                    )
                if v2:
                    images, outputs = cifar10_v2.parse(_body(row), headers, self.max_images)
                else:
                    images = [request_payload(row, self._text_fields(index, row))]
                payloads.extend(images)
                errors.extend([None] * len(images))
            except InvalidImage as error:
                payloads.append(None)
                errors.append(error.detached())
            jobs.append((range(start, len(payloads)), v2, outputs))
        return self.runtime.decode(payloads, errors), errors, jobs

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
        batch, errors, jobs = data
        return (None if batch is None else self.runtime.logits(batch)), errors, jobs

    def postprocess(self, data):
        """One body per request, in request order: an answer, or the error with its status (400, 503)."""
        logits, errors, jobs = data
        self.batches += 1
        if self.batches % GPU_MEMORY_EVERY == 0:
            self.record_gpu_memory()
        scores = probabilities(logits) if logits is not None else np.zeros((0, len(self.classes)), np.float32)
        # the decoded images are the batch's rows, in order: image i is row rows[i]
        rows = np.cumsum([error is None for error in errors]) - 1
        failed = [
            next(((j, errors[i]) for j, i in enumerate(slots) if errors[i] is not None), None) for slots, _, _ in jobs
        ]
        answered = [rows[slots].tolist() if failure is None else [] for (slots, _, _), failure in zip(jobs, failed)]
        plain = [r for (_, v2, _), job_rows in zip(jobs, answered) if not v2 for r in job_rows]
        bodies = iter(prediction_bodies(scores[plain], self.classes))
        self.batch_metrics.count(
            [failure and failure[1] for failure in failed], scores[[r for rows_ in answered for r in rows_]]
        )
        return [
            self._answer(index, v2, outputs, failure, scores[job_rows] if v2 else bodies)
            for index, ((_, v2, outputs), failure, job_rows) in enumerate(zip(jobs, failed, answered))
        ]

    def _answer(self, index, v2, outputs, failure, answer):
        """Request `index`'s body, with its status and headers set: its failure (the index of the
        image that failed, and the error), else its answer: from `answer`, the iterator of the batch's
        /predictions bodies, or for a v2 request the probabilities of its images."""
        self.context.set_response_content_type(index, "application/json")
        if failure is not None:
            element, error = failure
            self.context.set_response_status(error.status, STATUS_PHRASES[error.status], index)
            if error.status == 503:
                self.context.set_response_header(index, "Retry-After", "1")
            if not v2:
                return error_body(error)
            return cifar10_v2.error_body(error, element if outputs is not None else None)
        if not v2:
            return next(answer)
        version = self.context.manifest["model"]["modelVersion"]
        body, header_length = cifar10_v2.response(answer, self.classes, outputs, self.context.model_name, version)
        if header_length is not None:
            self.context.set_response_content_type(index, "application/octet-stream")
            self.context.set_response_header(index, "Inference-Header-Content-Length", str(header_length))
        return body


def _body(row):
    """A v2 request's body: the raw body (the worker hands it over parsed when its type was JSON)."""
    if not isinstance(row, dict) or "body" not in row:
        raise InvalidImage(cifar10_v2.REASON, "send the v2 request as the body, not as a form")
    return row["body"]


def _archive_json(context, name: str):
    """A JSON file of the model archive, which `serve archive` packs."""
    path = os.path.join(context.system_properties.get("model_dir"), name)
    if not os.path.isfile(path):
        raise RuntimeError(f"{name} is missing from the model archive: build it with `python -m serve archive`")
    with open(path) as file:
        return json.load(file)
