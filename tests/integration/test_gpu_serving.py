"""GPU serving config (serve/gpu_sizing.py, `python -m serve archive --device gpu`): the sizing
rule on described machines, the sized config served by a real TorchServe (on this CPU), and the
command's answer on a machine without a GPU."""

import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from helpers import PORT_BASE, torchserve

from repo import REPO
from serve.archive import GPU_MODEL_CONFIG, build_archive
from serve.gpu_sizing import MAX_QUEUE, MIN_QUEUE, Machine, sized_config

TEMPLATE = yaml.safe_load(GPU_MODEL_CONFIG.read_text())


@pytest.mark.parametrize(
    ("machine", "workers"),
    [
        (
            Machine(cpus=16, gpus=1, gpu_free_mib=140_000, gpu_name="H200"),
            12,
        ),  # a quarter of the cores for the frontend
        (Machine(cpus=16, gpus=1, gpu_free_mib=80_000, gpu_name="H100"), 12),
        (Machine(cpus=64, gpus=1, gpu_free_mib=10_000, gpu_name="small"), 7),  # bound by GPU memory
        (Machine(cpus=64, gpus=2, gpu_free_mib=10_000, gpu_name="small"), 14),
        (Machine(cpus=2, gpus=1, gpu_free_mib=24_000, gpu_name="L4"), 2),
        (Machine(cpus=16, gpus=1, gpu_free_mib=500, gpu_name="busy"), 1),  # never fewer than one
    ],
)
def test_workers_follow_cores_and_gpu_memory(machine, workers):
    config = sized_config(TEMPLATE, machine)
    assert config["minWorkers"] == config["maxWorkers"] == workers
    assert config["jobQueueSize"] == min(MAX_QUEUE, max(MIN_QUEUE, 2 * workers * TEMPLATE["batchSize"]))
    assert {key: config[key] for key in TEMPLATE if key not in ("minWorkers", "maxWorkers")} == {
        key: TEMPLATE[key] for key in TEMPLATE if key not in ("minWorkers", "maxWorkers")
    }


def test_workers_can_be_named():
    config = sized_config(TEMPLATE, Machine(16, 1, 140_000, "H200"), workers=5)
    assert config["minWorkers"] == config["maxWorkers"] == 5 and config["jobQueueSize"] == 1280


def test_gpu_config_decodes_jpegs_on_the_gpu_with_one_thread_per_worker():
    assert TEMPLATE["deviceType"] == "gpu"
    assert TEMPLATE["handler"] == {"torch_threads": 1, "gpu_decode": True, "gpu_decode_min_batch": 8}


def test_sized_config_is_served_by_torchserve(tmp_path, trained_run, cifar_test_jpegs):
    """TorchServe takes the sized keys (jobQueueSize included); on this CPU machine its workers run on the CPU."""
    config = sized_config(TEMPLATE, Machine(cpus=2, gpus=1, gpu_free_mib=24_000, gpu_name="test"))
    (tmp_path / "model-config.yaml").write_text(yaml.safe_dump(config))
    build_archive(trained_run, tmp_path / "store", model_config=tmp_path / "model-config.yaml")
    with torchserve(tmp_path / "store", tmp_path, PORT_BASE + 20) as client:
        described = client.describe()[0]
        assert described["minWorkers"] == described["maxWorkers"] == 2 and described["batchSize"] == 128
        assert client.predict(cifar_test_jpegs["ship"][0])["prediction"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_archive_for_a_gpu_says_there_is_none_and_exits_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serve", "archive", "--device", "gpu", "--store", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "torch sees no CUDA device" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_make_archive_follows_the_device_it_is_asked_for(tmp_path, trained_run):
    """`make archive DEVICE=gpu` right after `make archive` packs the GPU config (and back again):
    the archive is rebuilt whenever the device differs from the last archive's, not only when a file
    changed. GPU_WORKERS sizes the GPU config without asking this machine for a GPU."""

    def archive(*options: str) -> dict:
        command = ["make", "--no-print-directory", "archive", f"RUN={trained_run}", f"STORE={tmp_path}", *options]
        subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=300)
        with zipfile.ZipFile(tmp_path / "cifar10.mar") as mar:
            return yaml.safe_load(mar.read("model-config.yaml"))

    assert "deviceType" not in archive()
    gpu = archive("DEVICE=gpu", "GPU_WORKERS=3")
    assert gpu["deviceType"] == "gpu" and gpu["minWorkers"] == 3 and gpu["handler"]["gpu_decode"] is True
    assert "deviceType" not in archive()
