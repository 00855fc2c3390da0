"""Reliability report: every input of the corpus (reliability/bad_inputs.py), alone and mixed into
concurrent batches; every fault drill (reliability/drills.py); every hostile client beside a good
one (reliability/hostile.py); all against a TorchServe of its own serving the given archive.
Writes reports/reliability.md (and the figures behind it, reliability.json); exits 1 when a rule
of reliability/rules.py is broken.

    python -m reliability                       # model-store/cifar10.mar, ports 18090-18094
    python -m reliability --only hostile --attack-seconds 10 --port-base 48100

It never touches the server `make serve` started (other ports, its own working directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from reliability import rules
from reliability.bad_inputs import Input, corpus, keeps_the_rule, max_request_size, send, send_mixed, summarize_answer
from reliability.drills import (
    SLEEPY_QUEUE,
    FaultServer,
    broken_archive_at_start,
    kill_worker_under_load,
    outlast_response_timeout,
    overflow_queue,
    register_broken_archives,
    restart,
)
from reliability.hostile import hostile_drill
from serve.archive import REPO
from serve.client import sample_jpeg
from serve.config import properties
from serve.report import Report, percent
from train.data import encoded_images

DRILLS = ("inputs", "faults", "hostile")


def try_inputs(server: FaultServer, good_images: list[bytes], limit: int) -> dict:
    """Each input alone, then all of them shuffled among good images, sent 32 at a time."""
    items = corpus(good_images[0], limit)
    pids = server.worker_pids()
    alone = [
        {
            "input": i.name,
            "answer": summarize_answer(a := send(server.client, i)),
            "ok": keeps_the_rule(i, a),
            "gap": i.frontend_gap,
        }
        for i in items
    ]
    good = [Input(f"good image {i}", 200, data=blob) for i, blob in enumerate(good_images)]
    pairs = [(i, a) for i, a in send_mixed(server.client, items + good) if not i.frontend_gap]
    return {
        "inputs": alone,
        "mixed": len(pairs),
        "mixed_kept_the_rule": sum(keeps_the_rule(i, a) for i, a in pairs),
        "worker_unchanged": set(pids) <= set(server.worker_pids()),  # a worker still starting may join
    }


def run_faults(server: FaultServer, args, good: list[bytes]) -> dict:
    return {
        "broken archive at start": broken_archive_at_start(server),
        "kills": [kill_worker_under_load(server, threads=args.threads) for _ in range(args.kills)],
        "queue overflow": {
            f"sleepy test model (jobQueueSize {SLEEPY_QUEUE}, 0.5 s a request)": overflow_queue(
                server.client, "sleepy", b"0.5", 4 * (SLEEPY_QUEUE + 1)
            ),
            "cifar10": overflow_queue(server.client, "cifar10", good[0], args.queue_burst),
        },
        "response timeout": outlast_response_timeout(server),
        "broken archives": register_broken_archives(server),
        "restart": restart(server, good[:20]),
    }


def problems(report: dict) -> list[str]:
    """What broke the service's promises in this run (the frontend gaps are known, not counted)."""
    found = []
    if inputs := report.get("inputs"):
        found += [f"input {r['input']!r}: {r['answer']}" for r in inputs["inputs"] if not (r["ok"] or r["gap"])]
        if inputs["mixed_kept_the_rule"] != inputs["mixed"] or not inputs["worker_unchanged"]:
            found.append("inputs mixed into batches: not every answer kept the rule, or the worker changed")
    if faults := report.get("faults"):
        found += [p for kill in faults["kills"] for p in rules.kill_problems(kill)]
        found += [p for name, seen in faults["queue overflow"].items() for p in rules.overflow_problems(name, seen)]
        found += rules.archive_problems(faults["broken archives"]) + rules.restart_problems(faults["restart"])
        found += rules.timeout_problems(faults["response timeout"])
    return found + [p for row in report.get("hostile", []) for p in rules.hostile_problems(row)]


def write_report(report: dict, command: str, out: Path) -> None:
    page = Report("Reliability: bad inputs, faults, hostile clients", command).text(
        f"Load average (1 min) at the start and the end: {report['load'][0]:.1f}, {os.getloadavg()[0]:.1f}."
    )
    if inputs := report.get("inputs"):
        page.text(
            f"## Inputs ({len(inputs['inputs'])} kinds, each alone)",
            f"Mixed into concurrent batches: {inputs['mixed_kept_the_rule']} / {inputs['mixed']} answers kept the "
            f"rule; worker unchanged: {inputs['worker_unchanged']}.",
        ).table(inputs["inputs"], ["input", "answer", "ok", "gap"])
    if faults := report.get("faults"):
        kills = [{"fault": "kill -9 under load", **k} for k in faults["kills"]]
        overflow = [{"fault": f"queue overflow, {name}", **seen} for name, seen in faults["queue overflow"].items()]
        page.text("## Faults").table(
            kills, ["fault", "clients", "requests", "failed", "in_flight_at_kill", "seconds_until_workers_back"]
        )
        page.table(overflow, ["fault", "burst", "statuses", "503_message", "seconds_until_answering_again"])
        page.text(
            "```json",
            json.dumps(
                {k: faults[k] for k in ("response timeout", "broken archives", "restart")}, indent=1, default=str
            ),
            "```",
        )
    if rows := report.get("hostile"):
        page.text(
            "## Hostile clients",
            f"Each attack beside a steady good client (4 during the operations); rules: attackers answered as allowed "
            f"within {rules.ATTACKER_SECONDS:g} s, good client >= {rules.GOOD_SUCCESS:.0%} served with p99 <= "
            f"{rules.GOOD_P99_SECONDS:g} s, no worker restarted, memory (frontend + workers) back within "
            f"{rules.MEMORY_BACK_SECONDS} s.",
        ).table(
            rows,
            ["attack", "attacker_requests", "attacker_answers", "attacker_max_s", "good_requests", "good_success",
             "good_p99_s", "worker_restarts", "memory_baseline_mib", "memory_peak_mib", "memory_back_s",
             "memory_after_mib"],
            {"good_success": percent},
        )  # fmt: skip
    page.text("## Problems", *([f"- {p}" for p in report["problems"]] or ["none"])).write(out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reliability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archive", type=Path, default=REPO / "model-store" / "cifar10.mar")
    parser.add_argument(
        "--data",
        default=os.environ.get("CIFAR10_DATA"),
        help="CIFAR-10 copy for real test images (default: $CIFAR10_DATA; else made-up images)",
    )
    parser.add_argument("--port-base", type=int, default=18090, help="inference port; +1..+4 management, metrics, gRPC")
    parser.add_argument("--only", nargs="+", choices=DRILLS, default=DRILLS, help="the drills to run (default: all)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 drills, one after the other")
    parser.add_argument("--threads", type=int, default=16, help="clients posting back to back during a kill")
    parser.add_argument(
        "--queue-burst",
        type=int,
        default=800,
        help="simultaneous requests to cifar10 (more than its job queue: job_queue_size in config.properties)",
    )
    parser.add_argument("--attack-seconds", type=float, default=10, help="how long each hostile client attacks")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "reliability.md")
    args = parser.parse_args(argv)
    if not args.archive.exists():
        raise SystemExit(f"error: {args.archive} not found (make archive)")

    good_images = (
        encoded_images(args.data)[0][:40] if args.data else [sample_jpeg((i * 6, 255 - i * 6, 90)) for i in range(40)]
    )
    report = {"load": os.getloadavg()}
    with (
        tempfile.TemporaryDirectory(prefix="reliability-") as workdir,
        FaultServer(args.archive, Path(workdir), args.port_base) as server,
    ):
        print(f"TorchServe for the drills on ports {args.port_base}-{args.port_base + 4}, working directory {workdir}")
        limit = max_request_size(properties(server.paths.config))
        if "inputs" in args.only:
            report["inputs"] = try_inputs(server, good_images, limit)
        if "faults" in args.only:
            report["faults"] = run_faults(server, args, good_images)
        if "hostile" in args.only:
            report["hostile"] = hostile_drill(server, good_images[0], limit, args.attack_seconds)
    report["problems"] = problems(report)
    command = "python -m reliability " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(report, command.strip(), args.out)
    print("no problem found" if not report["problems"] else f"{len(report['problems'])} problem(s)")
    raise SystemExit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
