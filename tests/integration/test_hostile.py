"""Hostile and careless clients beside a steady good client, on a TorchServe of its own (ports
TEST_PORT_BASE+10..+14) serving the test run's cifar10.mar: each attacker is answered 4xx or 503,
the good client is served, no worker restarts, the server's memory comes back to its baseline
within the drill's bound after the attack, and retiring a version or scaling down under load
loses nothing.
The attacks and their rules are the drill's (reliability/hostile.py, reliability/rules.py);
`make reliability` runs them longer and reports the timings."""

import shutil

import pytest
from helpers import PORT_BASE

from harness.server import LocalServer
from reliability.hostile import attacks, operations, run_attack
from reliability.rules import hostile_problems
from serve.client import sample_jpeg
from serve.config import properties

GOOD = sample_jpeg()
SECONDS = 2  # per attack: enough for a few rounds of every attacker


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, model_store):
    store = tmp_path_factory.mktemp("hostile-store")
    shutil.copy(model_store / "cifar10.mar", store / "cifar10.mar")
    with LocalServer(tmp_path_factory.mktemp("hostile"), store, PORT_BASE + 10) as server:
        yield server


@pytest.fixture(scope="module")
def attack_list(hostile_server):
    return {
        attack.name: attack
        for attack in attacks(GOOD, int(properties(hostile_server.paths.config)["max_request_size"]))
    }


@pytest.mark.parametrize(
    "name",
    [
        "RLE BMP, 1 KB, 60 MP",
        "progressive JPEG, 2,000 scans",
        "64 MP 16-bit PNG",
        "max-size PNG of empty chunks",
        "max-size JPEG of fill bytes",
        "truncated JPEG and PNG",
        "form of 20,000 one-byte fields and an image",
        "/explanations",
        "max-size bodies, 16 pipelined per connection",
        "250 pipelined, then gone",
    ],
)
def test_an_attacker_is_refused_and_the_good_client_served(hostile_server, attack_list, name):
    row = run_attack(hostile_server, attack_list[name], GOOD, SECONDS)
    assert not hostile_problems(row, timing=False), row


def test_retiring_a_version_under_load_answers_every_request(hostile_server):
    retire = next(a for a in operations(hostile_server) if a.name.startswith("retire"))
    row = run_attack(hostile_server, retire, GOOD, SECONDS)
    assert not hostile_problems(row, timing=False), row
    assert [v["modelVersion"] for v in hostile_server.client.describe("cifar10", "all")] == ["next"]


def test_scaling_down_under_load_answers_every_request(hostile_server):
    scale = next(a for a in operations(hostile_server) if a.name.startswith("scale"))
    row = run_attack(hostile_server, scale, GOOD, SECONDS)
    assert not hostile_problems(row, timing=False), row
    assert len(hostile_server.client.describe()[0]["workers"]) == 1
