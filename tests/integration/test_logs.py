"""TorchServe's logs under a flood of requests (deploy/torchserve/log4j2.xml; docs/operations.md, Logs):
every rollover makes an archive of its own, none replaces another, and each log's archives stay
within their bound. On a TorchServe of its own (ports TEST_PORT_BASE+70..74) whose log
configuration is the shipped one with its sizes made tiny and the access log on, so that a few
hundred requests roll the logs over many times within one day."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
import requests
from helpers import PORT_BASE

from harness.server import LocalServer
from serve.server import LOG_CONFIG

ROLL_BYTES, ARCHIVE_BYTES = 1024, 2048  # the rendered roll_size and archives_size
REQUESTS = 300  # about 90 bytes of access log each: some 25 rollovers, 200 bytes of archive each
LOGS = ("access_log", "model_log", "ts_log")
ARCHIVE_NAME = re.compile(r"(?P<log>\w+)\.(?P<date>\d{4}-\d{2}-\d{2})\.(?P<index>\d+)\.log\.gz")


def tiny_log_config(folder: Path) -> Path:
    """The shipped file with roll_size and archives_size in bytes, and the access log at INFO."""
    text = LOG_CONFIG.read_text()
    for pattern, replacement in (
        (r'(<Property name="roll_size">)[^<]*', rf"\g<1>{ROLL_BYTES} B"),
        (r'(<Property name="archives_size">)[^<]*', rf"\g<1>{ARCHIVE_BYTES} B"),
        (r'(<Logger name="ACCESS_LOG" level=)"warn"', r'\1"info"'),
    ):
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"{LOG_CONFIG}: no single match for {pattern}"
    rendered = folder / "log4j2.xml"
    rendered.write_text(text)
    return rendered


@pytest.fixture(scope="module")
def flooded_logs(tmp_path_factory, model_store) -> Path:
    """The logs folder of a TorchServe that answered REQUESTS pings numbered in their query string,
    once it stopped (its last compressions and deletions done)."""
    folder = tmp_path_factory.mktemp("log-rollover")
    log_config = tiny_log_config(folder)
    with LocalServer(folder / "server", model_store, PORT_BASE + 70, log_config=log_config) as server:
        headers = server.client.auth_headers("inference")
        with requests.Session() as session:
            for number in range(REQUESTS):
                response = session.get(f"{server.client.inference}/ping?request={number}", headers=headers, timeout=30)
                assert response.status_code == 200, response.text
    return server.paths.logs


def archives(logs: Path, log: str) -> list[Path]:
    return [path for path in logs.iterdir() if (match := ARCHIVE_NAME.fullmatch(path.name)) and match["log"] == log]


def test_each_rollover_of_a_day_makes_an_archive_of_its_own(flooded_logs):
    names = [ARCHIVE_NAME.fullmatch(path.name) for path in archives(flooded_logs, "access_log")]
    by_day: dict[str, set[int]] = {}
    for name in names:
        by_day.setdefault(name["date"], set()).add(int(name["index"]))
    assert max(len(indexes) for indexes in by_day.values()) >= 3, sorted(path.name for path in flooded_logs.iterdir())


def access_log_requests(logs: Path) -> list[int]:
    """The numbers of the pings the access log holds, its archives included, in order."""
    text = "".join(gzip.decompress(path.read_bytes()).decode() for path in archives(logs, "access_log"))
    text += (logs / "access_log.log").read_text()
    return sorted(int(number) for number in re.findall(r"/ping\?request=(\d+) ", text))


def test_no_archive_replaced_another(flooded_logs):
    """The requests the access log still holds are the latest ones, each once and none missing
    between them: what a rollover deleted is the oldest archive, never one written since."""
    numbers = access_log_requests(flooded_logs)
    assert numbers == list(range(numbers[0], REQUESTS)), numbers


@pytest.mark.parametrize("log", LOGS)
def test_each_logs_archives_stay_within_their_bound(flooded_logs, log):
    kept = sum(path.stat().st_size for path in archives(flooded_logs, log))
    assert 0 < kept <= ARCHIVE_BYTES


def test_the_bound_deleted_the_oldest_requests(flooded_logs):
    assert access_log_requests(flooded_logs)[0] > 0
