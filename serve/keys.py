"""TorchServe's key_file.json, read with the standard library only (the serve image's health check
uses it too, without the rest of this repository)."""

from __future__ import annotations

import json
from pathlib import Path


class MissingKeyError(LookupError):
    """key_file.json holds no key for the API asked for (no server, or token auth off)."""


def read_keys(key_file: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...}; {} without the file (token auth off)."""
    try:
        stored = json.loads(key_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # absent, or TorchServe is writing it right now
        return {}
    return {api: entry["key"] for api, entry in stored.items() if isinstance(entry, dict) and "key" in entry}
