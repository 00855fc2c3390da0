"""The operator's commands of docs/operations.md, run as users run them (`python -m serve ...`)
against the session's real TorchServe: roll out a second version, switch to it and back while
traffic flows, retire it; scale workers; rotate keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter

import requests
from helpers import REPO, metadata, train_run


def cli(server_paths, *args: str, status: int = 0) -> str:
    """Runs `python -m serve ARGS` against the test server; asserts its exit status; its output."""
    command = [
        sys.executable,
        "-m",
        "serve",
        "--config",
        str(server_paths.config),
        "--workdir",
        str(server_paths.workdir),
        *args,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stdout + result.stderr
    return result.stdout + result.stderr


class PredictionStream:
    """Predictions sent one after another from a thread, every status code counted."""

    def __init__(self, server, image: bytes):
        self.url, self.image, self.headers = (
            f"{server.inference}/predictions/cifar10",
            image,
            server.auth_headers("inference"),
        )
        self.statuses: Counter = Counter()
        self.running = True
        self.thread = threading.Thread(target=self.send)
        self.thread.start()

    def send(self):
        with requests.Session() as session:
            while self.running:
                self.statuses[
                    session.post(self.url, data=self.image, headers=self.headers, timeout=60).status_code
                ] += 1

    def stop(self) -> Counter:
        self.running = False
        self.thread.join()
        return self.statuses


def test_roll_out_switch_and_roll_back_a_version_while_requests_flow(
    server, server_paths, model_store, trained_run, data_source, tmp_path, cifar_test_jpegs
):
    second_run = train_run(
        tmp_path / "models", data_source, "--seed", "1", "--train-subset", "1000", "--test-subset", "200"
    )
    old, new = metadata(trained_run)["version"], metadata(second_run)["version"]
    image = cifar_test_jpegs["horse"][0]

    def answers() -> tuple[dict, dict, dict]:
        return server.predict(image), server.predict(image, version=old), server.predict(image, version=new)

    traffic = PredictionStream(server, image)
    try:
        cli(server_paths, "rollout", "--run", str(second_run), "--store", str(model_store))
        assert (model_store / f"cifar10-{new}.mar").exists()
        listed = cli(server_paths, "versions")
        assert re.search(rf"{old} \(default\): cifar10.mar, (\d+)/\1 workers ready", listed), listed
        assert re.search(rf"{new}: cifar10-{new}.mar, (\d+)/\1 workers ready", listed), listed
        default, from_old, from_new = answers()
        assert default == from_old != from_new  # two seeds, two models: different confidences

        cli(server_paths, "set-default", new)
        default, from_old, from_new = answers()
        assert default == from_new != from_old
        assert f"{new} (default)" in cli(server_paths, "versions")

        cli(server_paths, "set-default", old)  # the roll-back
        default, from_old, from_new = answers()
        assert default == from_old != from_new
    finally:
        statuses = traffic.stop()
        server.set_default(old)
        cli(server_paths, "retire", new)
    assert [version["modelVersion"] for version in server.describe("cifar10", "all")] == [old]
    assert set(statuses) == {200} and statuses[200] > 10, statuses


def test_scale_returns_with_every_worker_ready_on_a_busy_machine(server, server_paths):
    """`scale N` returns once N workers are READY, not once TorchServe has started them: with every
    core busy (three spinning processes per core) a worker loads its model late."""
    configured = len(server.describe()[0]["workers"])
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3 * (os.cpu_count() or 1))]
    try:
        for workers in (configured + 1, configured):
            cli(server_paths, "scale", str(workers))
            states = [worker["status"] for worker in server.describe()[0]["workers"]]
            assert states == ["READY"] * workers
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert f"{configured}/{configured} workers ready" in cli(server_paths, "versions")


def test_a_command_without_a_server_says_so_in_one_line(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:9\nmanagement_address=http://127.0.0.1:9\n")
    command = [sys.executable, "-m", "serve", "--config", str(config), "--workdir", str(tmp_path), "describe"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: nothing answers at") and "Traceback" not in result.stderr


def test_scaling_beyond_what_the_memory_holds_is_refused(server, server_paths):
    configured = len(server.describe()[0]["workers"])
    assert "available memory holds at most" in cli(server_paths, "scale", "100000", status=1)
    assert len(server.describe()[0]["workers"]) == configured


def test_rotate_keys_replaces_every_key_at_once(server, server_paths, cifar_test_jpegs):
    old = dict(server.keys)
    cli(server_paths, "rotate-keys")
    try:
        new = {
            api: entry["key"] for api, entry in json.loads((server_paths.workdir / "key_file.json").read_text()).items()
        }
        assert all(new[api] != old[api] for api in ("API", "inference", "management"))
        assert oct((server_paths.workdir / "key_file.json").stat().st_mode & 0o777) == "0o600"
        url, image = f"{server.inference}/predictions/cifar10", cifar_test_jpegs["cat"][0]

        def status(method: str, address: str, key: str, **kwargs) -> int:
            return requests.request(
                method, address, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs
            ).status_code

        assert status("POST", url, old["inference"], data=image) == 401
        assert status("POST", url, new["inference"], data=image) == 200
        assert status("GET", f"{server.management}/models", old["management"]) == 401
        assert status("GET", f"{server.management}/models", new["management"]) == 200
        # a leaked API key is revoked: it mints no key, and so cannot invalidate the clients' keys
        assert status("POST", f"{server.management}/token?type=inference", old["API"]) == 401
        assert json.loads((server_paths.workdir / "key_file.json").read_text())["inference"]["key"] == new["inference"]
    finally:
        server.refresh_keys()
