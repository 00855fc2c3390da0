"""The environment podman runs in for the container tier and the image benchmarks: the project's
settings (deploy/docker/containers.conf: no systemd needed; for a normal user,
deploy/docker/storage-rootless.conf: the overlay driver) unless the caller set its own, as
deploy/docker/build.sh does."""

from __future__ import annotations

import os

from repo import REPO

DOCKER_DIR = REPO / "deploy" / "docker"


def engine_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("CONTAINERS_CONF", str(DOCKER_DIR / "containers.conf"))
    if os.geteuid() != 0:
        env.setdefault("CONTAINERS_STORAGE_CONF", str(DOCKER_DIR / "storage-rootless.conf"))
    return env
