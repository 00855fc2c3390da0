"""What several tests share: where things are, the small training run, the answer's contract.

Tests import from here, never from another test module or from conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serve.answers import answer_problem

REPO = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("TEST_PORT_BASE", "18080"))  # inference; management, metrics, gRPC follow (+1..+4)
TRAIN_SUBSET, TEST_SUBSET = 5000, 1000


def train_run(out_dir: Path, data_source: Path, *extra: str) -> Path:
    """A short real training run (subset, 1 epoch) through the command users run."""
    subprocess.run(
        [
            sys.executable, "-m", "train", "--data", str(data_source), "--epochs", "1", "--out-dir", str(out_dir),
            "--run-name", "run", "--train-subset", str(TRAIN_SUBSET), "--test-subset", str(TEST_SUBSET), *extra,
        ],
        cwd=REPO,
        check=True,
    )  # fmt: skip
    return out_dir / "run"


def metadata(run_dir: Path) -> dict:
    return json.loads((run_dir / "metadata.json").read_text())


def assert_prediction(answer) -> None:
    """The answer keeps the Flask service's shape: prediction, confidence, top3_predictions."""
    problem = answer_problem(answer)
    assert problem is None, problem
