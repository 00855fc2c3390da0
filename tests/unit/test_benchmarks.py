"""The benchmarks' commands load and take their options, and the small pieces they share behave;
the measurements themselves are run by hand (docs/performance.md) or on a GPU machine (make gpu-check)."""

import importlib
from pathlib import Path

import cifar10_v2
import pytest
from cifar10_images import request_payload
from helpers import synthetic_jpegs

from benchmarks.gpu_serving import gpu_use
from benchmarks.systems import (
    BATCHING_SUMS,
    grpc_request,
    metric_samples,
    time_breakdown,
    until,
    v2_listing,
)
from harness.v2 import binary_request
from serve.torchserve_grpc.inference_pb2 import PredictionsRequest

COMMANDS = ["serving", "images", "portability", "training", "gpu_check", "log_volume"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_documented_command_loads_and_shows_its_options(command, capsys):
    main = importlib.import_module(f"benchmarks.{command}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert f"python -m benchmarks.{command}" in capsys.readouterr().out


def test_the_comparison_servers_load():
    for module in ("flask_app", "litserve_app"):
        importlib.import_module(f"benchmarks.alternatives.{module}")


def test_metric_samples_reads_every_label_set_of_that_metric_only():
    text = "\n".join(
        [
            "# TYPE ts_inference_requests_total counter",
            'ts_inference_requests_total{model_name="cifar10",model_version="default"} 12.0',
            'ts_inference_requests_total{model_name="other",model_version="default"} 3.0',
            "ts_inference_requests_total_other 100.0",
            "cifar10_batch_size_sum 1.5e3",
        ]
    )
    assert metric_samples(text, "ts_inference_requests_total") == [12.0, 3.0]
    assert metric_samples(text, "cifar10_batch_size_sum") == [1500.0]
    assert metric_samples(text, "cifar10_batch_size_count") == []


def test_time_breakdown_divides_the_running_sums():
    sums = dict.fromkeys(BATCHING_SUMS, 0.0)
    assert time_breakdown(sums) == {}  # nothing served yet
    sums.update(
        ts_inference_requests_total=10, ts_queue_latency_microseconds=5e3, ts_inference_latency_microseconds=2e4
    )
    sums.update(cifar10_batch_size_count=4, cifar10_batch_size_sum=10)
    sums.update(cifar10_decode_seconds_sum=0.004, cifar10_inference_seconds_sum=0.008)
    assert time_breakdown(sums) == pytest.approx(
        {
            "queue_ms_per_request": 0.5,
            "inference_ms_per_request": 2.0,
            "batch_size_mean": 2.5,
            "decode_ms_per_batch": 1.0,
            "model_ms_per_batch": 2.0,
        }
    )


def test_until_retries_the_named_errors_then_gives_up():
    attempts = iter([OSError("not yet"), None, "ready"])

    def attempt():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert until(attempt, (OSError,), 5, "never") == "ready"
    with pytest.raises(TimeoutError, match="no answer within 0 s"):
        until(lambda: False, (OSError,), 0, "no answer")
    with pytest.raises(ValueError):
        until(lambda: int("x"), (OSError,), 5, "other errors are not retried")


def test_gpu_use_without_a_gpu_reports_nothing(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with gpu_use() as figures:
        pass
    assert figures == {}


def test_the_v2_rows_requests_are_what_the_handler_reads_back(tmp_path):
    """The serving benchmark's v2 row sends each listed image as one v2 request (binary data, JSON
    outputs): the handler's own parser gets the image back, and wrk's list names each body with
    its header's length."""
    images = synthetic_jpegs(2)
    body, header_length = binary_request(images[:1])
    headers = {"Inference-Header-Content-Length": str(header_length)}
    parsed, outputs = cifar10_v2.parse(bytearray(body), headers, max_images=1)
    assert parsed == images[:1] and outputs.binary == dict.fromkeys(cifar10_v2.OUTPUTS, False)
    for index, image in enumerate(images):
        (tmp_path / f"image-{index}").write_bytes(image)
    listing = tmp_path / "images-2.txt"
    listing.write_text("".join(f"{tmp_path / f'image-{index}'}\n" for index in range(2)))
    lines = [line.split() for line in v2_listing(listing).read_text().splitlines()]
    assert [(Path(path).read_bytes(), int(length)) for path, length in lines] == [binary_request([i]) for i in images]


def test_the_grpc_rows_requests_are_what_the_handler_reads_back():
    """The serving benchmark's gRPC row sends each image as TorchServe's Predictions request, whose
    input the worker hands the handler as the row it reads the image from."""
    image = synthetic_jpegs(1)[0]
    request = PredictionsRequest.FromString(grpc_request(image))
    assert request.model_name == "cifar10" and request.model_version == ""
    assert request_payload(dict(request.input)) == image
