"""Keys and tokens this project writes to disk are their owner's alone (mode 600) from the first byte
(container.keys.write_secret): the fleet gateway's token map, the inference key the health check copies
for Compose's load test, the copies of key_file.json."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from container.healthcheck import copy_inference_key
from container.keys import read_keys, write_secret
from fleet.pod import write_token_map


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_fleet_gateways_token_map_is_for_its_owner_alone(tmp_path):
    token_map = tmp_path / "tokens.map"
    token_map.write_text('"Bearer old" drill;\n')
    token_map.chmod(0o644)  # a last run's, readable by everyone
    write_token_map(token_map, {"drill": "t0ken", "other": "s3cret"})
    assert token_map.read_text() == '"Bearer t0ken" drill;\n"Bearer s3cret" other;\n'
    assert mode(token_map) == 0o600


def test_a_secret_is_its_owners_alone_before_it_holds_a_byte(tmp_path, monkeypatch):
    """Under the most permissive umask, the file being written is already 600 when it is renamed
    into place; no partial file is left behind."""
    modes = []
    rename = os.replace

    def replace(source, target):
        modes.append(stat.S_IMODE(os.stat(source).st_mode))
        rename(source, target)

    monkeypatch.setattr(os, "replace", replace)
    umask = os.umask(0)
    try:
        write_secret(tmp_path / "key", "secret")
    finally:
        os.umask(umask)
    assert modes == [0o600] and mode(tmp_path / "key") == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["key"]


def test_the_health_check_copies_the_inference_key_alone_and_follows_its_rotation(tmp_path):
    key_file, copy = tmp_path / "key_file.json", tmp_path / "inference_key.json"
    for generation in (1, 2):  # TorchServe's keys, then new ones (rotate-keys)
        key_file.write_text(
            json.dumps({api: {"key": f"{api}-{generation}"} for api in ("inference", "management", "API")})
        )
        copy_inference_key(key_file, copy)
        assert read_keys(copy) == {"inference": f"inference-{generation}"}
        assert mode(copy) == 0o600
