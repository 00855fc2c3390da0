"""`make gpu-check` on a machine without a GPU: what can run here does.

- the check's command line and its report from a results dict (benchmarks/gpu_check.py);
- its serve stage's whole course with the GPU config's workers on this CPU;
- on a machine without a GPU, `make gpu-check` says it needs one and exits non-zero.
"""

import csv
import shutil
import subprocess

import pytest
import torch
import yaml
from helpers import PORT_BASE, REPO

from benchmarks.gpu_check import GPU_TEST_FILES, NOT_JUDGED, TARGETS, parse_args, target_rows, write_report
from harness.other_work import OtherWork


def test_defaults_run_every_stage_at_the_issues_loads():
    args = parse_args([])
    assert args.stages == ["tests", "train", "serve"]
    assert args.concurrency == [1, 64, 256, 512] and args.workers == ["auto"]


def test_stages_can_be_split_across_calls():
    assert parse_args(["--stages", "tests, train"]).stages == ["tests", "train"]
    assert parse_args(["--stages", "serve", "--workers", "auto", "16"]).workers == ["auto", "16"]


@pytest.mark.parametrize("argv", [["--stages", "train,bake"], ["--workers", "many"], ["--workers", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_gpu_test_files_exist():
    assert all((REPO / path).is_file() for path in GPU_TEST_FILES)


RESULTS = {
    "info": {"gpu": "NVIDIA H200", "cpus": 16, "torch": "2.11.0", "command": "make gpu-check", "stages": {}},
    "tests": {"pytest -m gpu": {"passed": 30, "failed": 0, "skipped": 0, "returncode": 0, "seconds": 60.0}},
    "train": {
        "baseline (CUDA graph)": {
            "epochs": 10,
            "train_seconds": 6.5,
            "seconds_per_epoch": 0.65,
            "eval_seconds": 0.4,
            "total_seconds": 20.1,
            "test_accuracy": 0.73,
            "validation_accuracy": 0.74,
        },
        "gpu-large-batch": {
            "epochs": 16,
            "train_seconds": 3.4,
            "seconds_per_epoch": 0.21,
            "eval_seconds": 0.3,
            "total_seconds": 12.0,
            "test_accuracy": 0.815,
            "validation_accuracy": 0.815,
        },
    },
    "serve": {
        "machine": {"cpus": 16, "gpus": 1, "gpu": "NVIDIA H200"},
        "12 workers (sized)": {
            "config": {"minWorkers": 12},
            "cold_start_seconds": 9.0,
            "served = offline": {"images": 200, "mismatches": 0},
            "worker_gpu_mib": [700.0, 702.0],
            "py-spy of one worker at c=256": {"samples": 10, "self": {"f (x.py:1)": 1.0}, "under": {}},
            "c=1": {"rps": 400.0, "p50_ms": 2.4, "p90_ms": 2.8, "p99_ms": 4.0, "errors": 0, "requests": 4000},
            "c=256": {"rps": 26000.0, "p50_ms": 9.0, "p90_ms": 20.0, "p99_ms": 61.0, "errors": 0, "requests": 1},
            "c=1 after scale-up": {"rps": 300.0, "p50_ms": 2.9, "p90_ms": 4.0, "p99_ms": 12.0, "errors": 0},
        },
    },
}


def test_targets_are_judged_from_the_results():
    rows = {(r["name"], r["metric"]): r for r in target_rows(RESULTS)}
    assert rows[("baseline (CUDA graph)", "train_seconds")]["met"] is True
    assert rows[("gpu-large-batch", "train_seconds")]["met"] is False
    assert rows[("gpu-large-batch", "test_accuracy")]["met"] is True
    assert rows[("12 workers (sized): c=256", "rps")]["met"] is True
    assert rows[("12 workers (sized): c=256", "p99_ms")]["met"] is False
    assert rows[("12 workers (sized): c=1 after scale-up", "p99_ms")]["met"] is False
    assert rows[("c=512", "errors")] == {
        "section": "serve",
        "name": "c=512",
        "metric": "errors",
        "target": "<= 0",
        "value": None,
        "met": None,
    }  # not measured: said so, not counted as met
    assert len(rows) == len(TARGETS)


@pytest.fixture
def other_work():
    """The check's own measure of the machine's load, as its run takes it."""
    with OtherWork(exempt=NOT_JUDGED) as measured:
        yield measured


def test_report_writes_markdown_and_csv(tmp_path, other_work):
    md_path, csv_path = write_report(RESULTS, tmp_path, other_work)
    text = md_path.read_text()
    assert "On NVIDIA H200, 16 cores, torch 2.11.0" in text
    assert f"Not judged: {NOT_JUDGED}." in text  # the machine's load is stated, never refused
    assert "| train | gpu-large-batch | train_seconds | <= 3.0 | 3.4 | **NOT met** |" in text
    assert "| serve | c=512 | errors | <= 0 | — | not run |" in text
    assert "| baseline (CUDA graph) | 10 | 6.5 | 0.65 |" in text
    assert "| c=256 | 26,000.0 | 9 | 20.0 | 61.0 | 0 | — | — |" in text
    assert 'py-spy of one worker at c=256 (shares of samples): `{"samples": 10' in text
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0].keys() == {"section", "name", "metric", "target", "value", "met"}
    assert {row["met"] for row in rows} == {"True", "False", ""}


def test_a_failed_run_is_reported_as_failed_not_skipped(tmp_path, other_work):
    results = {
        "train": {"baseline (CUDA graph)": {"error": "python -m train exited 1"}},
        "serve": {"12 workers (sized)": {"config": {}, "error": "TimeoutError: no answer"}},
    }
    rows = target_rows(results)
    failed = [row for row in rows if row["value"] == "error"]
    assert {row["name"] for row in failed} >= {"baseline (CUDA graph)", "12 workers (sized): c=256"}
    assert all(row["met"] is False for row in failed)
    text = write_report(results, tmp_path, other_work)[0].read_text()
    assert "python -m train exited 1" in text and "Failed: `TimeoutError: no answer`" in text


def test_report_of_nothing_yet_says_nothing_was_run(tmp_path, other_work):
    md_path, _ = write_report({}, tmp_path, other_work)
    assert md_path.read_text().count("not run") == len(TARGETS)


def test_serve_stage_runs_its_whole_course_on_this_cpu(tmp_path, trained_run, data_source):
    """serve_one, as the serve stage runs it on a GPU machine, here with the GPU config's workers on
    the CPU (TorchServe's fallback), short loads, a real TorchServe, wrk and py-spy: what it records."""
    from benchmarks.gpu_serving import serve_one
    from benchmarks.systems import bench_images
    from serve.archive import GPU_MODEL_CONFIG
    from serve.gpu_sizing import Machine, sized_config

    assert shutil.which("wrk"), "needs wrk (apt-get install -y wrk)"
    config = sized_config(yaml.safe_load(GPU_MODEL_CONFIG.read_text()), Machine(2, 1, 24_000, "test"), workers=1)
    listing = bench_images(str(data_source), 40, tmp_path / "images")
    part = serve_one(config, trained_run, listing, seconds=4, concurrencies=[1, 256], port_base=PORT_BASE + 30)
    assert part["served = offline"] == {"images": 40, "mismatches": 0}
    for load in ("c=1", "c=256", "c=1 after scale-up"):
        assert part[load]["requests"] > 0 and part[load]["errors"] == 0, (load, part[load])
    assert part["c=1 after scale-up"]["workers"] == 2
    assert part["worker_gpu_mib"] == []  # CPU workers report no GPU memory
    profile = part["py-spy of one worker at c=256"]
    assert "error" not in profile, profile
    assert profile["samples"] > 0 and profile["self"], profile
    assert {"preprocess", "inference", "postprocess"} & set(profile["under"]), profile
    breakdown = part["time_breakdown"]
    assert breakdown["batch_size_mean"] >= 1 and breakdown["decode_ms_per_batch"] > 0
    assert breakdown["inference_ms_per_request"] > 0 and breakdown["queue_ms_per_request"] >= 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_make_gpu_check_without_a_gpu_says_so_and_fails():
    result = subprocess.run(["make", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "make gpu-check needs a machine with an NVIDIA GPU" in result.stderr
    python = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "benchmarks.gpu_check", "--stages", "train"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert python.returncode == 2 and "needs a machine with an NVIDIA GPU" in python.stderr
    assert "Traceback" not in python.stderr
