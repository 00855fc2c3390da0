"""The handler's options: model-config.yaml's `handler:` section, read once and checked at
`initialize()`, so that a misspelt key or a wrong value stops the worker with its reason instead of
being ignored. Packed beside cifar10_handler.py in the .mar."""

import dataclasses
import typing

# runtime -> the model file it serves
RUNTIME_FILES = {"torchscript": ".pt", "onnxruntime": ".onnx", "aotinductor": ".so"}


class HandlerConfigError(ValueError):
    """model-config.yaml's `handler:` section names a key the handler does not know, or a bad value."""


@dataclasses.dataclass(frozen=True)
class HandlerOptions:
    # torchscript (model.pt), onnxruntime (model.onnx, `python -m serve archive --format onnx`; CPU
    # only) or aotinductor (model.so, --format aotinductor)
    runtime: typing.Literal["torchscript", "onnxruntime", "aotinductor"] = "torchscript"
    # intra-op threads per worker (0: the runtime's default). On a small CPU the Java frontend needs
    # a core too, and oversubscribed threads spin; ONNX Runtime gets as many (at least 1).
    torch_threads: int = 0
    # serve the frozen TorchScript module, or the export as it is (to measure what freezing buys)
    freeze: bool = True
    # on a GPU worker, decode 32 x 32 JPEGs with nvJPEG, other files on the CPU
    gpu_decode: bool = True
    # only batches with at least this many such JPEGs go to nvJPEG (smaller ones: the CPU)
    gpu_decode_min_batch: int = 1

    @classmethod
    def from_section(cls, section) -> "HandlerOptions":
        """Raises HandlerConfigError for an unknown key, a value of the wrong type or out of range."""
        section = section or {}
        if not isinstance(section, dict):
            raise HandlerConfigError(f"model-config `handler:` must be a mapping, not {section!r}")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(section) - set(fields))
        if unknown:
            raise HandlerConfigError(
                f"model-config `handler:` has unknown keys {unknown}; the handler knows {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        for name, value in section.items():
            kind = hints[name]
            if typing.get_origin(kind) is typing.Literal:
                if value not in typing.get_args(kind):
                    raise HandlerConfigError(f"handler: {name}: {value!r} is not one of {list(typing.get_args(kind))}")
            elif type(value) is not kind:  # bool is not int here: `torch_threads: true` is a mistake
                raise HandlerConfigError(f"handler: {name}: {value!r} is not a {kind.__name__}")
        options = cls(**section)
        if options.torch_threads < 0 or options.gpu_decode_min_batch < 1:
            raise HandlerConfigError("handler: torch_threads must be >= 0 and gpu_decode_min_batch >= 1")
        return options
