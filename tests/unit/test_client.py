"""The client's contract with TorchServe's APIs, against a local HTTP server that records what it
receives: keys read from key_file.json, the Authorization header per API, errors as ServiceError."""

from __future__ import annotations

import http.server
import json
import threading
from typing import ClassVar

import pytest

from container.keys import read_keys
from serve.client import Client
from serve.errors import ServiceError

ANSWER = {
    "prediction": "cat",
    "confidence": 0.89,
    "top3_predictions": [
        {"class": "cat", "confidence": 0.89},
        {"class": "dog", "confidence": 0.07},
        {"class": "deer", "confidence": 0.02},
    ],
}


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        Recorder.seen.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"),
                              "type": self.headers.get("Content-Type"), "body": body})  # fmt: skip
        status, answer = (404, {"code": 404, "message": "no such model"}) if "missing" in self.path else (200, ANSWER)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    Recorder.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"management": {"key": "M1", "expiration time": "x"},
                                "inference": {"key": "I1", "expiration time": "x"}, "API": {"key": "A1"}}))  # fmt: skip
    return path


def test_keys_come_from_key_file_json(key_file, tmp_path):
    assert read_keys(key_file) == {"management": "M1", "inference": "I1", "API": "A1"}
    assert read_keys(tmp_path / "absent.json") == {}


def test_each_api_gets_its_own_key(site, key_file):
    client = Client(site, site, site, key_file=key_file)
    assert client.predict(b"\xff\xd8 jpeg bytes") == ANSWER
    client.describe()
    assert [(r["method"], r["auth"]) for r in Recorder.seen] == [("POST", "Bearer I1"), ("GET", "Bearer M1")]
    assert Recorder.seen[0]["body"] == b"\xff\xd8 jpeg bytes" and Recorder.seen[0]["path"] == "/predictions/cifar10"


def test_the_flask_services_form_is_a_multipart_file_field(site, key_file):
    Client(site, site, site, key_file=key_file).predict(b"image bytes", field="image", version="2.0")
    [request] = Recorder.seen
    assert request["path"] == "/predictions/cifar10/2.0" and request["type"].startswith("multipart/form-data")
    assert b'name="image"' in request["body"] and b"image bytes" in request["body"]


def test_without_a_key_file_requests_carry_no_key(site, tmp_path):
    Client(site, site, site, key_file=tmp_path / "none.json").predict(b"x")
    assert Recorder.seen[0]["auth"] is None


def test_an_error_status_raises_service_error_with_the_body(site, key_file):
    with pytest.raises(ServiceError) as error:
        Client(site, site, site, key_file=key_file).predict(b"x", model="missing")
    assert error.value.status == 404 and "no such model" in error.value.body
