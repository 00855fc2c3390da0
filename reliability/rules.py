"""The pass/fail rule of each drill, in one place: `python -m reliability` reports what they find
and the tests assert that they find nothing. Each returns the broken promises, worded for a report.
`timing=False` leaves out the bounds on how long an answer took (the tests check what a user would
see); the memory's return to its baseline is checked either way.
"""

from __future__ import annotations

WORKER_ERRORS = ("500 ", "507 ")  # what TorchServe answers the requests of a worker that died
ATTACKER_SECONDS = 2.0  # hostile drill: the longest an attacker may wait for its refusal
GOOD_SUCCESS = 0.99  # the share of the good client's requests that must succeed
GOOD_P99_SECONDS = 1.0  # the good client's 99th-percentile latency during the attack
MEMORY_BACK_SECONDS = 60  # the time the server's memory may take to come back to its baseline


def inputs_problems(seen: dict) -> list[str]:
    """Each input answered as its rule says (the frontend's known gaps aside), alone and mixed into
    batches, and the worker unchanged."""
    found = [f"input {row['input']!r}: {row['answer']}" for row in seen["inputs"] if not (row["ok"] or row["gap"])]
    if seen["mixed_kept_the_rule"] != seen["mixed"] or not seen["worker_unchanged"]:
        found.append("inputs mixed into batches: not every answer kept the rule, or the worker changed")
    return found


def kill_problems(seen: dict) -> list[str]:
    """kill -9 of a worker under load: at most one request lost per client (in flight on the killed
    worker, or sent before TorchServe noticed), each a worker error, and the worker replaced."""
    found = []
    if seen["failed"] > seen["clients"]:
        found.append(f"kill -9: {seen['failed']} requests failed, more than one per client ({seen['clients']})")
    found += [
        f"kill -9: failed with {answer}" for answer in seen["failed_answers"] if not answer.startswith(WORKER_ERRORS)
    ]
    if not seen["new_pids"] or seen["killed_pid"] in seen["new_pids"]:
        found.append("kill -9: the killed worker was not replaced")
    return found


def overflow_problems(name: str, seen: dict) -> list[str]:
    """A burst beyond the job queue: each request served (200) or refused with 503, nothing else."""
    others = set(seen["statuses"]) - {200, 503}
    return [f"queue overflow, {name}: answered {sorted(map(str, others))}"] if others else []


def timeout_problems(seen: dict) -> list[str]:
    """A request outlasting responseTimeout: answered 500 "Worker died." well before its own end,
    and the worker replaced."""
    found = [] if seen["worker_replaced"] else ["the worker that outlasted responseTimeout was not replaced"]
    if seen["status"] != 500 or seen["answer"] != "Worker died.":
        found.append(f"a request outlasting responseTimeout got {seen['status']} {seen['answer']!r}")
    if seen["seconds_until_answer"] >= seen["response_timeout_s"] + 5:
        found.append(f"a request outlasting responseTimeout waited {seen['seconds_until_answer']} s")
    return found


def archive_problems(seen: dict) -> list[str]:
    """Broken archives registered while cifar10 serves: each refused with an error that names it,
    and the serving model untouched (same models, same worker, same answer)."""
    found = [
        f"broken archive {row['archive']}: {row['status']} {row['answer']!r}"
        for row in seen["archives"]
        if row["status"] < 400 or row["archive"].removesuffix(".mar") not in row["answer"]
    ]
    if seen["models_after"] != seen["models_before"] or not (seen["serving_worker_unchanged"] and seen["same_answer"]):
        found.append("a broken archive disturbed the serving model")
    return found


def restart_problems(seen: dict) -> list[str]:
    """Stop + start: the same version from the model store, the same answer to every image."""
    if seen["version_after"] != seen["version_before"] or seen["same_answers"] != seen["images"]:
        return [f"stop + start: version {seen['version_before']} -> {seen['version_after']}, {seen}"]
    return []


def hostile_problems(row: dict, timing: bool = True) -> list[str]:
    """One attack: attackers answered as allowed (4xx or 503; 200 for valid requests), the good
    client served, no worker restarted."""
    name, allowed, found = row["attack"], set(row["allowed"]), []
    if bad := {status: count for status, count in row["attacker_answers"].items() if status not in allowed}:
        found.append(f"{name}: attacker answered {bad} (allowed: {sorted(allowed)})")
    if row["good_success"] < GOOD_SUCCESS:
        found.append(f"{name}: good client {row['good_success']:.1%} successful {row['good_failures']}")
    if row["worker_restarts"]:
        found.append(f"{name}: {row['worker_restarts']} worker(s) restarted")
    if timing and row["attacker_max_s"] is not None and row["attacker_max_s"] > ATTACKER_SECONDS:
        found.append(f"{name}: an attacker waited {row['attacker_max_s']:.1f} s for its answer")
    if timing and row["good_p99_s"] is not None and row["good_p99_s"] > GOOD_P99_SECONDS:
        found.append(f"{name}: good client p99 {row['good_p99_s']:.2f} s")
    if row["memory_back_s"] is None:
        found.append(f"{name}: memory not back to its baseline within {MEMORY_BACK_SECONDS} s")
    return found
