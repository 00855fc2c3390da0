"""TorchServe's config.properties: read it, and move an instance to other ports.

The client (to find the APIs) and the server launcher (to start TorchServe) both read it, so it
lives here, below both.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_ADDRESSES = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
}


def properties(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def api_address(props: dict[str, str], key: str) -> str:
    """`scheme://host:port` of one API (key: inference_address, management_address or metrics_address)."""
    parsed = urlparse(props.get(key, DEFAULT_ADDRESSES[key]))
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"


def config_on_ports(config: Path, port_base: int, **settings: str) -> str:
    """`config`'s text with the inference, management and metrics APIs moved to port_base, +1 and +2,
    gRPC to +3 and +4 (else TorchServe opens 7070 and 7071, and a second instance on the machine
    fails to start), and `settings` set: the config for another instance beside the usual one."""
    addresses = {"inference_address": port_base, "management_address": port_base + 1, "metrics_address": port_base + 2}
    settings = {"grpc_inference_port": str(port_base + 3), "grpc_management_port": str(port_base + 4), **settings}
    lines = []
    for line in config.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in addresses:
            line = re.sub(r":\d+\s*$", f":{addresses[key]}", line)
        if key not in settings:
            lines.append(line)
    return "\n".join(lines + [f"{key}={value}" for key, value in settings.items()]) + "\n"
