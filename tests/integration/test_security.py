"""Security defaults against the session's real TorchServe (config.properties; docs/operations.md):
token authorization with a key file for its owner alone, no model from a URL (ShellTorch,
CVE-2023-43654), a request size limit, the management and metrics APIs on loopback only."""

from __future__ import annotations

import http.client
import http.server
import json
import select
import socket
import stat
import threading
import time
import urllib.parse
from typing import ClassVar

import pytest
import requests
from helpers import PORT_BASE

from harness.server import LocalServer
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
        assert response.status_code == 401 and "Token" in response.json()["message"], (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer", (method, path)
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

    assert [predict(key) for key in keys] == [200, 401, 401]
    assert [describe(key) for key in keys] == [401, 200, 401]
    assert [make_key(key) for key in keys[:2]] == [401, 401]


def test_the_key_file_is_its_owners_alone(server_paths):
    assert stat.S_IMODE((server_paths.workdir / "key_file.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key")], ids=["no key", "wrong key"])
def test_predictions_without_the_right_key_are_refused_with_401(server, headers):
    response = requests.post(f"{server.inference}/predictions/cifar10", data=b"x", headers=headers, timeout=30)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert "inference key" in response.json()["message"]


def test_ping_answers_without_a_key_and_tells_only_health(server):
    response = requests.get(f"{server.inference}/ping", timeout=30)
    assert response.status_code == 200 and response.json() == {"status": "Healthy"}


@pytest.mark.parametrize(
    "method, path, status",
    [("GET", "/no/such/path", 404), ("GET", "/", 405), ("POST", "/predictions/no-such-model", 404)],
)
def test_refusals_are_json_with_their_status(server, method, path, status):
    response = requests.request(
        method, f"{server.inference}{path}", headers=bearer(server.keys["inference"]), timeout=30
    )
    assert response.status_code == status and response.json()["message"], response.text


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


def register(server, url: str) -> requests.Response:
    return requests.post(
        f"{server.management}/models",
        params={"url": url, "model_name": "evil", "initial_workers": 1, "synchronous": "true"},
        headers=bearer(server.keys["management"]),
        timeout=120,
    )


def test_registering_a_model_from_a_url_is_refused_and_fetches_nothing(server, attacker_site, model_store):
    for url in (f"{attacker_site}/evil.mar", f"file://{model_store / 'cifar10.mar'}"):
        response = register(server, url)
        assert response.status_code == 400, response.text
        assert "only by the file name of an archive in the model store" in response.json()["message"]
    assert RecordingHandler.requests_seen == []
    assert [model["modelName"] for model in server.describe("cifar10", "all")] == ["cifar10"]


def handler_folder(folder, marker) -> None:
    """A model folder whose handler, if it ever ran, would write `marker`."""
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_text(
        '{"runtime": "python", "model": {"modelName": "evil", "handler": "evil_handler.py", "modelVersion": "1.0"},'
        ' "archiverVersion": "0.12.0"}'
    )
    (folder / "evil_handler.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef handle(data, context):\n    return ['x'] * len(data or [])\n"
    )


def test_a_model_is_registered_only_by_the_name_of_an_archive_in_the_store(server, server_paths, tmp_path):
    marker = tmp_path / "handler-ran"
    outside = tmp_path / "evil"
    handler_folder(outside, marker)
    store = server_paths.model_store
    link = store / "evil-link"
    link.symlink_to(outside)
    try:
        refused = {
            "an absolute folder": str(outside),
            "a folder that does not exist": str(tmp_path / "nothing-here"),
            "a link out of the store": link.name,
            "a relative path": f"../{outside.name}",
            "a file below the store": f"sub/{outside.name}",
        }
        answers = {what: register(server, url) for what, url in refused.items()}
    finally:
        link.unlink()
    for what, response in answers.items():
        assert response.status_code == 400, (what, response.text)
        message = response.json()["message"]
        assert "only by the file name of an archive in the model store" in message, (what, message)
    # the same answer whether or not the path exists: the call cannot probe the machine's folders
    assert (
        answers["an absolute folder"].json()["message"].split(";")[0]
        == answers["a folder that does not exist"].json()["message"].split(";")[0]
    )
    assert not marker.exists()
    assert [model["modelName"] for model in server.describe("cifar10", "all")] == ["cifar10"]


def test_a_body_over_the_size_limit_is_refused_with_413(server, server_paths):
    limit = int(properties(server_paths.config)["max_request_size"])
    response = requests.post(
        f"{server.inference}/predictions/cifar10",
        data=b"\xff" * (limit + 1),
        headers={**bearer(server.keys["inference"]), "Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 413 and str(limit) in response.json()["message"]
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


IDLE_SECONDS = 3
MAX_CONNECTIONS = 350


@pytest.fixture(scope="module")
def door_server(tmp_path_factory, model_store):
    """A TorchServe of its own (ports TEST_PORT_BASE+25..+29) that closes connections idle for
    IDLE_SECONDS, and any past MAX_CONNECTIONS from one address."""
    settings = {"idle_connection_timeout": str(IDLE_SECONDS), "max_connections_per_address": str(MAX_CONNECTIONS)}
    with LocalServer(tmp_path_factory.mktemp("door"), model_store, PORT_BASE + 25, settings=settings) as server:
        yield server


def predict_from(server, source: str, image: bytes) -> dict:
    """A prediction on a connection from the loopback address `source` (another client than 127.0.0.1)."""
    inference = urllib.parse.urlsplit(server.client.inference)
    connection = http.client.HTTPConnection(inference.hostname, inference.port, timeout=30, source_address=(source, 0))
    try:
        connection.request("POST", "/predictions/cifar10", body=image, headers=server.client.auth_headers("inference"))
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def closed_by_the_server(connection: socket.socket) -> bool:
    """Reads what was answered, then the end of the stream; False if the server kept it open."""
    connection.settimeout(5)
    try:
        while connection.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_idle_connections_are_bounded_and_closed_and_a_good_client_is_served(door_server, cifar_test_jpegs):
    inference = urllib.parse.urlsplit(door_server.client.inference)
    address, image = (inference.hostname, inference.port), cifar_test_jpegs["cat"][0]
    http10 = [socket.create_connection(address, timeout=10) for _ in range(100)]
    for connection in http10:  # an HTTP/1.0 request whose connection TorchServe keeps open after its answer
        connection.sendall(b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    idle = [socket.create_connection(address, timeout=10) for _ in range(300)]  # never send anything
    try:
        # past the limit: closed as soon as opened (well before the idle timeout); the others stay open
        readable, _, _ = select.select(idle, [], [], 1.0)
        assert readable and all(closed_by_the_server(c) for c in readable)
        frontend = door_server.processes()[0]
        held = [c for c in frontend.net_connections("tcp") if c.laddr.port == inference.port and c.raddr]
        assert len(held) <= MAX_CONNECTIONS
        # while one address holds its limit, another client is served
        assert predict_from(door_server, "127.0.0.2", image)["prediction"]
        time.sleep(IDLE_SECONDS + 1)
        assert all(closed_by_the_server(c) for c in idle + http10)  # idle past the timeout: closed
        assert door_server.client.predict(image)["prediction"]
    finally:
        for connection in idle + http10:
            connection.close()
