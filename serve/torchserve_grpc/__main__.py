"""Writes the stubs beside inference.proto (`make grpc-stubs`)."""

from serve.torchserve_grpc import HERE, generate

for name, text in generate().items():
    (HERE / name).write_text(text)
    print(f"wrote {HERE / name}")
