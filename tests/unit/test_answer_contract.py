"""The prediction answer's contract (docs/prediction.schema.json and harness.answers): what the
handler writes passes it, and each way an answer can be wrong is caught."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest

from harness.answers import SCHEMA_FILE, answer_problem
from model import CLASSES
from repo import REPO

sys.path.insert(0, str(REPO / "handler"))
import json

from cifar10_answers import answer_bodies


def test_every_answer_the_handler_writes_passes_the_contract():
    logits = np.random.default_rng(0).normal(scale=4, size=(200, len(CLASSES)))
    logits[0] = 0  # ten equal probabilities: a tie
    for body in answer_bodies(logits, list(CLASSES)):
        assert answer_problem(json.loads(body)) is None, body


GOOD = {
    "prediction": "cat",
    "confidence": 0.6,
    "top3_predictions": [
        {"class": "cat", "confidence": 0.6},
        {"class": "dog", "confidence": 0.3},
        {"class": "frog", "confidence": 0.1},
    ],
}


def spoilt(change) -> dict:
    answer = copy.deepcopy(GOOD)
    change(answer)
    return answer


@pytest.mark.parametrize(
    "answer, complaint",
    [
        (spoilt(lambda a: a.pop("confidence")), "required"),
        (spoilt(lambda a: a.update(extra=1)), "Additional properties"),
        (spoilt(lambda a: a["top3_predictions"].pop()), "top3_predictions"),
        (spoilt(lambda a: a["top3_predictions"][1].update(confidence=1.5)), "top3_predictions/1/confidence"),
        (spoilt(lambda a: a["top3_predictions"][2].update({"class": "unicorn"})), "CIFAR-10"),
        (spoilt(lambda a: a["top3_predictions"][2].update({"class": "dog"})), "distinct"),
        (spoilt(lambda a: a["top3_predictions"].reverse()), "decreasing"),
        (spoilt(lambda a: a["top3_predictions"][2].update(confidence=0.3)), "sum above 1"),
        (spoilt(lambda a: a.update(prediction="dog")), "first of top3"),
        ([GOOD], "is not of type 'object'"),
    ],
)
def test_each_wrong_answer_is_named(answer, complaint):
    assert complaint in (answer_problem(answer) or ""), answer_problem(answer)


def test_the_api_page_links_the_schema():
    assert SCHEMA_FILE.name in (REPO / "docs" / "api.md").read_text()
