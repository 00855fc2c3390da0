"""gRPC on the real TorchServe (docs/api.md#grpc): TorchServe's own Predictions, through the
operator's client (serve/grpc_client.py), gives /predictions' answers, with the inference key only;
a bad image is refused naming its reason, the worker staying up; and the Open Inference Protocol v2
as Triton's gRPC client calls it (`inference.GRPCInferenceService`, added by the frontend agent)
gets /predictions' classes for the run's test images."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cifar10_v2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from helpers import REPO
from tritonclient.utils import InferenceServerException

from serve.errors import GrpcError
from serve.grpc_client import GrpcClient, predictions_request
from serve.torchserve_grpc.inference_pb2_grpc import InferenceAPIsServiceStub
from train.data import encoded_images

PER_REQUEST = 8  # images per v2 request


@pytest.fixture(scope="module")
def grpc_client(local_server) -> GrpcClient:
    with GrpcClient.from_config(local_server.paths.config, local_server.paths.workdir) as client:
        yield client


@pytest.fixture(scope="module")
def test_images(data_source) -> list[bytes]:
    files, _ = encoded_images(str(data_source))
    return files[:200]


@pytest.fixture(scope="module")
def auth(server) -> dict:
    return {"authorization": f"Bearer {server.keys['inference']}"}


def test_predictions_over_grpc_are_the_predictions_answers(server, grpc_client, test_images):
    """200 test images, 8 at a time: the gRPC answer is /predictions' answer, whole."""

    def both(image: bytes) -> tuple[dict, dict]:
        return grpc_client.predict(image), server.copy().predict(image)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(both, test_images))
    assert len(answers) == 200
    for over_grpc, over_http in answers:
        assert over_grpc == over_http


def test_grpc_needs_the_inference_key_and_ping_none(local_server, grpc_client, test_images):
    address = grpc_client.address
    with GrpcClient(address) as keyless:
        assert keyless.ping() == {"status": "Healthy"}
        with pytest.raises(GrpcError) as refused:
            keyless.predict(test_images[0])
    assert refused.value.code == "UNAUTHENTICATED" and "inference key" in refused.value.details
    with grpc.insecure_channel(address) as channel:
        stub = InferenceAPIsServiceStub(channel)
        for key in ("wrong", local_server.client.keys["management"]):
            with pytest.raises(grpc.RpcError) as wrong:
                stub.Predictions(predictions_request(test_images[0]), metadata=[("authorization", f"Bearer {key}")])
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    management = address.rsplit(":", 1)[0] + f":{local_server.port_base + 4}"
    with grpc.insecure_channel(management) as channel:
        describe = channel.unary_unary("/org.pytorch.serve.grpc.management.ManagementAPIsService/DescribeModel")
        with pytest.raises(grpc.RpcError) as keyless_management:
            describe(b"")
    assert keyless_management.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_bad_image_is_refused_saying_why_and_the_worker_stays_up(server, grpc_client, cifar_test_jpegs):
    """Among concurrent requests (batched together), the bad one fails with INVALID_ARGUMENT and the
    handler's JSON body; the others are answered, and no worker was restarted."""
    good = cifar_test_jpegs["ship"][0]
    expected = server.predict(good)
    workers = sorted(worker["pid"] for worker in server.describe()[0]["workers"])

    def send(index: int) -> dict:
        try:
            return grpc_client.predict(b"GIF89a not really" if index == 5 else good)
        except GrpcError as error:
            return {"code": error.code, "body": json.loads(error.details)}

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(32)))
    assert answers[5]["code"] == "INVALID_ARGUMENT"
    assert answers[5]["body"]["reason"] == "not_an_image" and answers[5]["body"]["code"] == 400
    assert all(answer == expected for index, answer in enumerate(answers) if index != 5)
    assert sorted(worker["pid"] for worker in server.describe()[0]["workers"]) == workers
    assert grpc_client.predict(good) == expected


def test_predict_grpc_on_the_command_line(local_server, tmp_path, cifar_test_jpegs):
    image = tmp_path / "ship.jpg"
    image.write_bytes(cifar_test_jpegs["ship"][0])
    paths = local_server.paths
    command = [sys.executable, "-m", "serve", "--config", str(paths.config), "--workdir", str(paths.workdir)]
    run = subprocess.run([*command, "predict", str(image), "--grpc"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == local_server.client.predict(image.read_bytes())


def test_tritonclient_grpc_sends_the_test_images_and_gets_the_predictions_classes(
    server, grpc_client, auth, test_images
):
    """Triton's gRPC client, as its users call it (raw_input_contents, raw outputs): the v2 metadata,
    and PER_REQUEST images a request get /predictions' classes and probabilities."""
    client = triton.InferenceServerClient(grpc_client.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cifar10", headers=auth)
    version = server.describe()[0]["modelVersion"]
    metadata = client.get_model_metadata("cifar10", headers=auth, as_json=True)
    assert metadata["versions"] == [version]
    assert metadata["inputs"] == [{**cifar10_v2.INPUT, "shape": ["-1"]}]  # int64 in JSON: strings
    assert [output["name"] for output in metadata["outputs"]] == list(cifar10_v2.OUTPUTS)

    def infer(start: int) -> tuple[list[str], np.ndarray]:
        tensor = triton.InferInput("images", [len(test_images[start : start + PER_REQUEST])], "BYTES")
        tensor.set_data_from_numpy(np.array(test_images[start : start + PER_REQUEST], dtype=object))
        result = client.infer("cifar10", [tensor], headers=auth, request_id=str(start))
        assert result.get_response().id == str(start) and result.get_response().model_version == version
        return [label.decode() for label in result.as_numpy("label")], result.as_numpy("probabilities")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(infer, range(0, len(test_images), PER_REQUEST)))
        answers = list(pool.map(lambda image: server.copy().predict(image), test_images))
    labels = [label for chunk, _ in results for label in chunk]
    probabilities = np.concatenate([chunk for _, chunk in results])
    assert labels == [answer["prediction"] for answer in answers]
    assert [math.floor(float(row.max()) * 1e4) / 1e4 for row in probabilities] == [a["confidence"] for a in answers]
    client.close()


def test_tritonclient_grpc_refusals_name_what_was_wrong(grpc_client, auth, cifar_test_jpegs):
    client = triton.InferenceServerClient(grpc_client.address)
    images = triton.InferInput("images", [2], "BYTES")
    images.set_data_from_numpy(np.array([cifar_test_jpegs["cat"][0], b"GIF89a not really"], dtype=object))
    with pytest.raises(InferenceServerException) as bad_image:
        client.infer("cifar10", [images], headers=auth)
    assert bad_image.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad_image.value.message().startswith("element 1 of input 'images': not a decodable image")
    other = triton.InferInput("INPUT0", [1], "FP32")
    other.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as wrong_tensor:
        client.infer("cifar10", [other], headers=auth)
    assert wrong_tensor.value.message() == "expected 'images' of BYTES, got 'INPUT0' of FP32"
    for call in (lambda: client.infer("cifar10", [images]), lambda: client.get_model_metadata("cifar10")):
        with pytest.raises(InferenceServerException) as keyless:
            call()
        assert keyless.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("cifar9", headers=auth)
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    client.close()
