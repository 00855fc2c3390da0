"""A training run's record, metadata.json in the run's folder: the one type that writes and reads
it. Standard library only (the operator's archive command reads it without torch)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from train.atomic import atomic_write_text
from train.errors import RunFormatError, RunNotFound

METADATA_FILE = "metadata.json"


@dataclasses.dataclass
class Run:
    run: str  # the run's folder name
    version: str  # the archive's model version
    created: str
    recipe: str
    epoch: int  # the exported epoch
    selection: dict[str, Any]  # how the epoch was chosen (the validation split, never the test split)
    test_accuracy: float  # the exported model on the test split, evaluated once
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]  # its columns: the predicted-class mix on the test split (the drift reference)
    classes: list[str]
    parameters: int
    hyperparameters: dict[str, Any]
    data: dict[str, Any]  # source, sha256, image counts
    history: list[dict[str, Any]]  # one record per epoch
    files: dict[str, str]  # what the folder holds, by kind
    git_commit: str | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    onnx_check: dict[str, Any] | None = None
    aot_inductor_check: dict[str, Any] | None = None
    device: str | None = None
    world_size: int = 1
    threads: int | None = None
    cuda_graph: bool = False
    total_seconds: float | None = None
    peak_memory_mb: float | None = None
    # the share of test images answered with a confidence of at most 0.5 (the low-confidence reference)
    low_confidence_share: float | None = None

    @classmethod
    def from_json(cls, text: str | bytes, origin: str = METADATA_FILE) -> Run:
        """Raises RunFormatError on a key this type does not know, or a missing one it needs."""
        try:
            return cls(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as error:
            raise RunFormatError(f"{origin} is not a run's record of this version: {error}") from None

    @classmethod
    def load(cls, folder: Path) -> Run:
        path = Path(folder) / METADATA_FILE
        if not path.exists():
            raise RunNotFound(f"{path} not found: not a finished training run (make train)")
        return cls.from_json(path.read_text(), str(path))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def save(self, folder: Path) -> Path:
        """Writes metadata.json into `folder` (atomically: a reader never sees half of it)."""
        path = Path(folder) / METADATA_FILE
        atomic_write_text(path, self.to_json())
        return path
