"""The runtimes that turn a batch of pixels into logits, chosen by model-config's `handler: runtime:`.

A runtime decodes a batch of request payloads the way it wants its input (`decode`), computes the
logits as a numpy array (`logits`), and warms itself up. ONNX Runtime lives here and needs no torch:
an ONNX archive serves from an image that has no torch at all. The torch runtimes (TorchScript,
AOTInductor, on the CPU or a GPU) are in cifar10_torch_runtimes.py, imported only when asked for.
"""

import os

import numpy as np
from cifar10_images import IMAGE_SIZE, decode_payloads
from cifar10_options import RUNTIME_FILES, HandlerOptions


class OnnxRuntime:
    """An ONNX Runtime session on the CPU: N x 3 x 32 x 32 uint8 pixels in (any memory layout),
    float32 logits out. onnxruntime is imported here and only here: archives that serve
    TorchScript do not need it."""

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixels) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(pixels)})[0]

    def decode(self, payloads: list, errors: list) -> np.ndarray | None:
        return decode_payloads(payloads, errors)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self(batch)

    def warm_up(self, largest_batch: int) -> None:
        """The first calls build and optimize the execution plan: paid here, not by a request."""
        for size in (1, 1, largest_batch, largest_batch):
            self(np.zeros((size, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))

    def gpu_memory_bytes(self) -> None:
        return None


def load_runtime(context, options: HandlerOptions):
    """The runtime that the handler's options ask for, loaded from the archive's model file. Raises
    RuntimeError when the runtime and the model file do not match."""
    runtime = options.runtime
    expected_suffix = RUNTIME_FILES[runtime]
    serialized = context.manifest["model"].get("serializedFile", "")
    if not serialized.endswith(expected_suffix):
        raise RuntimeError(
            f"model-config runtime {runtime!r} cannot serve {serialized!r}: expected one of "
            + ", ".join(f"{name} with a {suffix} file" for name, suffix in RUNTIME_FILES.items())
        )
    path = os.path.join(context.system_properties.get("model_dir"), serialized)
    threads = options.torch_threads
    if runtime == "onnxruntime":
        return OnnxRuntime(path, threads=threads or 1)
    from cifar10_torch_runtimes import load_torch_runtime

    return load_torch_runtime(runtime, path, context.system_properties.get("gpu_id"), threads, options)
