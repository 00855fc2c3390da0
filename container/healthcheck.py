"""Health checks: exit 0 when the model has a READY worker, as TorchServe's describe says, and (with
--predict) a prediction of a small image answers; exit 1 otherwise.

    python -m container.healthcheck [--management http://127.0.0.1:8081] [--model cifar10] [--key-file key_file.json]
                                [--predict [--inference http://127.0.0.1:8080]] [--drain-file PATH]
                                [--live] [--timeout 4] [--inference-key-file PATH]

Three callers: the serve image's HEALTHCHECK, the Kubernetes probes (deploy/k8s) and the fleet
drill's load balancer (fleet/). /ping alone is not enough: TorchServe answers Healthy while every
worker is dead. Only the startup probe sends a prediction (--predict): a prediction waits in the
clients' queue, so under overload it would time out and take a busy pod out of service (readiness)
or restart it (liveness). Readiness asks the management API for a READY worker, which no queue
delays; with --drain-file it fails while that file exists (`python -m container.drain` writes it).
Liveness (--live) asks only that the frontend answers the management API, READY worker or not
(TorchServe restarts dead workers itself). --timeout bounds the whole check, every call in it.

Standard library only: the serve image runs it with serve/ and nothing else of this repository.
It sends the management key from key_file.json. TorchServe wrote that file, so a refused key is an
expired one: the check then has TorchServe make a new management key with the API key and asks
again, which keeps a working management key in key_file.json for operators too. Without the file
(token authorization off, as in the Kubernetes pod) it sends no key. With --inference-key-file it
also copies the inference key alone there (key_file.json's format, mode 600) whenever it changed:
what a client that needs no other key reads (the serve image's HEALTHCHECK writes it for Compose's
load test, which never sees key_file.json).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from container.keys import read_keys, write_secret

# TorchServe's APIs as config.properties puts them (the pod's too: deploy/k8s/base/config.properties).
INFERENCE = "http://127.0.0.1:8080"
MANAGEMENT = "http://127.0.0.1:8081"


def call(url: str, key: str | None, method: str = "GET", body: bytes | None = None, timeout: float = 4) -> bytes:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is not None:  # else urllib sends a form's content type, and TorchServe parses the image as a form
        headers["Content-Type"] = "image/png"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=max(timeout, 0.1)) as response:
        return response.read()


def probe_png(size: int = 32) -> bytes:
    """A size x size grey PNG, made with zlib alone (the image has no imaging library on this path)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * (3 * size) for _ in range(size))  # filter 0, then RGB pixels
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def ready_workers(args) -> int:
    url, key = f"{args.management}/models/{args.model}", read_keys(args.key_file).get("management")
    answer = json.loads(call(url, key, timeout=args.deadline - time.monotonic()))
    return sum(worker["status"] == "READY" for version in answer for worker in version["workers"])


def predicted_class(args) -> str:
    url = f"{args.inference}/predictions/{args.model}"
    key, left = read_keys(args.key_file).get("inference"), args.deadline - time.monotonic()
    answer = json.loads(call(url, key, method="POST", body=probe_png(), timeout=left))
    return answer["prediction"]


def copy_inference_key(key_file: Path, copy: Path) -> None:
    """The inference key of `key_file` alone into `copy`, when it is not there already."""
    key = read_keys(key_file).get("inference")
    if key is not None and read_keys(copy).get("inference") != key:
        write_secret(copy, json.dumps({"inference": {"key": key}}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--management", default=MANAGEMENT)
    parser.add_argument("--inference", default=INFERENCE)
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    parser.add_argument("--predict", action="store_true", help="also require a prediction of a small image")
    parser.add_argument("--drain-file", type=Path, help="fail while this file exists (the replica is draining)")
    parser.add_argument("--live", action="store_true", help="pass when the frontend answers, READY worker or not")
    parser.add_argument("--timeout", type=float, default=4, help="seconds for the whole check (default: 4)")
    parser.add_argument("--inference-key-file", type=Path, help="also copy the inference key alone there (mode 600)")
    args = parser.parse_args(argv)
    args.deadline = time.monotonic() + args.timeout
    if args.drain_file is not None and args.drain_file.exists():
        print(f"draining: {args.drain_file} exists")
        return 1
    try:
        if args.inference_key_file is not None:
            copy_inference_key(args.key_file, args.inference_key_file)
        try:
            ready = ready_workers(args)
        except urllib.error.HTTPError as error:
            api_key = read_keys(args.key_file).get("API")
            if error.code != 401 or api_key is None:
                raise
            call(f"{args.management}/token?type=management", api_key, "POST", timeout=args.deadline - time.monotonic())
            ready = ready_workers(args)
        prediction = predicted_class(args) if ready and args.predict else None
    except (OSError, ValueError, KeyError, TypeError) as error:  # no answer, an HTTP error, or an unexpected body
        print(f"unhealthy: {error}")
        return 1
    print(f"{args.model}: {ready} READY worker(s)" + (f", predicts {prediction!r}" if prediction else ""))
    return 0 if ready or args.live else 1


if __name__ == "__main__":
    sys.exit(main())
