"""The prediction answer's contract, checked the same way by the load tests and the test suite."""

from __future__ import annotations

from model import CLASSES


def answer_problem(answer) -> str | None:
    """Why a 200 answer is not a valid classification (None when it is)."""
    if not isinstance(answer, dict) or set(answer) != {"prediction", "confidence", "top3_predictions"}:
        return f"unexpected JSON shape: {str(answer)[:200]}"
    top3 = answer["top3_predictions"]
    if (
        not isinstance(top3, list)
        or len(top3) != 3
        or not all(isinstance(p, dict) and set(p) == {"class", "confidence"} for p in top3)
    ):
        return f"top3_predictions is not three {{class, confidence}}: {str(top3)[:200]}"
    classes = [p["class"] for p in top3]
    if any(c not in CLASSES for c in classes) or len(set(classes)) != 3:
        return f"classes not three distinct CIFAR-10 names: {classes}"
    confidences = [p["confidence"] for p in top3]
    if not all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in confidences):
        return f"confidences not in [0, 1]: {confidences}"
    if confidences != sorted(confidences, reverse=True):
        return f"confidences not in decreasing order: {confidences}"
    if sum(round(c * 10_000) for c in confidences) > 10_000:  # in units of the 4 decimals the API rounds to
        return f"confidences sum above 1: {confidences}"
    if (answer["prediction"], answer["confidence"]) != (classes[0], confidences[0]):
        return "prediction/confidence differ from the first of top3_predictions"
    return None
