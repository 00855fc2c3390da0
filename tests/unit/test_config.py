"""Reading config.properties and the training options: the values users set reach the code."""

from __future__ import annotations

import pytest
from helpers import REPO

from serve.config import api_address, config_on_ports, properties
from serve.errors import UnwritableSetting
from train.config import RECIPES, Config, parse_args
from train.errors import ConfigError


def test_the_repositorys_config_is_read_as_torchserve_reads_it():
    props = properties(REPO / "config.properties")
    assert api_address(props, "inference_address") == "http://127.0.0.1:8080"
    assert api_address(props, "management_address") == "http://127.0.0.1:8081"
    assert api_address(props, "metrics_address") == "http://127.0.0.1:8082"
    assert props["metrics_mode"] == "prometheus"


def test_the_config_is_read_as_java_reads_it(tmp_path):
    """Comments and blank lines are no settings; `key = value` and `key: value` both set; a trailing
    backslash continues the value; trailing blanks stay in it (TorchServe sees them too)."""
    config = tmp_path / "config.properties"
    config.write_text(
        "# a comment=with an equals sign\n! another\n\n  job_queue_size = 64 \nvmargs: -Xmx1g \\\n   -Dx=1\n"
    )
    assert properties(config) == {"job_queue_size": "64 ", "vmargs": "-Xmx1g -Dx=1"}


def test_an_unset_address_falls_back_to_torchserves_default(tmp_path):
    assert api_address({}, "management_address") == "http://127.0.0.1:8081"


def test_config_on_ports_moves_every_api_and_keeps_the_rest(tmp_path):
    moved = tmp_path / "config.properties"
    moved.write_text(config_on_ports(REPO / "config.properties", 28000, job_queue_size="7"))
    props, original = properties(moved), properties(REPO / "config.properties")
    assert [api_address(props, key) for key in ("inference_address", "management_address", "metrics_address")] == [
        "http://127.0.0.1:28000",
        "http://127.0.0.1:28001",
        "http://127.0.0.1:28002",
    ]
    assert (props["grpc_inference_port"], props["grpc_management_port"], props["job_queue_size"]) == (
        "28003",
        "28004",
        "7",
    )
    moved_keys = {
        "inference_address",
        "management_address",
        "metrics_address",
        "job_queue_size",
        "grpc_inference_port",
        "grpc_management_port",
    }
    untouched = set(original) - moved_keys
    assert {key: props[key] for key in untouched} == {key: original[key] for key in untouched}


def test_defaults_are_the_flask_services_recipe():
    cfg = parse_args([])
    assert (cfg.recipe, cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.crop_padding, cfg.flip) == (
        "baseline", 10, 64, "adam", 1e-3, 4, True
    )  # fmt: skip


def test_a_recipe_sets_defaults_and_the_command_line_wins():
    cfg = parse_args(["--recipe", "fast", "--epochs", "3", "--no-flip"])
    assert cfg.recipe == "fast" and cfg.lr == RECIPES["fast"]["lr"] and cfg.epochs == 3 and cfg.flip is False


def test_the_old_recipe_name_still_works():
    assert parse_args(["--recipe", "seed"]) == parse_args(["--recipe", "baseline"])


@pytest.mark.parametrize(
    "field, value", [("optimizer", "rmsprop"), ("schedule", "cosine"), ("amp", "yes"), ("cuda_graph", "maybe")]
)
def test_an_unknown_choice_is_refused_before_any_work(field, value, capsys):
    with pytest.raises(ConfigError, match=value):  # a recipe's value, or a Config made in code
        Config(**{field: value})
    with pytest.raises(SystemExit):  # the command line: argparse's error, before any data loads
        parse_args(["--" + field.replace("_", "-"), value])
    assert "invalid choice" in capsys.readouterr().err


def test_the_validation_split_is_a_tenth_of_the_training_images_by_default():
    assert parse_args([]).validation_size(50_000) == 5000
    assert parse_args(["--train-subset", "5000"]).validation_size(5000) == 500
    assert parse_args(["--val-size", "0"]).validation_size(50_000) == 0
    assert parse_args(["--val-size", "2000"]).validation_size(50_000) == 2000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--val-size", "-1"], "--val-size -1: expected a number of images, 0 or more"),
        (["--train-subset", "1000", "--val-size", "1000"], "leaves none of the 1,000 training images"),
        (["--train-subset", "100", "--val-size", "5000"], "leaves none of the 100 training images"),
    ],
)
def test_a_validation_split_that_leaves_nothing_to_train_on_is_refused_at_parse_time(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_a_validation_split_larger_than_the_data_is_refused_once_the_data_is_known():
    cfg = parse_args(["--val-size", "50000"])  # no subset: the number of training images is not known yet
    with pytest.raises(ConfigError, match="leaves none of the 50,000 training images"):
        cfg.validation_size(50_000)


def test_the_training_job_says_why_it_refuses_a_validation_split():
    """`python -m train --train-subset 100 --val-size 100` (its main, in this process): a message, no traceback."""
    from train.main import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(["--train-subset", "100", "--val-size", "100"])
    assert str(exit_info.value).startswith("error: --val-size 100 leaves none of the 100 training images")


def test_a_setting_java_would_read_otherwise_is_refused_not_written(tmp_path):
    with pytest.raises(UnwritableSetting):
        config_on_ports(REPO / "config.properties", 28000, vmargs="-Dpath=C:\\temp")
