"""The handler class itself, in this process, with TorchServe's own Context and RequestProcessor
(the objects its worker hands a handler) over a model folder laid out as the .mar unpacks it.
No Java, no server: what a batch of mixed requests gets back, request by request."""

from __future__ import annotations

import gc
import io
import json
import logging
import math
import re
import subprocess
import sys
import warnings

import cifar10_v2
import numpy as np
import pytest
import torch
import yaml
from cifar10_handler import Cifar10Handler
from cifar10_metrics import CONFIDENCE_BUCKETS
from cifar10_options import HandlerConfigError, HandlerOptions
from helpers import REPO, assert_prediction
from PIL import Image
from tritonclient.http import InferResult
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from harness.v2 import binary_request, json_request
from model import CLASSES, SimpleCNN
from train.export import export_torchscript

BATCH_SIZE = 8
# what `serve archive` packs of a training run's metadata.json: 100 test images of each class, most
# predicted right, the rest predicted as the next class; 3 airplanes predicted as trucks
CONFUSION = [[90 if j == i else 10 if j == (i + 1) % 10 else 0 for j in range(10)] for i in range(10)]
CONFUSION[0][0], CONFUSION[0][9] = 87, 3
RUN_METADATA = {"confusion_matrix": CONFUSION, "low_confidence_share": 0.25}


def emitted(caplog, name: str) -> list[tuple[float, dict]]:
    """(value, labels) of each `[METRICS]` line the handler logged for metric `name`."""
    found = []
    for record in caplog.records:
        line = record.getMessage()
        if line.startswith(f"[METRICS]{name}."):
            value, labels = line.split(":", 1)[1].split("|")[:2]
            found.append((float(value), dict(label.split(":", 1) for label in labels.removeprefix("#").split(","))))
    return found


def jpeg(color, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """What TorchServe unpacks a cifar10.mar into: the model file (TorchScript or ONNX) and index_to_name.json."""
    folder = tmp_path_factory.mktemp("cifar10-mar")
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    export_torchscript(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), folder / "model.pt")
    with warnings.catch_warnings():  # the TorchScript-based exporter: far quicker than train.export's checked one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(2, 3, 32, 32, dtype=torch.uint8),), folder / "model.onnx", dynamo=False,
            input_names=["pixels"], output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}},
        )  # fmt: skip
    (folder / "index_to_name.json").write_text(json.dumps({str(i): name for i, name in enumerate(CLASSES)}))
    (folder / "metadata.json").write_text(json.dumps(RUN_METADATA))
    return folder


def make_context(model_dir, handler_section: dict) -> Context:
    """TorchServe's own Context for a worker of the archive in `model_dir`."""
    manifest = {"model": {"modelName": "cifar10", "modelVersion": "1.0", "serializedFile": "model.pt"}}
    metrics = MetricsCacheYamlImpl(config_file_path=str(REPO / "deploy" / "torchserve" / "metrics.yaml"))
    metrics.initialize_cache()
    return Context(
        "cifar10", str(model_dir), manifest, BATCH_SIZE, None, "0.12.0", metrics=metrics,
        model_yaml_config={"handler": handler_section},
    )  # fmt: skip


@pytest.fixture(scope="module")
def context(model_dir):
    return make_context(model_dir, {"torch_threads": 1})


@pytest.fixture(scope="module")
def handler(context):
    handler = Cifar10Handler()
    handler.initialize(context)
    return handler


def handle(handler, context, requests: list[tuple[dict, dict]]) -> list[tuple[int, dict]]:
    """Sends one batch as TorchServe's worker does: each request a row of fields and its headers.
    Returns (status, JSON body) per request, in order."""
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    bodies = handler.handle([row for row, _ in requests], context)
    assert len(bodies) == len(requests)
    return [(context.get_response_status(i)[0], json.loads(body)) for i, body in enumerate(bodies)]


def raw_body(data: bytes) -> tuple[dict, dict]:
    return {"body": bytearray(data)}, {"body": {"content-type": "image/jpeg"}}


def form(**fields) -> tuple[dict, dict]:
    """A multipart form: bytes values are files (they carry a content type), str values are text fields."""
    row = {name: bytearray(value) if isinstance(value, bytes) else value for name, value in fields.items()}
    headers = {
        name: {"content-type": "image/jpeg" if isinstance(value, bytes) else None} for name, value in fields.items()
    }
    return row, headers


def test_a_good_batch_gets_one_answer_per_request(handler, context):
    answers = handle(handler, context, [raw_body(jpeg((i * 30, 90, 200 - i * 20))) for i in range(BATCH_SIZE)])
    for status, body in answers:
        assert status == 200
        assert_prediction(body)


def test_bad_requests_fail_alone_and_the_rest_of_the_batch_answers(handler, context):
    good = jpeg((200, 120, 40))
    large = jpeg((90, 20, 240), size=256)
    answers = handle(
        handler,
        context,
        [
            raw_body(good),
            raw_body(b""),
            form(image=good),
            raw_body(b"definitely not an image"),
            form(note="hello"),
            raw_body(large[: len(large) // 2]),
            raw_body(good),
        ],
    )
    statuses = [status for status, _ in answers]
    assert statuses == [200, 400, 200, 400, 400, 400, 200]
    reasons = [body.get("reason") for status, body in answers if status == 400]
    assert reasons == ["empty", "not_an_image", "no_file", "corrupt"]
    for status, body in answers:
        if status == 400:
            assert body["code"] == 400 and body["type"] == "InvalidImage" and body["message"]
        else:
            assert_prediction(body)
    assert answers[0][1] == answers[2][1] == answers[6][1]  # the same image, raw or in a form: the same answer


def test_a_batch_of_only_bad_requests_answers_each_with_400(handler, context):
    answers = handle(handler, context, [raw_body(b""), raw_body(b"GIF89a broken")])
    assert [status for status, _ in answers] == [400, 400]


def test_the_answer_is_the_models(handler, context, model_dir):
    """The handler's top class is the TorchScript model's own argmax on the same pixels."""
    image = jpeg((10, 200, 60))
    [(status, body)] = handle(handler, context, [raw_body(image)])
    pixels = torch.from_numpy(np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).copy())
    logits = torch.jit.load(str(model_dir / "model.pt"))(pixels.permute(2, 0, 1).unsqueeze(0))
    assert status == 200 and body["prediction"] == CLASSES[int(logits.argmax())]


# The handler serving model.onnx in a Python where `import torch` fails, as in the slim serving image:
# the JSON bodies of one batch of JPEGs (argv[2:]) on stdout.
WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # import torch raises ImportError
sys.path.insert(0, "handler")
from cifar10_handler import Cifar10Handler
from cifar10_metrics import CONFIDENCE_BUCKETS
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

metrics = MetricsCacheYamlImpl(config_file_path="deploy/torchserve/metrics.yaml")
metrics.initialize_cache()
manifest = {"model": {"modelName": "cifar10", "modelVersion": "1.0", "serializedFile": "model.onnx"}}
context = Context("cifar10", sys.argv[1], manifest, 8, None, "0.12.0", metrics=metrics,
                  model_yaml_config={"handler": {"runtime": "onnxruntime", "torch_threads": 1}})
handler = Cifar10Handler()
handler.initialize(context)
rows = [{"body": bytearray(open(path, "rb").read())} for path in sys.argv[2:]] + [{"body": bytearray(b"junk")}]
context.request_processor = [RequestProcessor({"body": {"content-type": "image/jpeg"}}) for _ in rows]
print(json.dumps([[context.get_response_status(i)[0], json.loads(body)] for i, body in enumerate(handler.handle(rows, context))]))
"""


def test_onnx_runtime_answers_without_torch_as_torchscript_does(handler, context, model_dir, tmp_path):
    """The ONNX path imports no torch (the slim image has none) and answers as TorchScript does:
    the same top 3 classes, confidences within 1e-4 (float32 rounding moves a 1e-4 step rarely)."""
    files = []
    for i in range(BATCH_SIZE):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(jpeg((i * 30, 255 - i * 25, 60 + i * 20)))
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(model_dir), *map(str, files)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    served = json.loads(run.stdout.splitlines()[-1])
    expected = handle(handler, context, [raw_body(path.read_bytes()) for path in files])
    assert served[-1][0] == 400 and served[-1][1]["reason"] == "not_an_image"
    for (status, body), (expected_status, expected_body) in zip(served, expected):
        assert status == expected_status == 200
        top3 = [(p["class"], p["confidence"]) for p in body["top3_predictions"]]
        expected_top3 = [(p["class"], p["confidence"]) for p in expected_body["top3_predictions"]]
        assert [c for c, _ in top3] == [c for c, _ in expected_top3]
        assert all(abs(a - b) <= 1e-4 + 1e-9 for (_, a), (_, b) in zip(top3, expected_top3))


def test_a_batch_of_bad_requests_leaves_no_garbage_holding_their_bodies(handler, context):
    """Its errors would otherwise keep the raising frames, and with them the bodies, in reference
    cycles that only the cyclic collector frees: an idle worker kept hundreds of MiB after a flood."""
    junk = np.random.default_rng(0).bytes(256 * 1024)
    gc.collect()
    gc.disable()
    try:
        answers = handle(
            handler, context, [raw_body(junk), form(image="not a file"), raw_body(b""), v2_json([b"", junk])]
        )
        assert [status for status, _ in answers] == [400, 400, 400, 400]
        del answers
        assert gc.collect() == 0  # nothing unreachable: every body was freed when its batch ended
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "section, complaint",
    [
        ({"torch_thread": 1}, "unknown keys ['torch_thread']"),
        ({"runtime": "tensorrt"}, "is not one of"),
        ({"torch_threads": "2"}, "is not a int"),
        ({"gpu_decode": "yes"}, "is not a bool"),
        ({"gpu_decode_min_batch": 0}, "gpu_decode_min_batch >= 1"),
    ],
)
def test_a_wrong_handler_option_stops_initialize_with_its_reason(model_dir, section, complaint):
    with pytest.raises(HandlerConfigError, match=re.escape(complaint)):
        Cifar10Handler().initialize(make_context(model_dir, section))


@pytest.mark.parametrize("config", sorted((REPO / "handler").glob("model-config*.yaml")), ids=lambda path: path.name)
def test_every_shipped_model_config_has_valid_handler_options(config):
    HandlerOptions.from_section(yaml.safe_load(config.read_text()).get("handler"))


# --- The Open Inference Protocol v2 (handler/cifar10_v2.py): what the frontend agent routes from /v2/models/cifar10/infer


def v2_json(images: list[bytes], **request) -> tuple[dict, dict]:
    """A v2 request in JSON, as the worker hands it over (parsed): each image in base64."""
    return {"body": json_request(images, **request)}, {
        "body": {"content-type": "application/json"},
        "inference_protocol": "v2",
    }


def v2_binary(images: list[bytes], **request) -> tuple[dict, dict]:
    """A v2 request with the binary data extension: the JSON header, then each image length-prefixed."""
    body, header_length = binary_request(images, **request)
    headers = {
        "body": {"content-type": ""},
        "inference_protocol": "v2",
        "Inference-Header-Content-Length": str(header_length),
    }
    return {"body": bytearray(body)}, headers


def v2_handle(handler, context, requests):
    """One batch; (status, body bytes, response headers) per request."""
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    bodies = handler.handle([row for row, _ in requests], context)
    return [
        (
            context.get_response_status(i)[0],
            body if isinstance(body, bytes) else body.encode(),
            context.get_response_headers(i),
        )
        for i, body in enumerate(bodies)
    ]


def floor4(value: float) -> float:
    return math.floor(value * 1e4) / 1e4


def test_a_v2_request_is_one_request_of_the_batch_and_answers_as_predictions_do(handler, context):
    images = [jpeg((i * 40, 200 - i * 30, 90)) for i in range(4)]
    answers = v2_handle(
        handler,
        context,
        [raw_body(images[0]), v2_json(images, id="request-7"), raw_body(images[3]), v2_binary(images[1:3])],
    )
    assert [status for status, _, _ in answers] == [200] * 4
    plain = [json.loads(answers[i][1]) for i in (0, 2)]
    v2 = json.loads(answers[1][1])
    assert v2["model_name"] == "cifar10" and v2["model_version"] == "1.0" and v2["id"] == "request-7"
    outputs = {output["name"]: output for output in v2["outputs"]}
    assert {name: (o["datatype"], o["shape"]) for name, o in outputs.items()} == {
        "label": ("BYTES", [4]), "confidence": ("FP32", [4]), "probabilities": ("FP32", [4, 10]),
    }  # fmt: skip
    probabilities = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(4, 10)
    for index, answer in zip((0, 3), plain):
        assert outputs["label"]["data"][index] == answer["prediction"]
        assert floor4(outputs["confidence"]["data"][index]) == answer["confidence"]
        for p in answer["top3_predictions"]:
            assert floor4(float(probabilities[index, CLASSES.index(p["class"])])) == p["confidence"]
    # binary request, JSON answer by default: the same as the JSON request's images 1 and 2
    binary = json.loads(answers[3][1])
    assert binary["outputs"][0]["data"] == outputs["label"]["data"][1:3] and "id" not in binary
    assert binary["outputs"][2]["data"] == outputs["probabilities"]["data"][10:30]


def test_v2_outputs_come_as_binary_data_when_asked(handler, context):
    images = [jpeg((250, 20, 20)), jpeg((20, 20, 250))]
    [(_, as_json, _)] = v2_handle(handler, context, [v2_json(images)])
    [(status, body, headers)] = v2_handle(
        handler, context, [v2_binary(images, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}])]
    )  # fmt: skip
    assert status == 200 and headers["Inference-Header-Content-Length"]
    result = InferResult.from_response_body(body, header_length=int(headers["Inference-Header-Content-Length"]))
    expected = {output["name"]: output["data"] for output in json.loads(as_json)["outputs"]}
    assert [output["name"] for output in result.get_response()["outputs"]] == ["probabilities", "label"]
    assert result.as_numpy("probabilities").ravel().tolist() == expected["probabilities"]
    assert result.as_numpy("label").tolist() == expected["label"]  # a JSON output beside a binary one
    [(_, body, headers)] = v2_handle(handler, context, [v2_json(images, parameters={"binary_data_output": True})])
    result = InferResult.from_response_body(body, header_length=int(headers["Inference-Header-Content-Length"]))
    assert [label.decode() for label in result.as_numpy("label")] == expected["label"]
    assert result.as_numpy("confidence").tolist() == expected["confidence"]


def test_a_v2_request_with_a_bad_image_fails_alone_naming_the_image(handler, context):
    good = jpeg((30, 160, 30))
    answers = v2_handle(
        handler,
        context,
        [v2_json([good, good, b"not an image"]), raw_body(good), v2_binary([good, b""]), v2_json([good])],
    )
    assert [status for status, _, _ in answers] == [400, 200, 400, 200]
    assert json.loads(answers[0][1]) == {
        "error": "element 2 of input 'images': not a decodable image: expected JPEG, PNG, GIF, BMP, WebP or TIFF bytes"
    }
    assert json.loads(answers[2][1])["error"].startswith("element 1 of input 'images': ")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"inputs": []}, "expected 'inputs' to hold one input"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}, "expected 'images' of BYTES"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]}, "the shape holds 2 images"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}, "element 0 of 'data' is not base64"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [BATCH_SIZE + 1], "data": []}]}, "send 1 to 8 a request"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}], "outputs": [{"name": "logits"}]}, "no output named 'logits'"),
        ("not json", "is not JSON"),
    ],
)  # fmt: skip
def test_a_v2_request_that_breaks_the_protocol_gets_400_saying_why(handler, context, request_, message):
    headers = {"body": {"content-type": "application/json"}, "inference_protocol": "v2"}
    [(status, body, _)] = v2_handle(handler, context, [({"body": request_}, headers)])
    assert status == 400 and message in json.loads(body)["error"]


def test_a_v2_binary_request_whose_lengths_do_not_add_up_gets_400(handler, context):
    row, headers = v2_binary([jpeg((1, 2, 3))])
    answers = v2_handle(
        handler,
        context,
        [({"body": row["body"][:-5]}, headers), ({"body": row["body"] + b"extra"}, headers), ({"body": row["body"]}, {**headers, "Inference-Header-Content-Length": "x"})],
    )  # fmt: skip
    assert [status for status, _, _ in answers] == [400, 400, 400]
    errors = [json.loads(body)["error"] for _, body, _ in answers]
    assert (
        "binary_data_size" in errors[0]
        and "5 bytes after" in errors[1]
        and "Inference-Header-Content-Length" in errors[2]
    )


def test_the_v2_metadata_names_what_the_handler_answers():
    assert cifar10_v2.INPUT == {"name": "images", "datatype": "BYTES", "shape": [-1]}
    assert cifar10_v2.OUTPUTS["probabilities"]["shape"] == [-1, len(CLASSES)]
    probabilities = np.full((1, len(CLASSES)), 0.1, np.float32)
    body, _ = cifar10_v2.response(
        probabilities, CLASSES, cifar10_v2.Outputs(None, dict.fromkeys(cifar10_v2.OUTPUTS, False)), "m", "1"
    )
    for output in json.loads(body)["outputs"]:
        assert output["datatype"] == cifar10_v2.OUTPUTS[output["name"]]["datatype"]


def test_a_v2_request_sent_as_a_form_gets_400(handler, context):
    row, headers = form(image=jpeg((5, 5, 5)))
    [(status, body, _)] = v2_handle(handler, context, [(row, {**headers, "inference_protocol": "v2"})])
    assert status == 400 and json.loads(body) == {"error": "send the v2 request as the body, not as a form"}


def test_a_worker_counts_its_start_and_sets_its_models_reference_mix(context, caplog):
    caplog.set_level(logging.INFO)
    Cifar10Handler().initialize(context)
    assert emitted(caplog, "cifar10_worker_starts_total") == [(1, {"model_name": "cifar10", "model_version": "1.0"})]
    reference = {labels["class"]: value for value, labels in emitted(caplog, "cifar10_reference_class_share")}
    assert list(reference) == list(CLASSES)
    assert reference["airplane"] == 0.097 and reference["automobile"] == 0.1 and reference["truck"] == 0.103
    assert emitted(caplog, "cifar10_reference_low_confidence_share") == [
        (0.25, {"model_name": "cifar10", "model_version": "1.0"})
    ]


def test_the_confidence_histogram_counts_each_answer_in_its_cumulative_buckets(handler, context, caplog):
    images = [raw_body(jpeg((i * 30, 90, 200 - i * 20))) for i in range(BATCH_SIZE - 1)]
    caplog.set_level(logging.INFO)
    answers = handle(handler, context, [*images, raw_body(b"not an image")])
    confidences = [body["confidence"] for status, body in answers if status == 200]
    buckets = {labels["le"]: value for value, labels in emitted(caplog, "cifar10_prediction_confidence_bucket")}
    expected = {str(bound): sum(c <= bound for c in confidences) for bound in CONFIDENCE_BUCKETS}
    assert buckets == {**{le: n for le, n in expected.items() if n}, "+Inf": len(confidences)}
    assert [labels for _, labels in emitted(caplog, "cifar10_batch_size")] == [
        {"model_name": "cifar10", "model_version": "1.0"}
    ]  # no per-process label
