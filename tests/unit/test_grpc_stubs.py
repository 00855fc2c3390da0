"""The committed gRPC stubs (serve/torchserve_grpc) are what grpcio-tools writes from the .proto
beside them: `make grpc-stubs` was run after any change."""

from serve.torchserve_grpc import HERE, generate


def test_the_committed_stubs_are_generated_from_the_proto():
    for name, text in generate().items():
        assert (HERE / name).read_text() == text, f"{name} is stale: run `make grpc-stubs`"
