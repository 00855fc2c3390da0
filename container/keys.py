"""TorchServe's key_file.json read, and any key or token this project writes, with the standard
library only (the serve image's health check uses it too, without the rest of this repository)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def read_keys(key_file: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...}; {} without the file (token auth off)."""
    try:
        stored = json.loads(key_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # absent, or TorchServe is writing it right now
        return {}
    return {api: entry["key"] for api, entry in stored.items() if isinstance(entry, dict) and "key" in entry}


def write_secret(path: Path, text: str) -> None:
    """Writes `text`, a key or a token, to `path` for its owner alone (mode 600) from the first byte:
    into a temporary file beside it (mkstemp makes it 600), then renamed over `path`, so that a
    reader never finds it half-written either."""
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
