"""TorchServe's own gRPC inference API (`Ping`, `Predictions`: serve/torchserve_grpc) with the
inference key, as `python -m serve predict --grpc` calls it: the same answer as /predictions
(docs/api.md#grpc)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from container.keys import read_keys
from serve.config import grpc_address, properties
from serve.errors import GrpcError
from serve.torchserve_grpc.inference_pb2 import PredictionsRequest
from serve.torchserve_grpc.inference_pb2_grpc import InferenceAPIsServiceStub


def predictions_request(image: bytes, model: str = "cifar10", version: str | None = None) -> PredictionsRequest:
    """One image as TorchServe's Predictions takes it: the input `data` (a field name the handler reads)."""
    return PredictionsRequest(model_name=model, model_version=version or "", input={"data": image})


class GrpcClient:
    def __init__(self, address: str, key_file: Path | None = None):
        self.address = address
        self.key_file = key_file
        self.channel = grpc.insecure_channel(address)
        self.stub = InferenceAPIsServiceStub(self.channel)

    @classmethod
    def from_config(cls, config: Path, workdir: Path) -> GrpcClient:
        return cls(grpc_address(properties(config)), key_file=workdir / "key_file.json")

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The inference key as gRPC metadata, read from key_file.json at each call; none without keys."""
        keys = read_keys(self.key_file) if self.key_file is not None else {}
        return (("authorization", f"Bearer {keys['inference']}"),) if "inference" in keys else ()

    def predict(self, image: bytes, model: str = "cifar10", version: str | None = None, timeout: float = 30) -> dict:
        """/predictions' answer for `image`; raises GrpcError with the status and the server's message."""
        reply = self._call(self.stub.Predictions, predictions_request(image, model, version), timeout)
        return json.loads(reply.prediction)

    def ping(self, timeout: float = 10) -> dict:
        return json.loads(self._call(self.stub.Ping, empty_pb2.Empty(), timeout).health)

    def _call(self, method, request, timeout: float):
        try:
            return method(request, metadata=self.metadata(), timeout=timeout)
        except grpc.RpcError as error:
            details = error.details() or ""
            if error.code() == grpc.StatusCode.UNAVAILABLE and not details.startswith("{"):
                details += f" (nothing answers gRPC at {self.address}: is TorchServe running? `make serve`)"
            raise GrpcError(error.code().name, details) from None
