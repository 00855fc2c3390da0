"""The pod's authorization design, for real: the gateway (deploy/k8s/base/gateway/nginx.conf, run by
Debian's nginx) in front of a TorchServe with the pod's config.properties (token auth off, APIs on
loopback), as fleet/pod.py runs one replica of the pod. And the pod's probes and preStop drain.

No token or a wrong one -> 401 with a JSON body; the right token -> an answer; management and
metrics are not reachable through the gateway, and TorchServe's own ports listen on loopback only.
"""

from __future__ import annotations

import io
import ipaddress
import os
import secrets
import subprocess
import threading
import time

import psutil
import pytest
import requests
from helpers import PORT_BASE
from PIL import Image

from container.drain import DrainError, drain
from container.healthcheck import probe_png
from fleet.pod import Replica, read_pod
from repo import REPO

REPLICA_PORTS = PORT_BASE + 200  # TorchServe +200..+204, the gateway +205, its status page +206
TOKEN = secrets.token_hex(32)


@pytest.fixture(scope="module")
def replica(tmp_path_factory, model_store):
    replica = Replica("pod", tmp_path_factory.mktemp("pod"), REPLICA_PORTS, model_store, {"test-client": TOKEN})
    try:
        replica.start()
        yield replica
    finally:
        replica.stop()


def predict(replica, headers=None, data=None, method="POST", path="/predictions/cifar10") -> requests.Response:
    return requests.request(
        method, replica.url + path, data=probe_png() if data is None else data, headers=headers, timeout=30
    )


def error_body(response: requests.Response, code: int) -> dict:
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and body["message"]
    return body


def test_no_token_or_a_wrong_one_is_refused_with_json(replica):
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = predict(replica, headers)
        error_body(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_right_token_gets_a_prediction(replica):
    answer = predict(replica, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"prediction", "confidence", "top3_predictions"}
    # A body larger than nginx's buffer goes through a temporary file of the gateway.
    photo = io.BytesIO()
    Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3)).save(photo, format="PNG")
    assert len(photo.getvalue()) > 64 * 1024
    answer = predict(replica, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"}, data=photo.getvalue())
    assert answer.status_code == 200, answer.text


def test_errors_through_the_gateway_stay_json(replica):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    error_body(predict(replica, headers, data=b"not an image"), 400)  # TorchServe's handler, passed through
    error_body(predict(replica, headers, data=b"x" * (9 * 2**20)), 413)  # above max_request_size
    error_body(predict(replica, headers, method="GET"), 405)


def test_management_and_metrics_are_not_reachable_through_the_gateway(replica):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in (
        ("GET", "/models"),
        ("GET", "/models/cifar10"),
        ("PUT", "/models/cifar10?min_worker=0"),
        ("DELETE", "/models/cifar10/1.0"),
        ("POST", "/models?url=cifar10.mar"),
        ("GET", "/metrics"),
        ("GET", "/ping"),
        ("POST", "/predictions/cifar10/../../models"),
    ):
        error_body(predict(replica, headers, method=method, path=path), 404)
    assert replica.server.processes(), "TorchServe is not running"


def test_torchserve_listens_on_loopback_only(replica):
    """In the pod, only the gateway's port and metrics are on the pod's interfaces; here metrics
    too are on loopback (this machine sends traffic to loopback only)."""
    frontend = replica.server.processes()[0]
    listening = [c.laddr for c in frontend.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    ports = {address.port: address.ip for address in listening}
    assert {REPLICA_PORTS, REPLICA_PORTS + 1} <= ports.keys()
    loopback = [(ipaddress.ip_address(ip).ipv4_mapped or ipaddress.ip_address(ip)).is_loopback for ip in ports.values()]
    assert all(loopback), listening
    assert not (replica.root / "key_file.json").exists()  # token auth is off inside the pod


def probe(replica, name: str) -> subprocess.CompletedProcess:
    """The Deployment's probe command (deploy/k8s), with this replica's ports, in its working
    directory (as in the pod, with serve/ on PYTHONPATH)."""
    command = getattr(read_pod(), name).on_replica(replica)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=replica.root, env=env, capture_output=True, text=True, timeout=60)


def test_the_pods_probes_pass_and_readiness_fails_while_draining(replica):
    result = probe(replica, "startup")
    assert result.returncode == 0 and "predicts" in result.stdout, result.stdout  # the startup probe predicts
    for name in ("readiness", "liveness"):
        result = probe(replica, name)
        assert result.returncode == 0 and "READY" in result.stdout and "predicts" not in result.stdout, result.stdout
    seconds = drain(replica.drain_file, replica.status_url, settle=1, quiet=0.5, timeout=20)
    try:
        assert 1 <= seconds < 20
        result = probe(replica, "readiness")
        assert result.returncode == 1 and "draining" in result.stdout
        assert probe(replica, "liveness").returncode == 0  # draining is not dying
    finally:
        replica.drain_file.unlink()


def test_the_drain_waits_for_requests_in_flight(replica):
    """Requests keep arriving through the gateway: the drain returns only once they stopped and
    every one was answered; with a deadline shorter than the traffic it raises DrainError."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"}
    stop_at = time.monotonic() + 3
    answers = []

    def traffic():
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                answers.append(session.post(replica.url + "/predictions/cifar10", data=probe_png(), headers=headers))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(0.5)
        with pytest.raises(DrainError):
            drain(replica.drain_file, replica.status_url, settle=0, quiet=1, timeout=1)
        seconds = drain(replica.drain_file, replica.status_url, settle=0, quiet=1, timeout=30)
        assert time.monotonic() >= stop_at and seconds >= 1
    finally:
        sender.join()
        replica.drain_file.unlink(missing_ok=True)
    assert answers and all(a.status_code == 200 for a in answers)
    counts = requests.get(replica.status_url, timeout=5).text
    assert "Writing: 1 " in counts and "Active connections: 1 " in counts  # only this status request
