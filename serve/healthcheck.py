"""Container health check: exit 0 when the model has a READY worker, as TorchServe's describe says.

    python -m serve.healthcheck [--management http://127.0.0.1:8081] [--model cifar10] [--key-file key_file.json]

Standard library only: the serve image runs it every 30 s with serve/ and nothing else of this
repository. It sends the management key from key_file.json. TorchServe wrote that file, so a
refused key is an expired one: the check then has TorchServe make a new management key with the
API key and asks again, which keeps a working management key in key_file.json for operators too.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from serve.keys import read_keys


def call(url: str, key: str | None, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def ready_workers(args) -> int:
    answer = json.loads(call(f"{args.management}/models/{args.model}", read_keys(args.key_file).get("management")))
    return sum(worker["status"] == "READY" for version in answer for worker in version["workers"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--management", default="http://127.0.0.1:8081")
    parser.add_argument("--model", default="cifar10")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    args = parser.parse_args(argv)
    try:
        try:
            ready = ready_workers(args)
        except urllib.error.HTTPError as error:
            api_key = read_keys(args.key_file).get("API")
            if error.code != 400 or api_key is None:
                raise
            call(f"{args.management}/token?type=management", api_key, method="POST")
            ready = ready_workers(args)
    except (OSError, ValueError, KeyError) as error:  # no answer, an HTTP error, or an unexpected body
        print(f"unhealthy: {error}")
        return 1
    print(f"{args.model}: {ready} READY worker(s)")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
