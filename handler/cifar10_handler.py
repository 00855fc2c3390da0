"""TorchServe handler for the CIFAR-10 SimpleCNN: image bytes in, the Flask service's JSON answer out.

Self-contained on purpose: it runs inside the TorchServe worker, which has this file,
cifar10_images.py, the model (TorchScript model.pt, or model.onnx run by ONNX Runtime) and
index_to_name.json from the .mar, and nothing of this repository. The model normalizes pixels
itself, so the handler only decodes images.

Each request of a batch stands alone: one that is not a decodable image gets HTTP 400 and a JSON
error naming the problem, the others of its batch get their predictions, the worker stays up.
"""

import torch
from cifar10_images import (
    IMAGE_SIZE,
    InvalidImage,
    OnnxModel,
    answer_bodies,
    decode_batch,
    error_body,
    gpu_jpeg_decoder,
    inference_model,
    request_payload,
)
from cifar10_metrics import BatchMetrics, timed
from ts.torch_handler.base_handler import BaseHandler

# model-config `handler: runtime:` -> the model file it serves
RUNTIME_FILES = {"torchscript": ".pt", "onnxruntime": ".onnx", "aotinductor": ".so"}


def aot_inductor_model(runner):
    """An AOTInductor library's runner called like the TorchScript module: it wants contiguous
    (N x C x H x W) pixels, and may answer a list of outputs."""

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        logits = runner(pixels.contiguous())
        return logits[0] if isinstance(logits, (list, tuple)) else logits

    return forward


GPU_MEMORY_EVERY = 1000  # batches between two readings of the worker's GPU memory


class Cifar10Handler(BaseHandler):
    """preprocess (decode a batch) -> inference (one forward pass) -> postprocess (JSON per request)."""

    def initialize(self, context):
        # model-config.yaml's `handler:` section. torch_threads: intra-op threads per worker (on a
        # small CPU the Java frontend needs a core too, and oversubscribed threads spin); ONNX Runtime
        # gets as many. freeze: serve the frozen module (default), or the export as it is (to measure
        # what freezing buys). runtime: torchscript (default, model.pt), onnxruntime (model.onnx,
        # `python -m serve archive --format onnx`; CPU only) or aotinductor (model.so, --format
        # aotinductor). gpu_decode: on a GPU worker, decode 32 x 32 JPEGs with nvJPEG (default), other
        # files on the CPU; gpu_decode_min_batch: only batches with at least this many such JPEGs
        # (smaller ones: the CPU).
        options = (context.model_yaml_config or {}).get("handler", {})
        threads = int(options.get("torch_threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        runtime = options.get("runtime", "torchscript")
        expected_suffix = RUNTIME_FILES.get(runtime)
        serialized = context.manifest["model"].get("serializedFile", "")
        if expected_suffix is None or not serialized.endswith(expected_suffix):
            raise RuntimeError(
                f"model-config runtime {runtime!r} cannot serve {serialized!r}: expected one of "
                + ", ".join(f"{name} with a {suffix} file" for name, suffix in RUNTIME_FILES.items())
            )
        super().initialize(context)  # loads the model file, reads index_to_name.json
        if not self.mapping:
            raise RuntimeError("index_to_name.json is missing from the model archive")
        self.classes = [self.mapping[str(i)] for i in range(len(self.mapping))]
        self.batch_metrics = BatchMetrics(context, self.classes)
        if runtime == "onnxruntime":  # replaces BaseHandler's session, which takes a thread per core
            self.model = OnnxModel(self.model_pt_path, threads=threads or 1)
        elif runtime == "aotinductor":  # BaseHandler loaded the library (model-config pt2.export.aot_compile)
            self.model = aot_inductor_model(self.model)
        else:
            self.model = inference_model(self.model, freeze=options.get("freeze", True))
        # The first calls build and optimize the execution plan: pay for them here, not on a request.
        # A GPU runs a forward pass in well under a millisecond: there every batch size is met once here
        # (a new shape's first call on a GPU picks kernels), so that a worker just scaled up answers at once.
        largest = int(context.system_properties.get("batch_size") or 1)
        sizes = (1, 1, *range(1, largest + 1), largest) if self.device.type == "cuda" else (1, 1, largest, largest)
        with torch.inference_mode():
            for size in sizes:
                self.model(torch.zeros(size, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=self.device))
        self.jpeg_decoder = gpu_jpeg_decoder(self.device) if options.get("gpu_decode", True) else None
        self.gpu_decode_min_batch = int(options.get("gpu_decode_min_batch", 1))
        self.batches = 0
        self.record_gpu_memory()

    def record_gpu_memory(self):
        """This worker's GPU memory (what its CUDA caching allocator holds), as cifar10_gpu_memory_bytes."""
        if self.device.type == "cuda":
            self.batch_metrics.gpu_memory(torch.cuda.memory_reserved(self.device))

    @timed("cifar10_decode_seconds")
    def preprocess(self, requests):
        """Decodes each request; returns the batch of good images and one error (or None) per request."""
        payloads, errors = [], []
        for index, row in enumerate(requests):
            try:
                if self.context.get_request_header(index, "explain") == "True":
                    raise InvalidImage(
                        "no_explanations", "this model serves predictions only: POST the image to /predictions"
                    )
                payloads.append(request_payload(row, self._text_fields(index, row)))
                errors.append(None)
            except InvalidImage as error:
                payloads.append(None)
                errors.append(error)
        batch = decode_batch(payloads, errors, self.device, self.jpeg_decoder, self.gpu_decode_min_batch)
        return batch, errors

    def _is_explain(self):
        """Never: BaseHandler would explain the whole batch when its first request came to
        /explanations (and fail every request of it); such a request is refused alone in preprocess."""
        return False

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
    def inference(self, data, *args, **kwargs):
        batch, errors = data
        if batch is None:
            return None, errors
        with torch.inference_mode():
            return self.model(batch).cpu(), errors

    def postprocess(self, data):
        """One JSON body per request, in request order: an answer, or the error with HTTP 400."""
        logits, errors = data
        self.batches += 1
        if self.batches % GPU_MEMORY_EVERY == 0:
            self.record_gpu_memory()
        self.batch_metrics.count(errors, logits.argmax(1).tolist() if logits is not None else [])
        answers = iter(answer_bodies(logits, self.classes) if logits is not None else ())
        responses = []
        for index, error in enumerate(errors):
            self.context.set_response_content_type(index, "application/json")
            if error is None:
                responses.append(next(answers))
            else:
                self.context.set_response_status(400, "Bad Request", index)
                responses.append(error_body(error))
        return responses
