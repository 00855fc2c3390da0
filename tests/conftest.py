"""Shared fixtures: the data copy, a small trained run, its .mar, and a real TorchServe.

The server fixture starts TorchServe from the repository's own config.properties with the ports
moved (18080-18084 with gRPC, or from $TEST_PORT_BASE) in a temporary working directory
(harness.server.LocalServer), so the tests neither need nor disturb a server that `make serve` started. Shared helpers live in helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import PORT_BASE, REPO, cifar10_test_jpegs, train_run

from harness.server import LocalServer
from serve.archive import build_archive
from serve.client import Client
from serve.server import ServerPaths


@pytest.fixture(scope="session")
def data_source() -> Path:
    source = Path(os.environ.get("CIFAR10_DATA") or REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    if not source.exists():
        pytest.fail(f"CIFAR-10 copy not found at {source}: set CIFAR10_DATA to a local copy (see README)")
    return source


@pytest.fixture(scope="session")
def cifar_test_jpegs(data_source) -> dict[str, list[bytes]]:
    """Five real CIFAR-10 test JPEGs per class."""
    return cifar10_test_jpegs(data_source, 5)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_source) -> Path:
    return train_run(tmp_path_factory.mktemp("models"), data_source)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, trained_run) -> Path:
    store = tmp_path_factory.mktemp("model-store")
    build_archive(trained_run, store)
    return store


@pytest.fixture(scope="session")
def local_server(tmp_path_factory, model_store) -> LocalServer:
    """A real TorchServe serving the test run's cifar10.mar; always stopped at the end."""
    with LocalServer(tmp_path_factory.mktemp("torchserve"), model_store, PORT_BASE) as running:
        yield running


@pytest.fixture(scope="session")
def server(local_server) -> Client:
    return local_server.client


@pytest.fixture(scope="session")
def server_paths(local_server) -> ServerPaths:
    return local_server.paths
