"""The drain-the-queue batching policy (frontend/, on by default through config.properties' vmargs)
against TorchServe's own batching, each on a real TorchServe of its own (ports TEST_PORT_BASE+50..54
and +55..59; +60 for one that must not start): a lone request does not wait in the queue, a busy queue is taken whole, the answers
are the same, v2 protocol requests (docs/api.md) are batched as /predictions ones and answer as they do, and a
frontend the policy does not fit does not start.
"""

from __future__ import annotations

import base64
import re
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor
from math import floor

import pytest
import requests
from helpers import PORT_BASE, REPO, assert_prediction, require_tool

from frontend import without_agent
from harness.server import LocalServer
from model import CLASSES
from serve.client import Client
from serve.config import properties
from serve.errors import FrontendExited

CLIENTS = 32


@pytest.fixture(scope="module")
def drain_server(tmp_path_factory, model_store) -> LocalServer:
    with LocalServer(tmp_path_factory.mktemp("drain"), model_store, PORT_BASE + 50) as server:
        yield server


STOCK = {"vmargs": without_agent(properties(REPO / "config.properties")["vmargs"])}


@pytest.fixture(scope="module")
def stock_server(tmp_path_factory, model_store) -> LocalServer:
    """The same config with the agent left out of vmargs: TorchServe's own batching."""
    with LocalServer(tmp_path_factory.mktemp("stock"), model_store, PORT_BASE + 55, settings=STOCK) as server:
        yield server


def metric(client: Client, name: str) -> float:
    """The sum of every sample of `name` on /metrics (all labels together)."""
    samples = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", client.metrics(), re.M)
    return sum(float(value) for value in samples)


def lone_queue_times(client: Client, image: bytes, requests: int = 20) -> list[float]:
    """TorchServe's QueueTime (ms, whole milliseconds) of each of `requests` lone requests."""
    times = []
    for _ in range(requests):
        client.predict(image)
        times.append(metric(client, "QueueTime"))
    return times


def test_a_lone_request_does_not_wait_for_a_batch(drain_server, stock_server, cifar_test_jpegs):
    image = cifar_test_jpegs["cat"][0]
    drained, stock = lone_queue_times(drain_server.client, image), lone_queue_times(stock_server.client, image)
    # TorchServe's own batching waits maxBatchDelay (1 ms) for a second request that never comes.
    assert min(stock) >= 1, stock
    # The policy sends it at once: it spends under a millisecond in the queue.
    assert statistics.median(drained) == 0, drained


def test_under_32_clients_batches_hold_more_than_two_requests(drain_server, cifar_test_jpegs):
    client = drain_server.client
    images = [jpegs[0] for jpegs in cifar_test_jpegs.values()]
    lone = {index: client.predict(image)["prediction"] for index, image in enumerate(images)}
    batches, requests = metric(client, "cifar10_batch_size_count"), metric(client, "cifar10_batch_size_sum")

    def one_client(start: int) -> list[tuple[int, dict]]:
        own = client.copy()
        return [(i % len(images), own.predict(images[i % len(images)])) for i in range(start, start + 20)]

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [answer for chunk in pool.map(one_client, range(CLIENTS)) for answer in chunk]
    for index, answer in answers:
        assert_prediction(answer)
        assert answer["prediction"] == lone[index]
    batches = metric(client, "cifar10_batch_size_count") - batches
    requests = metric(client, "cifar10_batch_size_sum") - requests
    assert requests == len(answers)
    assert requests / batches > 2, f"{requests:.0f} requests in {batches:.0f} batches"


def test_under_32_v2_clients_batches_hold_more_than_two_requests_and_answer_as_predictions(
    drain_server, cifar_test_jpegs
):
    """v2 requests (docs/api.md) of one image each are batched as
    /predictions requests are, and each gets the class and the probabilities /predictions gives
    (its top-3 confidences are the probabilities rounded down to 4 decimals)."""
    client = drain_server.client
    images = [jpegs[1] for jpegs in cifar_test_jpegs.values()]
    lone = [client.predict(image) for image in images]
    batches, served = metric(client, "cifar10_batch_size_count"), metric(client, "cifar10_batch_size_sum")

    def one_client(start: int) -> list[tuple[int, dict]]:
        session = inference_session(client)
        return [(i % len(images), v2_infer(session, client, images[i % len(images)])) for i in range(start, start + 20)]

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [answer for chunk in pool.map(one_client, range(CLIENTS)) for answer in chunk]
    for index, outputs in answers:
        assert outputs["label"] == [lone[index]["prediction"]]
        assert floor(outputs["confidence"][0] * 1e4) / 1e4 == lone[index]["confidence"]
        for predicted in lone[index]["top3_predictions"]:
            probability = outputs["probabilities"][CLASSES.index(predicted["class"])]
            assert floor(probability * 1e4) / 1e4 == predicted["confidence"]
    batches = metric(client, "cifar10_batch_size_count") - batches
    served = metric(client, "cifar10_batch_size_sum") - served
    assert served == len(answers)
    assert served / batches > 2, f"{served:.0f} requests in {batches:.0f} batches"


def inference_session(client: Client) -> requests.Session:
    session = requests.Session()
    session.headers.update(client.auth_headers("inference"))
    return session


def v2_infer(session: requests.Session, client: Client, image: bytes) -> dict:
    """One v2 request (base64 JSON) for `image`; its outputs by name, the data as JSON lists."""
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
    answer = session.post(f"{client.inference}/v2/models/cifar10/infer", json={"inputs": [tensor]}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {output["name"]: output["data"] for output in answer.json()["outputs"]}


def test_answers_are_the_same_with_and_without_the_policy(drain_server, stock_server, cifar_test_jpegs):
    for jpegs in cifar_test_jpegs.values():
        for image in jpegs[:2]:
            assert drain_server.client.predict(image) == stock_server.client.predict(image)


def test_a_frontend_the_policy_does_not_fit_does_not_start(tmp_path, model_store):
    """A Model class of another shape on TorchServe's class path (its working directory comes
    first): the JVM stops before serving and says why."""
    source = tmp_path / "src" / "Model.java"
    source.parent.mkdir()
    source.write_text(
        "package org.pytorch.serve.wlm;\n"
        "public class Model {\n"
        "    public void pollBatch(String thread, long wait, java.util.Map<String, Object> jobs) {}\n"
        "}\n"
    )
    workdir = tmp_path / "torchserve"
    subprocess.run([require_tool("javac"), "-d", str(workdir), str(source)], check=True)
    server = LocalServer(workdir, model_store, PORT_BASE + 60, timeout=60)
    try:
        with pytest.raises(FrontendExited, match="cannot change TorchServe's frontend"):
            server.start()
    finally:
        server.stop()
