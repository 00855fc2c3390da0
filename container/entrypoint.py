"""The serving image's main process: TorchServe in the foreground, stopped cleanly by SIGTERM.

    python -m container.entrypoint [torchserve's arguments, e.g. --ts-config ... --model-store ...]

`torchserve --foreground` starts TorchServe's Java frontend and waits for it, but handles no
signal: on `docker stop` it dies at once, and the frontend goes down with the container (killed,
not stopped) in the middle of whatever it was answering. Here SIGTERM and SIGINT run
`torchserve --stop` instead, which asks the frontend to shut down and waits for it.

Standard library only: the serve image holds serve/ and nothing else of this repository.
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    server = subprocess.Popen(["torchserve", "--foreground", *argv])
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            print(f"{signal.Signals(signum).name}: stopping TorchServe", flush=True)
            subprocess.run(["torchserve", "--stop", "--foreground"], check=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
