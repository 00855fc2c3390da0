"""Reliability report: every input of the corpus (reliability/bad_inputs.py), alone and mixed into
concurrent batches, then every fault drill (reliability/drills.py), against a TorchServe of its own
serving the given archive. Prints the figures and writes them to reports/reliability.json.

    python -m reliability                       # model-store/cifar10.mar, ports 18090-18094
    python -m reliability --kills 5 --queue-burst 600 --port-base 48100

It never touches the server `make serve` started (other ports, its own working directory).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

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
from serve.archive import REPO
from serve.client import sample_jpeg
from serve.config import properties
from train.data import encoded_images


def try_inputs(server: FaultServer, good_images: list[bytes], rounds: int = 2) -> dict:
    """Each input alone, then all of them shuffled among good images, sent 32 at a time."""
    items = corpus(good_images[0], max_request_size(properties(server.paths.config)))
    pids = server.worker_pids()
    alone = []
    for item in items:
        answer = send(server.client, item)
        alone.append(
            {
                "input": item.name,
                "expected": item.status,
                "reason": item.reason,
                "answer": summarize_answer(answer),
                "keeps_the_rule": keeps_the_rule(item, answer),
                "frontend_gap": item.frontend_gap,
            }
        )
    good = [Input(f"good image {i}", 200, data=blob) for i, blob in enumerate(good_images)]
    pairs = send_mixed(server.client, items + good)
    bad_in_mix = [(i, a) for i, a in pairs if i.status != 200 and not i.frontend_gap]
    gaps_in_mix = [(i, a) for i, a in pairs if i.frontend_gap]
    good_in_mix = [(i, a) for i, a in pairs if i.status == 200]
    return {
        "inputs": alone,
        "mixed_requests": len(pairs),
        "mixed_bad_answered_per_rule": sum(keeps_the_rule(i, a) for i, a in bad_in_mix),
        "mixed_bad": len(bad_in_mix),
        "mixed_frontend_gap_errors": sum(a.status >= 400 for _, a in gaps_in_mix),
        "mixed_frontend_gap": len(gaps_in_mix),
        "mixed_good_predictions": sum(keeps_the_rule(i, a) for i, a in good_in_mix),
        "mixed_good": len(good_in_mix),
        "worker_unchanged": server.worker_pids() == pids,
    }


def problems(report: dict) -> list[str]:
    """What broke the service's promises in this run (the frontend gaps are known, not counted)."""
    found = [
        f"input {row['input']!r}: {row['answer']}"
        for row in report["inputs"]["inputs"]
        if not row["keeps_the_rule"] and not row["frontend_gap"]
    ]
    inputs = report["inputs"]
    if (
        inputs["mixed_bad_answered_per_rule"],
        inputs["mixed_good_predictions"],
        inputs["mixed_frontend_gap_errors"],
    ) != (inputs["mixed_bad"], inputs["mixed_good"], inputs["mixed_frontend_gap"]) or not inputs["worker_unchanged"]:
        found.append("inputs mixed into batches: not every answer kept the rule, or the worker changed")
    found += [
        f"kill -9: {kill['failed']} failed, more than the {kill['in_flight_at_kill']} in flight"
        for kill in report["kills"]
        if kill["failed"] > kill["in_flight_at_kill"]
    ]
    found += [
        f"queue overflow, {name}: {seen['statuses']}"
        for name, seen in report["queue_overflow"].items()
        if set(seen["statuses"]) - {200, 503}
    ]
    archives = report["broken_archives"]
    if archives["models_after"] != archives["models_before"] or not (
        archives["serving_worker_unchanged"] and archives["same_answer"]
    ):
        found.append("a broken archive disturbed the serving model")
    again = report["restart"]
    if again["version_after"] != again["version_before"] or again["same_answers"] != again["images"]:
        found.append("stop + start changed the version or the answers")
    if not report["response_timeout"]["worker_replaced"]:
        found.append("the worker that outlasted responseTimeout was not replaced")
    return found


def print_report(report: dict) -> None:
    inputs = report["inputs"]
    print(f"\n== Inputs: {len(inputs['inputs'])} kinds, each alone")
    for row in inputs["inputs"]:
        mark = "ok " if row["keeps_the_rule"] else "GAP" if row["frontend_gap"] else "BAD"
        print(f"  {mark} {row['input']:<55} -> {row['answer']}")
    print(
        f"  mixed into concurrent batches: {inputs['mixed_requests']} requests; bad ones answered per the rule "
        f"{inputs['mixed_bad_answered_per_rule']}/{inputs['mixed_bad']}, frontend gaps answered with an error "
        f"{inputs['mixed_frontend_gap_errors']}/{inputs['mixed_frontend_gap']}, good ones predicted "
        f"{inputs['mixed_good_predictions']}/{inputs['mixed_good']}; worker unchanged: {inputs['worker_unchanged']}"
    )
    start = report["broken_archive_at_start"]
    print(f"\n== Broken archive in the store at start: models serving {start['models']}; log: {start['logged']}")
    print("\n== kill -9 of the cifar10 worker under load")
    for kill in report["kills"]:
        print(
            f"  {kill['requests']} requests, {kill['failed']} failed ({kill['in_flight_at_kill']} in flight at the kill) "
            f"{kill['failed_answers']}; worker back after {kill['seconds_until_workers_back']} s"
        )
    for name, seen in report["queue_overflow"].items():
        print(
            f"\n== Job queue overflow, {name}: burst of {seen['burst']} -> {seen['statuses']}; "
            f"503 says {seen['503_message']!r}; answering again after {seen['seconds_until_answering_again']} s"
        )
    timeout = report["response_timeout"]
    print(
        f"\n== Request outlasting responseTimeout ({timeout['response_timeout_s']} s): client got {timeout['status']} "
        f"{timeout['answer']!r} after {timeout['seconds_until_answer']} s; answering again after "
        f"{timeout['seconds_until_answering_again']} s; worker replaced: {timeout['worker_replaced']}"
    )
    archives = report["broken_archives"]
    print("\n== Broken archives registered over the management API, while cifar10 serves")
    for row in archives["archives"]:
        print(f"  {row['archive']:<18} -> {row['status']} {row['answer']!r} ({row['seconds']} s)")
    print(
        f"  models after: {archives['models_after']}; cifar10 worker unchanged: {archives['serving_worker_unchanged']}; "
        f"same answer: {archives['same_answer']}"
    )
    again = report["restart"]
    print(
        f"\n== Stop + start: version {again['version_before']} -> {again['version_after']}; same answers "
        f"{again['same_answers']}/{again['images']}; {again['seconds_down']} s from stop to serving"
    )


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
    parser.add_argument("--kills", type=int, default=3, help="kill -9 drills, one after the other")
    parser.add_argument("--threads", type=int, default=16, help="clients posting back to back during a kill")
    parser.add_argument(
        "--queue-burst",
        type=int,
        default=800,
        help="simultaneous requests to cifar10 (more than its job queue: job_queue_size in config.properties)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "reliability.json")
    args = parser.parse_args(argv)
    if not args.archive.exists():
        raise SystemExit(f"error: {args.archive} not found (make archive)")

    good_images = (
        encoded_images(args.data)[0][:40] if args.data else [sample_jpeg((i * 6, 255 - i * 6, 90)) for i in range(40)]
    )
    report = {}
    with (
        tempfile.TemporaryDirectory(prefix="reliability-") as workdir,
        FaultServer(args.archive, Path(workdir), args.port_base) as server,
    ):
        print(f"TorchServe for the drills on ports {args.port_base}-{args.port_base + 4}, working directory {workdir}")
        report["inputs"] = try_inputs(server, good_images)
        report["broken_archive_at_start"] = broken_archive_at_start(server)
        report["kills"] = [kill_worker_under_load(server, threads=args.threads) for _ in range(args.kills)]
        report["queue_overflow"] = {
            f"sleepy test model (jobQueueSize {SLEEPY_QUEUE}, 0.5 s a request)": overflow_queue(
                server.client, "sleepy", b"0.5", 4 * (SLEEPY_QUEUE + 1)
            ),
            "cifar10": overflow_queue(server.client, "cifar10", good_images[0], args.queue_burst),
        }
        report["response_timeout"] = outlast_response_timeout(server)
        report["broken_archives"] = register_broken_archives(server)
        report["restart"] = restart(server, good_images[:20])
    report["problems"] = problems(report)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    print("no problem found" if not report["problems"] else f"{len(report['problems'])} problem(s)")
    raise SystemExit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
