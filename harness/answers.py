"""The prediction answer's contract, checked one way by every checker (the tests, the load tests,
the benchmarks): its shape by the JSON Schema beside docs/api.md, its meaning by `meaning_problem`."""

from __future__ import annotations

import json

import jsonschema

from model import CLASSES
from repo import REPO

SCHEMA_FILE = REPO / "docs" / "prediction.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def answer_problem(answer) -> str | None:
    """Why a 200 answer is not a valid prediction (None when it is)."""
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(answer))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the answer"
        return f"{where}: {error.message[:200]}"
    return meaning_problem(answer)


def meaning_problem(answer: dict) -> str | None:
    """The rules a schema cannot state: CIFAR-10 classes, distinct, sorted by decreasing
    confidence, the first one being the prediction, confidences summing to at most 1."""
    top3 = answer["top3_predictions"]
    classes = [p["class"] for p in top3]
    if any(c not in CLASSES for c in classes) or len(set(classes)) != len(classes):
        return f"classes not distinct CIFAR-10 names: {classes}"
    confidences = [p["confidence"] for p in top3]
    if confidences != sorted(confidences, reverse=True):
        return f"confidences not in decreasing order: {confidences}"
    if sum(confidences) > 1 + 1e-9:
        return f"confidences sum above 1: {confidences}"
    if (answer["prediction"], answer["confidence"]) != (classes[0], confidences[0]):
        return "prediction/confidence differ from the first of top3_predictions"
    return None
