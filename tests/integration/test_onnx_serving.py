"""The ONNX export served by ONNX Runtime through a real TorchServe gives TorchScript's answers.

The TorchScript side is conftest's `server` (the test run's cifar10.mar); the ONNX side is an
archive of the same run built with `--format onnx`, on its own TorchServe (ports TEST_PORT_BASE+30..34).
"""

import json
import subprocess
import sys
import zipfile

import pytest
from helpers import PORT_BASE, metadata

from serve.archive import REPO, build_archive
from serve.client import Client, ServiceError
from serve.config import config_on_ports
from serve.server import ServerPaths, start, stop, wait_until_serving


@pytest.fixture(scope="module")
def onnx_archive(tmp_path_factory, trained_run):
    return build_archive(trained_run, tmp_path_factory.mktemp("onnx-store"), model_format="onnx")


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory, onnx_archive):
    workdir = tmp_path_factory.mktemp("onnx-torchserve")
    (workdir / "config.properties").write_text(config_on_ports(REPO / "config.properties", PORT_BASE + 30))
    paths = ServerPaths(config=workdir / "config.properties", workdir=workdir, model_store=onnx_archive.parent)
    start(paths)
    try:
        client = Client.from_config(paths.config, workdir)
        wait_until_serving(client, "cifar10", paths)
        yield client
    finally:
        stop(paths)


def test_training_exports_a_checked_onnx_model(trained_run):
    check = metadata(trained_run)["onnx_check"]
    assert (trained_run / "model.onnx").stat().st_size > 0
    assert check["checked_images"] == 1000 and check["top1_identical"] == 1000
    assert check["max_logit_difference"] <= 1e-4


def test_onnx_archive_carries_model_onnx_and_the_onnxruntime_config(onnx_archive):
    with zipfile.ZipFile(onnx_archive) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = archive.read(manifest["model"]["configFile"]).decode()
    assert "model.onnx" in names and "model.pt" not in names
    assert manifest["model"]["serializedFile"] == "model.onnx"
    assert "runtime: onnxruntime" in config


def test_onnx_runtime_answers_as_torchscript_through_torchserve(server, onnx_server, cifar_test_jpegs):
    """Same classes in the same order for every image; each confidence is rounded down to 4 decimals
    from probabilities that differ by ~1e-7, so it may differ by at most one unit of the 4th decimal."""
    images = [image for per_class in cifar_test_jpegs.values() for image in per_class]
    assert onnx_server.describe()[0]["batchSize"] == server.describe()[0]["batchSize"]
    for image in images:
        expected, got = server.predict(image), onnx_server.predict(image)
        assert [p["class"] for p in got["top3_predictions"]] == [p["class"] for p in expected["top3_predictions"]]
        for mine, theirs in zip(got["top3_predictions"], expected["top3_predictions"]):
            assert abs(mine["confidence"] - theirs["confidence"]) <= 1.5e-4


def test_onnx_runtime_answers_bad_input_with_400(onnx_server):
    with pytest.raises(ServiceError) as error:
        onnx_server.predict(b"not an image")
    assert error.value.status == 400 and json.loads(error.value.body)["reason"] == "not_an_image"


def test_handler_modules_import_without_onnxruntime():
    """onnxruntime is needed only by ONNX archives: the handler's image module imports without it."""
    blocked = "import sys; sys.modules['onnxruntime'] = None; sys.path.insert(0, 'handler'); import cifar10_images"
    subprocess.run([sys.executable, "-c", blocked], cwd=REPO, check=True)
