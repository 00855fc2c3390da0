"""The fleet drill's pass/fail rules, each in one place: the drill reports them and the tests
(tests/e2e/test_fleet_drill.py) check them. Each returns (bound, held, the figures behind it)."""

from __future__ import annotations

Verdict = tuple[str, bool, str]
RECOVERED_P99_FACTOR = 1.5  # after the overload, p99 is normal again at most this factor of before,
RECOVERY_SECONDS = 10.0  # within this many seconds of its end


def rolling_without_failures(requests: int, failed: int, probes: int, probes_failed: int) -> Verdict:
    held = failed == 0 and probes_failed == 0 and requests > 0
    text = f"{requests:,} load requests, {failed} failed; {probes} probes, {probes_failed} failed"
    return "rolling update: 0 failed requests", held, text


def versions_switch(seen: list[str], a_after_last_stop: int) -> Verdict:
    """seen: which version answered each probe of the rolling update ("A", "B", "failed", "other")."""
    held = bool(seen) and seen[0] == "A" and seen[-1] == "B" and a_after_last_stop == 0 and "other" not in seen
    text = f"{seen.count('A')} A then {seen.count('B')} B answers; {a_after_last_stop} A after the last A stopped"
    return "rolling update: answers switch from A to B", held, text


def out_of_rotation_before_sigterm(statuses: dict[str, str]) -> Verdict:
    """statuses: each retired replica's balancer status when its drain ended, before its SIGTERM."""
    held = bool(statuses) and all(status == "DOWN" for status in statuses.values())
    text = ", ".join(f"{slot} {status}" for slot, status in statuses.items())
    return "each replica was out of rotation (readiness) before its SIGTERM", held, text


def stopped_within_grace(seconds: dict[str, float], grace: float) -> Verdict:
    text = ", ".join(f"{slot} {value:.1f} s" for slot, value in seconds.items()) + f" (grace {grace:.0f} s)"
    return "each replica drained and stopped within its grace period", max(seconds.values()) <= grace, text


def no_retry_or_redispatch(retries: int, redispatches: int) -> Verdict:
    text = f"HAProxy's wretr {retries}, wredis {redispatches}"
    return "the balancer retried and redispatched nothing", retries == 0 and redispatches == 0, text


def kill_failures_bounded(failed: int, open_connections: int, arrived: int) -> Verdict:
    text = (
        f"{failed} failed; {open_connections} connections open on it at the kill (one request in flight at most "
        f"each), {arrived} connections sent to it after the kill until readiness took it out"
    )
    return (
        "kill -9: failures at most in flight + arrived before its endpoint left",
        failed <= open_connections + arrived,
        text,
    )


def nothing_fails_elsewhere(outside: int, requests: int) -> Verdict:
    text = f"{outside} failed outside them, of {requests:,} load requests"
    return "no request failed outside the kill -9 and overload windows", outside == 0, text


def overload_restarts_nothing(restarts: int, checks: int) -> Verdict:
    return (
        "overload: 0 restarts by liveness",
        restarts == 0,
        f"{restarts} restarts due; {checks} liveness checks in the run",
    )


def overload_keeps_replicas_ready(removals: int, lowest_up: int, replicas: int) -> Verdict:
    text = f"{removals} readiness removals (HAProxy's chkdown); fewest in rotation {lowest_up} of {replicas}"
    return "overload: 0 replicas taken out by readiness", removals == 0 and lowest_up == replicas, text


def excess_answered_quickly(rejected: int, rejected_p99_ms: float, good_p50_ms: float) -> Verdict:
    """The excess gets TorchServe's 503 without waiting in the queue: faster than a typical good answer."""
    text = f"{rejected:,} answered 503 (p99 {rejected_p99_ms:,.0f} ms); good answers' p50 {good_p50_ms:,.0f} ms"
    return "overload: the excess is answered 503 without queueing", rejected > 0 and rejected_p99_ms < good_p50_ms, text


def p99_recovers(recovery_seconds: float | None, before_p99_ms: float) -> Verdict:
    after = "never" if recovery_seconds is None else f"{recovery_seconds:.0f} s"
    held = recovery_seconds is not None and recovery_seconds <= RECOVERY_SECONDS
    bound = f"overload: p99 back within {RECOVERED_P99_FACTOR}x of before within {RECOVERY_SECONDS:.0f} s"
    return bound, held, f"p99 before {before_p99_ms:,.0f} ms; back after {after}"
