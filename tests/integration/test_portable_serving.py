"""The portable exports served through a real TorchServe give TorchScript's answers: model.onnx run
by ONNX Runtime, and model.so (torch.export + AOTInductor, the form TorchServe 0.12 loads).

The TorchScript side is conftest's `server` (the test run's cifar10.mar); each other format is an
archive of the same run built with `python -m serve archive --format ...`, on its own TorchServe
(ports TEST_PORT_BASE+40..44, one at a time). The AOTInductor case compiles C++ first
(`python -m train.aot`): about 3 minutes on 2 busy cores.
"""

import json
import subprocess
import sys
import zipfile

import pytest
from helpers import PORT_BASE, metadata, torchserve

from harness.verify import compare
from repo import REPO
from serve.archive import build_archive
from serve.errors import ServiceError

# --format -> (the file the archive must carry, the handler runtime its model config names)
FORMATS = {"onnx": ("model.onnx", "onnxruntime"), "aotinductor": ("model.so", "aotinductor")}


@pytest.fixture(scope="module", params=sorted(FORMATS))
def portable(request, tmp_path_factory, trained_run):
    """(format, archive, client of a TorchServe serving it)."""
    model_format = request.param
    if model_format == "aotinductor" and not (trained_run / "model.so").exists():
        subprocess.run([sys.executable, "-m", "train.aot", "--run", str(trained_run)], cwd=REPO, check=True)
    archive = build_archive(trained_run, tmp_path_factory.mktemp(f"{model_format}-store"), model_format=model_format)
    workdir = tmp_path_factory.mktemp(f"{model_format}-torchserve")
    with torchserve(archive.parent, workdir, PORT_BASE + 40) as client:
        yield model_format, archive, client


def test_training_exports_a_checked_onnx_model(trained_run):
    check = metadata(trained_run)["onnx_check"]
    assert (trained_run / "model.onnx").stat().st_size > 0
    assert check["checked_images"] == 1000 and check["top1_identical"] == 1000
    assert check["max_logit_difference"] <= 1e-4


def test_archive_carries_the_format_and_its_runtime(portable):
    model_format, archive, _ = portable
    model_file, runtime = FORMATS[model_format]
    with zipfile.ZipFile(archive) as packed:
        names = set(packed.namelist())
        manifest = json.loads(packed.read("MAR-INF/MANIFEST.json"))
        config = packed.read(manifest["model"]["configFile"]).decode()
    assert model_file in names and "model.pt" not in names
    assert manifest["model"]["serializedFile"] == model_file
    assert f"runtime: {runtime}" in config


def test_answers_are_torchscripts_through_torchserve(server, portable, trained_run, data_source):
    """Every test image of the run: served = evaluated, and the same top 3 as the TorchScript server
    with each confidence within harness.verify's tolerance (one unit of the 4th decimal)."""
    _, _, client = portable
    assert client.describe()[0]["batchSize"] == server.describe()[0]["batchSize"]
    result = compare(client, trained_run, str(data_source), reference=server)
    assert result.ok and result.same_answer == result.images, (result.mismatches[:5], result.errors[:5])


def test_bad_input_gets_400(portable):
    _, _, client = portable
    with pytest.raises(ServiceError) as error:
        client.predict(b"not an image")
    assert error.value.status == 400 and json.loads(error.value.body)["reason"] == "not_an_image"


def test_handler_modules_import_without_onnxruntime():
    """onnxruntime is needed only by ONNX archives: the handler imports without it."""
    blocked = "import sys; sys.modules['onnxruntime'] = None; sys.path.insert(0, 'handler'); import cifar10_handler"
    subprocess.run([sys.executable, "-c", blocked], cwd=REPO, check=True)
