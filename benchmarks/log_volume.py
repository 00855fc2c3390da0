"""Bytes TorchServe writes to its logs for each request, by kind of request: what a flood costs the disk.

    python -m benchmarks.log_volume --run models/latest [--requests 2000] [--log-config FILE ... | builtin]

For each log configuration (default: the shipped deploy/torchserve/log4j2.xml; `builtin`:
TorchServe's own), a TorchServe of its own (harness.server.LocalServer: the repository's
config.properties, ports from --port-base) is sent --requests requests of each kind, one at a time
(a batch of one each: the most lines per request). The growth of every file under the server's
logs/ folder, archives included, divided by the requests, is the figure: the workers' output is in
it, since the frontend copies what a worker prints into model_log and ts_log. Prints a Markdown
table: a count of bytes, not a timing, which the machine's load does not change (so it is stated
on the page, not judged: harness/other_work.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import HelpFormatter, command_line
from harness.other_work import OtherWork
from harness.report import Report
from harness.server import LocalServer
from repo import REPO
from serve.archive import build_archive
from serve.client import sample_jpeg
from serve.server import LOG_CONFIG

COLUMNS = ["log configuration", "request", "answers", "bytes per request"]
# kind -> (the request's body, the API whose key it carries: None for none)
KINDS = {
    "prediction": (sample_jpeg(), "inference"),
    "not an image": (b"not an image", "inference"),
    "no key": (sample_jpeg(), None),
}
SETTLE_SECONDS = 2  # for the frontend to write what the workers printed


def log_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(server: LocalServer, requests: int) -> list[dict]:
    """One row per kind: the answers' statuses and the log bytes each request added."""
    rows = []
    url = f"{server.client.inference}/predictions/cifar10"
    for kind, (body, api) in KINDS.items():
        headers = {**(server.client.auth_headers(api) if api else {}), "Content-Type": "image/jpeg"}
        time.sleep(SETTLE_SECONDS)
        before = log_bytes(server.paths.logs)
        statuses = Counter(
            server.client.session.post(url, data=body, headers=headers, timeout=30).status_code for _ in range(requests)
        )
        time.sleep(SETTLE_SECONDS)
        added = log_bytes(server.paths.logs) - before
        answers = ", ".join(f"{count:,} x {status}" for status, count in sorted(statuses.items()))
        rows.append({"request": kind, "answers": answers, "bytes per request": added / requests})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.log_volume", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--run", type=Path, default=REPO / "models" / "latest", help="the trained run")
    parser.add_argument("--requests", type=int, default=2000, help="requests of each kind")
    parser.add_argument("--port-base", type=int, default=18190, help="TorchServe's ports: +0..4")
    parser.add_argument(
        "--log-config", nargs="+", default=[str(LOG_CONFIG)], help="log4j2 files, or `builtin` for TorchServe's own"
    )
    args = parser.parse_args(argv)
    rows = []
    with (
        OtherWork(exempt="a count of bytes, which the machine's load does not change") as other_work,
        tempfile.TemporaryDirectory(prefix="log-volume-") as scratch,
    ):
        store = Path(scratch) / "model-store"
        build_archive(args.run, store)
        for index, name in enumerate(args.log_config):
            log_config = None if name == "builtin" else Path(name).resolve()
            workdir = Path(scratch) / f"server-{index}"
            with LocalServer(workdir, store, args.port_base, log_config=log_config) as server:
                rows += [{"log configuration": name, **row} for row in measure(server, args.requests)]
    report = Report("Log bytes per request", command_line("benchmarks.log_volume", argv), other_work)
    print(report.table(rows, COLUMNS).markdown())


if __name__ == "__main__":
    main()
