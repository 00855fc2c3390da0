"""Against a real TorchServe serving the test run's cifar10.mar (see conftest.server)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from helpers import assert_prediction

from serve.errors import ServiceError


def test_raw_body_prediction(server, cifar_test_jpegs):
    for images in cifar_test_jpegs.values():
        assert_prediction(server.predict(images[0]))


def test_the_flask_services_multipart_form(server, cifar_test_jpegs):
    """curl -X POST -F "image=@cat.jpg" .../predictions/cifar10: same answer as the raw body."""
    image = cifar_test_jpegs["cat"][0]
    assert server.predict(image, field="image") == server.predict(image)


def test_curl_upload_and_content_type(server, cifar_test_jpegs):
    """curl -T cat.jpg sends a PUT; TorchServe answers predictions on PUT as on POST."""
    response = requests.put(
        f"{server.inference}/predictions/cifar10",
        data=cifar_test_jpegs["ship"][0],
        headers=server.auth_headers("inference"),
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert_prediction(response.json())


def test_one_garbage_request_in_concurrent_batches_fails_alone(server, cifar_test_jpegs):
    images = [data for per_class in cifar_test_jpegs.values() for data in per_class]  # 50 real JPEGs
    garbage_at = {7, 23, 41}
    payloads = [b"this is not an image" if i in garbage_at else images[i] for i in range(len(images))]

    def send(payload):
        response = requests.post(
            f"{server.inference}/predictions/cifar10",
            data=payload,
            headers=server.auth_headers("inference"),
            timeout=60,
        )
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        results = list(pool.map(send, payloads))
    for index, (status, body) in enumerate(results):
        if index in garbage_at:
            assert status == 400 and body["type"] == "InvalidImage" and "not a decodable image" in body["message"]
        else:
            assert status == 200, body
            assert_prediction(body)
    # the worker survived: the same server still answers
    assert_prediction(server.predict(images[0]))


def test_empty_body_is_a_clear_400(server):
    with pytest.raises(ServiceError) as error:
        server.predict(b"")
    assert error.value.status == 400 and "empty" in error.value.body


def test_management_describes_and_scales_with_the_token(server):
    description = server.describe()[0]
    assert description["modelName"] == "cifar10" and description["batchSize"] > 1
    configured = len(description["workers"])
    assert configured == description["minWorkers"]
    server.scale(configured + 1)
    assert len([w for w in server.describe()[0]["workers"] if w["status"] == "READY"]) == configured + 1
    server.scale(configured)
    assert len(server.describe()[0]["workers"]) == configured


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}])
def test_calls_without_the_right_key_are_refused(server, cifar_test_jpegs, headers):
    management = requests.get(f"{server.management}/models/cifar10", headers=headers, timeout=30)
    inference = requests.post(
        f"{server.inference}/predictions/cifar10", data=cifar_test_jpegs["cat"][0], headers=headers, timeout=30
    )
    for response in (management, inference):
        assert response.status_code in (400, 401, 403)
        assert "Token Authorization failed" in response.json()["message"]


def test_metrics_count_the_models_requests(server, cifar_test_jpegs):
    server.predict(cifar_test_jpegs["dog"][0])
    metrics = server.metrics()
    lines = [line for line in metrics.splitlines() if line.startswith("ts_inference_requests_total")]
    assert any('model_name="cifar10"' in line and float(line.rsplit(" ", 1)[1]) > 0 for line in lines), metrics[:2000]


def test_gpu_configuration_serves_on_a_cpu_machine(tmp_path, trained_run, cifar_test_jpegs):
    """The GPU variant (handler/model-config.gpu.yaml: deviceType gpu, bigger batches) is the same
    handler code path; on a machine without a GPU TorchServe runs its workers on the CPU."""
    from helpers import PORT_BASE, REPO, torchserve

    from serve.archive import build_archive

    build_archive(trained_run, tmp_path / "store", model_config=REPO / "handler" / "model-config.gpu.yaml")
    with torchserve(tmp_path / "store", tmp_path, PORT_BASE + 10) as client:
        assert client.describe()[0]["batchSize"] == 128
        assert_prediction(client.predict(cifar_test_jpegs["horse"][0]))
