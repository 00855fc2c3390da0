"""Security defaults against the session's real TorchServe (config.properties; docs/operations.md):
token authorization with a key file for its owner alone, no model from a URL (ShellTorch,
CVE-2023-43654), a request size limit, the management and metrics APIs on loopback only."""

from __future__ import annotations

import http.server
import socket
import stat
import threading
from typing import ClassVar

import pytest
import requests
from helpers import PORT_BASE

from serve.client import sample_jpeg
from serve.config import properties

ATTACKER_PORT = PORT_BASE + 20  # a web server a malicious registration would fetch from


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key")], ids=["no key", "wrong key"])
def test_management_calls_without_the_right_key_are_refused(server, headers):
    before = server.describe()[0]["workers"]
    calls = [
        ("GET", "/models"),
        ("PUT", f"/models/cifar10?min_worker={len(before) + 2}"),
        ("DELETE", "/models/cifar10"),
        ("POST", "/models?url=cifar10.mar"),
        ("POST", "/token?type=inference"),
    ]
    for method, path in calls:
        response = requests.request(method, f"{server.management}{path}", headers=headers, timeout=30)
        assert response.status_code == 400 and "Token" in response.json()["message"], (method, path)
    assert [w["id"] for w in server.describe()[0]["workers"]] == [w["id"] for w in before]  # nothing changed


def test_each_key_opens_its_own_api_alone(server):
    """Predictions take the inference key alone, management calls the management key alone, and
    neither makes keys. The API key's own call (POST /token) is not made here: it would replace the
    session's keys."""
    server.refresh_keys()
    keys = [server.keys[api] for api in ("inference", "management", "API")]
    image = {"Content-Type": "image/jpeg"}

    def predict(key):
        url = f"{server.inference}/predictions/cifar10"
        return requests.post(url, data=sample_jpeg(), headers={**bearer(key), **image}, timeout=30).status_code

    def describe(key):
        return requests.get(f"{server.management}/models", headers=bearer(key), timeout=30).status_code

    def make_key(key):
        return requests.post(f"{server.management}/token?type=inference", headers=bearer(key), timeout=30).status_code

    assert [predict(key) for key in keys] == [200, 400, 400]
    assert [describe(key) for key in keys] == [400, 200, 400]
    assert [make_key(key) for key in keys[:2]] == [400, 400]


def test_the_key_file_is_its_owners_alone(server_paths):
    assert stat.S_IMODE((server_paths.workdir / "key_file.json").stat().st_mode) == 0o600


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    requests_seen: ClassVar[list[str]] = []

    def do_GET(self):
        RecordingHandler.requests_seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"PK\x03\x04 not really a model archive")

    def log_message(self, *args):
        pass


@pytest.fixture
def attacker_site():
    site = http.server.ThreadingHTTPServer(("127.0.0.1", ATTACKER_PORT), RecordingHandler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    RecordingHandler.requests_seen = []
    yield f"http://127.0.0.1:{ATTACKER_PORT}"
    site.shutdown()
    site.server_close()


def test_registering_a_model_from_a_url_is_refused_and_fetches_nothing(server, attacker_site, model_store):
    for url in (f"{attacker_site}/evil.mar", f"file://{model_store / 'cifar10.mar'}"):
        response = requests.post(
            f"{server.management}/models",
            params={"url": url, "model_name": "evil"},
            headers=bearer(server.keys["management"]),
            timeout=60,
        )
        assert response.status_code == 404, response.text
        assert "does not match any allowed URL" in response.json()["message"]
    assert RecordingHandler.requests_seen == []
    assert [model["modelName"] for model in server.describe("cifar10", "all")] == ["cifar10"]


def test_a_body_over_the_size_limit_is_refused_with_413(server, server_paths):
    limit = int(properties(server_paths.config)["max_request_size"])
    response = requests.post(
        f"{server.inference}/predictions/cifar10",
        data=b"\xff" * (limit + 1),
        headers={**bearer(server.keys["inference"]), "Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 413
    # a body just under the limit reaches the handler, which says what is wrong with it
    response = requests.post(
        f"{server.inference}/predictions/cifar10",
        data=b"\xff" * (limit - 4096),
        headers={**bearer(server.keys["inference"]), "Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 400 and response.json()["type"] == "InvalidImage"


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_all_apis_listen_on_loopback_only(server, server_paths):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no network interface besides loopback")
    props = properties(server_paths.config)
    for key in (
        "inference_address",
        "management_address",
        "metrics_address",
        "grpc_inference_port",
        "grpc_management_port",
    ):
        port = int(props[key].rsplit(":", 1)[-1])
        with socket.socket() as probe:
            probe.settimeout(5)
            assert probe.connect_ex((address, port)) != 0, f"{key} answers on {address}:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # and it does listen, on loopback
