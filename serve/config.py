"""TorchServe's config.properties: read it as Java's `Properties` does (javaproperties), and move an
instance to other ports.

The client (to find the APIs) and the server launcher (to start TorchServe) both read it, so it
lives here, below both.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import javaproperties

from serve.errors import UnwritableSetting

DEFAULT_ADDRESSES = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
}
GRPC_PORTS = {"inference": "7070", "management": "7071"}


def properties(path: Path) -> dict[str, str]:
    """The settings of a config.properties, as TorchServe reads them."""
    return javaproperties.loads(path.read_text())


def properties_text(settings: dict[str, str]) -> str:
    """A config.properties holding `settings` in their order, one plain `key=value` line each: Java
    reads it as written, and so does TorchServe's Python launcher, which reads `vmargs` by hand and
    would pass on an escape such as `\\:` to the JVM. Raises UnwritableSetting for a key or value that
    Java would read otherwise (a backslash, a line break, a separator in the key, a blank in front)."""
    lines = []
    for key, value in settings.items():
        if any(c in key for c in "=: \t\\\n#!") or "\\" in value or "\n" in value or value[:1].isspace():
            raise UnwritableSetting(f"config.properties cannot hold {key}={value!r} as a plain line")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def api_address(props: dict[str, str], key: str) -> str:
    """`scheme://host:port` of one API (key: inference_address, management_address or metrics_address)."""
    parsed = urlparse(props.get(key, DEFAULT_ADDRESSES[key]))
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"


def grpc_address(props: dict[str, str], api: str = "inference") -> str:
    """`host:port` of one of TorchServe's gRPC APIs (api: inference or management), with its defaults."""
    host = props.get(f"grpc_{api}_address", "127.0.0.1")
    port = props.get(f"grpc_{api}_port", GRPC_PORTS[api])
    return f"{host}:{port}"


def config_on_ports(config: Path, port_base: int, **settings: str) -> str:
    """`config`'s settings with the inference, management and metrics APIs moved to port_base, +1
    and +2, gRPC to +3 and +4 (else TorchServe opens 7070 and 7071, and a second instance on the
    machine fails to start), and `settings` set: the config for another instance beside the usual one."""
    props = properties(config)
    for offset, key in enumerate(("inference_address", "management_address", "metrics_address")):
        parsed = urlparse(props.get(key, DEFAULT_ADDRESSES[key]))
        props[key] = parsed._replace(netloc=f"{parsed.hostname}:{port_base + offset}").geturl()
    props |= {"grpc_inference_port": str(port_base + 3), "grpc_management_port": str(port_base + 4), **settings}
    return properties_text(props)
