"""Python stubs of TorchServe's own gRPC inference API (`Ping`, `Predictions`, ...), generated from
TorchServe 0.12.0's inference.proto (copied here unchanged, Apache-2.0) by grpcio-tools and
committed, so that `python -m serve predict --grpc` needs only grpcio and protobuf.
`python -m serve.torchserve_grpc` (`make grpc-stubs`) writes them again; a unit test checks that the
committed ones are what it writes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate() -> dict[str, str]:
    """The stubs' text by file name, as grpcio-tools writes them for PROTO (imports as
    `serve.torchserve_grpc.*`); google/rpc/status.proto comes from googleapis-common-protos."""
    import google.rpc  # googleapis-common-protos: the .proto files beside its modules

    rpc_root = Path(next(iter(google.rpc.__path__))).parent.parent
    root = HERE.parent.parent
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{root}",
                f"-I{rpc_root}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(PROTO.relative_to(root)),
            ],
            check=True,
            cwd=root,
        )
        return {name: (Path(out) / HERE.relative_to(root) / name).read_text() for name in GENERATED}
