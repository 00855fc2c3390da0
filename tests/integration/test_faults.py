"""Faults the service must survive, on a TorchServe of its own (ports TEST_PORT_BASE+5..+9) serving
the test run's cifar10.mar (see reliability/drills.py). `make reliability` runs the same drills with
more load and prints the figures."""

import socket
import threading
import time

import pytest
from helpers import PORT_BASE

from reliability.drills import (
    BROKEN_AT_START,
    SLEEPY_QUEUE,
    FaultServer,
    broken_archive_at_start,
    flood_a_full_queue_of_large_bodies,
    kill_worker_under_load,
    outlast_response_timeout,
    overflow_queue,
    register_broken_archives,
    restart,
)
from reliability.rules import archive_problems, kill_problems, overflow_problems, restart_problems, timeout_problems
from reliability.sleepy_handler import COMPUTES as SLEEPY_COMPUTES


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory, model_store):
    with FaultServer(model_store / "cifar10.mar", tmp_path_factory.mktemp("fault-server"), PORT_BASE + 5) as server:
        yield server


def test_a_broken_archive_in_the_store_at_start_is_skipped_with_a_clear_error(fault_server):
    seen = broken_archive_at_start(fault_server)
    assert seen["models"] == ["cifar10", "sleepy"]
    assert f"Failed to load model: {BROKEN_AT_START}" in seen["logged"] and "ZLIB" in seen["logged"]


def test_kill_9_of_a_worker_under_load_loses_only_its_requests_in_flight(fault_server):
    seen = kill_worker_under_load(fault_server, threads=8)
    assert not kill_problems(seen), seen


def test_a_full_job_queue_answers_503_and_recovers(fault_server):
    seen = overflow_queue(fault_server.client, "sleepy", b"0.5", burst=4 * (SLEEPY_QUEUE + 1))
    assert not overflow_problems("sleepy", seen) and 503 in seen["statuses"], seen
    assert seen["statuses"][200] >= SLEEPY_QUEUE + 1, seen  # the one served and those queued
    assert seen["503_message"]


def test_a_full_queue_of_large_bodies_answers_every_request(fault_server):
    seen = flood_a_full_queue_of_large_bodies(fault_server)
    assert seen["requests"] > 0 and set(seen["statuses"]) <= {200, 503}, seen
    assert seen["statuses"].get(200, 0) > 0 and seen["worker_unchanged"], seen


def test_a_request_outlasting_response_timeout_fails_clearly_and_the_worker_is_replaced(fault_server):
    seen = outlast_response_timeout(fault_server)
    assert not timeout_problems(seen), seen


def test_broken_archives_fail_to_register_and_the_serving_model_is_untouched(fault_server):
    seen = register_broken_archives(fault_server)
    assert not archive_problems(seen), seen


def test_stop_and_start_serves_the_same_version_with_the_same_answers(fault_server, cifar_test_jpegs):
    images = [blob for per_class in cifar_test_jpegs.values() for blob in per_class[:2]]
    seen = restart(fault_server, images)
    assert not restart_problems(seen) and seen["images"] == len(images), seen


def test_queued_requests_of_clients_that_went_away_are_not_computed(fault_server):
    """The sleepy model (one worker, batches of one) is kept busy for 1.5 s; three clients queue a
    request behind it and close their connections: their requests are dropped, not slept through."""
    client, log = fault_server.client, fault_server.paths.logs / "model_log.log"

    def computed() -> int:
        return sum(SLEEPY_COMPUTES in line for line in log.read_text().splitlines())

    host, port = client.inference.split("//")[1].split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in client.auth_headers("inference").items())
    request = f"POST /predictions/sleepy HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: 3\r\n\r\n0.5".encode()
    before = computed()
    busy = threading.Thread(target=lambda: client.predict(b"1.5", model="sleepy"))
    busy.start()
    time.sleep(0.3)
    for _ in range(3):
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(request)
            time.sleep(0.1)  # read and queued by the frontend before the client goes away
    busy.join()
    time.sleep(2)  # 1.5 s more would go to the three requests if they were computed
    assert computed() - before == 1
