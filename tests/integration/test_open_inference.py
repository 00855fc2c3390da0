"""The Open Inference Protocol v2 over REST (docs/api.md) on the real TorchServe, beside /predictions:
health without a key, metadata and inference with it, v2 answers equal to /predictions' for the same
images, a bad image failing only its own request, and two real third-party clients, Triton's
(tritonclient, in the venv) and KServe's SDK (in its own venv, .tools/kserve, as a subprocess: its
pins would change the venv's), each sending 1,000 CIFAR-10 test images."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cifar10_v2
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from helpers import REPO, TEST_SUBSET

from harness.v2 import binary_request, json_request
from model import CLASSES
from train.data import encoded_images

PER_REQUEST = 8  # images per v2 request from the third-party clients
KSERVE_PYTHON = REPO / ".tools" / "kserve" / "bin" / "python"


def v2_binary(images: list[bytes]) -> tuple[bytes, dict]:
    """The binary data extension's body and its header, by hand (the clients below make their own)."""
    body, header_length = binary_request(images)
    return body, {"Inference-Header-Content-Length": str(header_length)}


def floor4(value: float) -> float:
    return math.floor(value * 1e4) / 1e4


def assert_same_as_predictions(outputs: list[dict], answers: list[dict]) -> None:
    """v2 outputs (JSON) against /predictions' answers for the same images: the same top class, and
    each top-3 confidence is the v2 probability rounded down to 4 decimals."""
    named = {output["name"]: output for output in outputs}
    probabilities = np.array(named["probabilities"]["data"], dtype=np.float32).reshape(named["probabilities"]["shape"])
    assert named["label"]["data"] == [answer["prediction"] for answer in answers]
    for row, confidence, answer in zip(probabilities, named["confidence"]["data"], answers):
        assert floor4(confidence) == answer["confidence"]
        assert [floor4(float(row[CLASSES.index(p["class"])])) for p in answer["top3_predictions"]] == [
            p["confidence"] for p in answer["top3_predictions"]
        ]


@pytest.fixture(scope="module")
def auth(server) -> dict:
    return server.auth_headers("inference")


@pytest.fixture(scope="module")
def test_images(data_source) -> list[bytes]:
    """The run's test images (the first TEST_SUBSET of the test split), as the files a client sends."""
    files, _ = encoded_images(str(data_source))
    return files[:TEST_SUBSET]


@pytest.fixture(scope="module")
def predicted(server, test_images) -> list[str]:
    """/predictions' class for each test image."""

    def classes(start: int) -> list[str]:
        own = server.copy()
        return [own.predict(image)["prediction"] for image in test_images[start : start + 125]]

    with ThreadPoolExecutor(8) as pool:
        return [label for chunk in pool.map(classes, range(0, len(test_images), 125)) for label in chunk]


def test_health_needs_no_key_and_everything_else_the_inference_key(server, auth):
    assert requests.get(f"{server.inference}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{server.inference}/v2/health/ready", timeout=10).json() == {"ready": True}
    for method, path in [("GET", "/v2"), ("GET", "/v2/models/cifar10"), ("GET", "/v2/models/cifar10/ready")]:
        assert requests.request(method, server.inference + path, timeout=10).status_code == 401
        assert requests.request(method, server.inference + path, headers=auth, timeout=10).status_code == 200
    refused = requests.post(f"{server.inference}/v2/models/cifar10/infer", json=json_request([b"x"]), timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"


def test_metadata_names_the_models_tensors_and_versions(server, auth):
    version = server.describe()[0]["modelVersion"]
    metadata = requests.get(f"{server.inference}/v2/models/cifar10", headers=auth, timeout=10).json()
    tensors = json.loads((REPO / "handler" / "cifar10_v2.json").read_text())
    assert metadata == {"name": "cifar10", "versions": [version], **tensors}
    versioned = requests.get(f"{server.inference}/v2/models/cifar10/versions/{version}", headers=auth, timeout=10)
    assert versioned.json() == metadata
    ready = requests.get(f"{server.inference}/v2/models/cifar10/versions/{version}/ready", headers=auth, timeout=10)
    assert ready.json() == {"name": "cifar10", "ready": True}
    server_metadata = requests.get(f"{server.inference}/v2", headers=auth, timeout=10).json()
    assert server_metadata["extensions"] == ["binary_tensor_data"] and server_metadata["version"]
    for path, status in [("/v2/models/cifar9", 404), ("/v2/models/cifar10/versions/1.0/ready", 404)]:
        answer = requests.get(server.inference + path, headers=auth, timeout=10)
        assert answer.status_code == status and answer.json()["error"]
    assert requests.post(f"{server.inference}/v2/models/cifar10", headers=auth, timeout=10).status_code == 405


def test_v2_answers_are_the_predictions_answers(server, auth, cifar_test_jpegs):
    images = [jpegs[0] for jpegs in cifar_test_jpegs.values()]
    answers = [server.predict(image) for image in images]
    as_json = requests.post(
        f"{server.inference}/v2/models/cifar10/infer", json=json_request(images, id="ten"), headers=auth, timeout=30
    )
    assert as_json.status_code == 200 and as_json.json()["id"] == "ten"
    assert as_json.json()["model_version"] == server.describe()[0]["modelVersion"]
    assert_same_as_predictions(as_json.json()["outputs"], answers)
    body, header = v2_binary(images)
    version = as_json.json()["model_version"]
    for path in ("/v2/models/cifar10/infer", f"/v2/models/cifar10/versions/{version}/infer"):
        as_binary = requests.post(server.inference + path, data=body, headers={**auth, **header}, timeout=30)
        assert as_binary.status_code == 200
        assert_same_as_predictions(as_binary.json()["outputs"], answers)


def test_a_bad_image_fails_its_v2_request_alone(server, auth, cifar_test_jpegs):
    """Among concurrent requests (batched together), the v2 request holding a bad image gets 400
    naming it; the others, /predictions and v2 alike, are answered."""
    good = cifar_test_jpegs["ship"][0]
    expected = server.predict(good)["prediction"]

    def send(index: int) -> tuple[int, dict]:
        session = requests.Session()
        if index % 4 == 0:
            images = [good, good, b"GIF89a not really"] if index == 8 else [good]
            answer = session.post(
                f"{server.inference}/v2/models/cifar10/infer", json=json_request(images), headers=auth, timeout=30
            )
        else:
            answer = session.post(f"{server.inference}/predictions/cifar10", data=good, headers=auth, timeout=30)
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(48)))
    for index, (status, body) in enumerate(answers):
        if index == 8:
            assert status == 400 and body["error"].startswith("element 2 of input 'images': ")
        else:
            assert status == 200
            assert (body["outputs"][0]["data"] if index % 4 == 0 else [body["prediction"]]) == [expected]


def test_a_v2_request_for_another_server_gets_400_saying_why(server, auth):
    answer = requests.post(
        f"{server.inference}/v2/models/cifar10/infer",
        json={"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        headers=auth,
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "expected 'images' of BYTES, got 'INPUT0' of FP32"}


def test_tritonclient_sends_the_test_images_and_gets_the_predictions_classes(server, auth, test_images, predicted):
    """Triton's own HTTP client, as its users call it: binary data by default (and binary outputs),
    or base64 strings in JSON with JSON outputs asked for; requests of up to PER_REQUEST images."""
    client = triton.InferenceServerClient(server.inference.removeprefix("http://"), concurrency=8)
    assert client.is_server_live() and client.is_server_ready(headers=dict(auth))
    assert client.is_model_ready("cifar10", headers=dict(auth))
    assert client.get_model_metadata("cifar10", headers=dict(auth))["inputs"] == [cifar10_v2.INPUT]
    pending = []
    for start in range(0, len(test_images), PER_REQUEST):
        images = np.array(test_images[start : start + PER_REQUEST], dtype=object)
        tensor = triton.InferInput("images", [len(images)], "BYTES")
        if start // PER_REQUEST % 2:
            tensor.set_data_from_numpy(np.array([base64.b64encode(image) for image in images]), binary_data=False)
            outputs = [triton.InferRequestedOutput("label", binary_data=False)]
        else:
            tensor.set_data_from_numpy(images)
            outputs = None  # all of them, as binary data
        # a headers dict of its own each time: the client adds Inference-Header-Content-Length to it
        pending.append(client.async_infer("cifar10", [tensor], outputs=outputs, headers=dict(auth)))
    labels = [label for request in pending for label in request.get_result().as_numpy("label").tolist()]
    client.close()
    labels = [label.decode() if isinstance(label, bytes) else label for label in labels]
    assert len(labels) == len(test_images) and labels == predicted


# KServe's SDK in its own venv: POSTs the images in the folder argv[3] (files named 0, 1, ...), up to
# PER_REQUEST a request, binary data and base64 JSON in turn, 8 at a time; prints the labels as JSON.
KSERVE_CLIENT = """
import asyncio, base64, json, sys
from pathlib import Path
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

url, key, folder, per_request = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
images = [path.read_bytes() for path in sorted(folder.iterdir(), key=lambda path: int(path.name))]

async def main():
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    assert await client.is_server_live(url) and await client.is_model_ready(url, "cifar10", {"Authorization": f"Bearer {key}"})
    limit = asyncio.Semaphore(8)

    async def labels(start):
        chunk = np.array(images[start : start + per_request], dtype=object)
        tensor = InferInput("images", [len(chunk)], "BYTES")
        if start // per_request % 2:
            tensor.set_data_from_numpy(np.array([base64.b64encode(image) for image in chunk], dtype=object), binary_data=False)
        else:
            tensor.set_data_from_numpy(chunk, binary_data=True)
        async with limit:
            response = await client.infer(
                url, InferRequest("cifar10", [tensor]), model_name="cifar10", headers={"Authorization": f"Bearer {key}"}
            )
        [label] = [output for output in response.outputs if output.name == "label"]
        return [value.decode() if isinstance(value, bytes) else value for value in label.as_numpy().tolist()]

    chunks = await asyncio.gather(*(labels(start) for start in range(0, len(images), per_request)))
    await client.close()
    print(json.dumps([label for chunk in chunks for label in chunk]))

asyncio.run(main())
"""


def test_the_kserve_sdk_sends_the_test_images_and_gets_the_predictions_classes(
    server, test_images, predicted, tmp_path
):
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"the kserve SDK's venv is missing: `make {KSERVE_PYTHON.relative_to(REPO)}` makes it")
    for index, image in enumerate(test_images):
        (tmp_path / str(index)).write_bytes(image)
    key = server.keys["inference"]
    run = subprocess.run(
        [str(KSERVE_PYTHON), "-c", KSERVE_CLIENT, server.inference, key, str(tmp_path), str(PER_REQUEST)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    labels = json.loads(run.stdout.splitlines()[-1])
    assert len(labels) == len(test_images) and labels == predicted


def test_the_v2_tensors_file_is_in_the_archive(model_store):
    """The frontend agent reads the v2 metadata from the unpacked archive: it must be packed."""
    with zipfile.ZipFile(model_store / "cifar10.mar") as archive:
        assert {"cifar10_v2.json", "cifar10_v2.py"} <= set(archive.namelist())


def test_a_predictions_request_cannot_pass_for_a_v2_one(server, auth, cifar_test_jpegs):
    """The handler's v2 mark is the agent's alone: a client sending it to /predictions is not read as v2."""
    answer = requests.post(
        f"{server.inference}/predictions/cifar10",
        json=json_request([cifar_test_jpegs["cat"][0]]),
        headers={**auth, cifar10_v2.PROTOCOL_HEADER: "v2"},
        timeout=30,
    )
    assert answer.status_code == 400 and answer.json()["reason"] == "not_an_image"
