"""Reliability report: every input of the corpus (bad_inputs.py), alone and mixed into concurrent
batches, every fault drill (drills.py) and every hostile client beside a good one (hostile.py), on a
TorchServe of its own (never the one `make serve` started) serving the given archive. Writes
reports/reliability.md and the figures behind it (reliability.json); exits 1 when a rule of rules.py is broken.

    python -m reliability                       # model-store/cifar10.mar, ports 18090-18094
    python -m reliability --only hostile --attack-seconds 10 --port-base 48100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from harness.other_work import OtherWork, add_noisy_option, exits_when_busy
from harness.report import Report, percent
from reliability import drills, rules
from reliability.bad_inputs import Input, corpus, keeps_the_rule, max_request_size, send, send_mixed, summarize_answer
from reliability.hostile import attacks, operations, run_attack
from repo import REPO
from serve.client import sample_jpeg
from serve.config import properties
from train.data import encoded_images

DRILLS = ("inputs", "faults", "hostile")
HOSTILE_COLUMNS = (
    "attack attacker_requests attacker_answers attacker_max_s good_requests good_success good_p99_s worker_restarts "
    "memory_baseline_mib memory_peak_mib memory_back_s memory_after_mib"
)


def try_inputs(server: drills.FaultServer, good_images: list[bytes], limit: int) -> dict:
    """Each input alone, then all of them shuffled among good images, sent 32 at a time."""
    items, pids = corpus(good_images[0], limit), drills.worker_pids(server.client)
    alone = [(item, send(server.client, item)) for item in items]
    good = [Input(f"good image {i}", 200, data=blob) for i, blob in enumerate(good_images)]
    mixed = send_mixed(server.client, items + good)
    return {
        "inputs": [{"input": i.name, "answer": summarize_answer(a), "ok": keeps_the_rule(i, a)} for i, a in alone],
        "mixed": len(mixed),
        "mixed_kept_the_rule": sum(keeps_the_rule(item, answer) for item, answer in mixed),
        "worker_unchanged": set(pids) <= set(drills.worker_pids(server.client)),  # a worker still starting may join
    }


def run_faults(server: drills.FaultServer, args, good: list[bytes]) -> dict:
    sleepy = f"sleepy test model (jobQueueSize {drills.SLEEPY_QUEUE}, 0.5 s a request)"
    return {
        "broken archive at start": drills.broken_archive_at_start(server),
        "kills": [drills.kill_worker_under_load(server, threads=args.threads) for _ in range(args.kills)],
        "queue overflow": {
            sleepy: drills.overflow_queue(server.client, "sleepy", b"0.5", 4 * (drills.SLEEPY_QUEUE + 1)),
            "cifar10": drills.overflow_queue(server.client, "cifar10", good[0], args.queue_burst),
        },
        "response timeout": drills.outlast_response_timeout(server),
        "broken archives": drills.register_broken_archives(server),
        "restart": drills.restart(server, good[:20]),
    }


def problems(report: dict) -> list[str]:
    found = rules.inputs_problems(report["inputs"]) if "inputs" in report else []
    if faults := report.get("faults"):
        found += [p for kill in faults["kills"] for p in rules.kill_problems(kill)]
        found += [p for name, seen in faults["queue overflow"].items() for p in rules.overflow_problems(name, seen)]
        found += rules.archive_problems(faults["broken archives"]) + rules.restart_problems(faults["restart"])
        found += rules.timeout_problems(faults["response timeout"])
    return found + [p for row in report.get("hostile", []) for p in rules.hostile_problems(row)]


def write_report(report: dict, command: str, out: Path, other_work: OtherWork) -> None:
    """out (Markdown), then the figures behind it beside it (.json), the machine's among them."""
    page = Report("Reliability: bad inputs, faults, hostile clients", command, other_work)
    if inputs := report.get("inputs"):
        page.text(
            f"## Inputs ({len(inputs['inputs'])} kinds, each alone)",
            f"Mixed into concurrent batches: {inputs['mixed_kept_the_rule']} / {inputs['mixed']} answers kept the "
            f"rule; worker unchanged: {inputs['worker_unchanged']}.",
        ).table(inputs["inputs"], ["input", "answer", "ok"])
    if faults := report.get("faults"):
        kills = [{"fault": "kill -9 under load", **kill} for kill in faults["kills"]]
        overflow = [{"fault": f"queue overflow, {name}", **seen} for name, seen in faults["queue overflow"].items()]
        columns = "fault clients requests failed in_flight_at_kill seconds_until_workers_back"
        page.text("## Faults").table(kills, columns.split())
        page.table(overflow, ["fault", "burst", "statuses", "503_message", "seconds_until_answering_again"])
        rest = {key: faults[key] for key in ("response timeout", "broken archives", "restart")}
        page.text("```json", json.dumps(rest, indent=1, default=str), "```")
    if rows := report.get("hostile"):
        page.text(
            "## Hostile clients",
            f"Each attack beside a steady good client (4 during the operations); rules: attackers answered as allowed "
            f"within {rules.ATTACKER_SECONDS:g} s, good client >= {rules.GOOD_SUCCESS:.0%} served with p99 <= "
            f"{rules.GOOD_P99_SECONDS:g} s, no worker restarted, memory (frontend + workers) back within "
            f"{rules.MEMORY_BACK_SECONDS} s.",
        ).table(rows, HOSTILE_COLUMNS.split(), {"good_success": percent})
    page.text("## Problems", *([f"- {p}" for p in report["problems"]] or ["none"])).write(out)
    figures = {**report, "machine": dataclasses.asdict(other_work.load())}
    out.with_suffix(".json").write_text(json.dumps(figures, indent=1, default=str) + "\n")


@exits_when_busy
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reliability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archive", type=Path, default=REPO / "model-store" / "cifar10.mar")
    data = os.environ.get("CIFAR10_DATA")
    parser.add_argument("--data", default=data, help="CIFAR-10 copy (default: $CIFAR10_DATA; else made-up images)")
    parser.add_argument("--port-base", type=int, default=18090, help="inference port; +1..+4 management, metrics, gRPC")
    parser.add_argument("--only", nargs="+", choices=DRILLS, default=DRILLS, help="the drills to run (default: all)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 drills, one after the other")
    parser.add_argument("--threads", type=int, default=16, help="clients posting back to back during a kill")
    parser.add_argument("--queue-burst", type=int, default=800, help="requests at once to cifar10 (> job_queue_size)")
    parser.add_argument("--attack-seconds", type=float, default=10, help="how long each hostile client attacks")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "reliability.md")
    add_noisy_option(parser)
    args = parser.parse_args(argv)
    if not args.archive.exists():
        raise SystemExit(f"error: {args.archive} not found (make archive)")

    images = [sample_jpeg((i * 6, 255 - i * 6, 90)) for i in range(40)]
    images = encoded_images(args.data)[0][:40] if args.data else images
    report = {}
    with (
        OtherWork(noisy=args.noisy) as other_work,
        tempfile.TemporaryDirectory(prefix="reliability-") as workdir,
        drills.FaultServer(args.archive, Path(workdir), args.port_base) as server,
    ):
        print(f"TorchServe for the drills on ports {args.port_base}-{args.port_base + 4}, working directory {workdir}")
        limit = max_request_size(properties(server.paths.config))
        if "inputs" in args.only:
            report["inputs"] = try_inputs(server, images, limit)
        if "faults" in args.only:
            report["faults"] = run_faults(server, args, images)
        if "hostile" in args.only:
            chosen = attacks(images[0], limit) + operations(server)
            report["hostile"] = [run_attack(server, attack, images[0], args.attack_seconds) for attack in chosen]
    report["problems"] = problems(report)
    command = "python -m reliability " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(report, command.strip(), args.out, other_work)
    print("no problem found" if not report["problems"] else f"{len(report['problems'])} problem(s)")
    raise SystemExit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
