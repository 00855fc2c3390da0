"""Logits out, JSON answers: softmax and the top 3 in numpy (no runtime's tensors needed), and the
JSON body of a rejected request. Packed beside cifar10_handler.py in the .mar."""

import json

import numpy as np

TOP_K = 3


def probabilities_of(logits) -> np.ndarray:
    """The softmax of each row of `logits` (N x classes, anything numpy can read)."""
    logits = np.asarray(logits, dtype=np.float32)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def answer_bodies(logits, classes: list[str]) -> list[str]:
    """The seed's JSON answer per row of `logits`: top class, its confidence, and the top 3 with theirs."""
    return probability_answers(probabilities_of(logits), classes)


def probability_answers(probabilities: np.ndarray, classes: list[str]) -> list[str]:
    """answer_bodies of the class probabilities (probabilities_of the logits)."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    top_probabilities = np.take_along_axis(probabilities, top, axis=1).astype(np.float64)
    confidences = (np.floor(top_probabilities * 1e4) / 1e4).tolist()  # rounded down: never sums above 1
    bodies = []
    for row_confidences, row_classes in zip(confidences, top.tolist()):
        top3 = [{"class": classes[c], "confidence": p} for p, c in zip(row_confidences, row_classes)]
        bodies.append(
            json.dumps({"prediction": top3[0]["class"], "confidence": top3[0]["confidence"], "top3_predictions": top3})
        )
    return bodies


def error_body(error) -> str:
    """The answer to an InvalidImage (cifar10_images.py): its status, reason and message."""
    return json.dumps({"code": error.status, "type": "InvalidImage", "reason": error.reason, "message": str(error)})
