"""The fleet drill's pass/fail rules, each in one place: the drill reports them and the tests
(tests/e2e/test_fleet_drill.py) check them. Each returns (bound, held, the figures behind it).
"""

from __future__ import annotations

Verdict = tuple[str, bool, str]

# After the overload, the p99 is back to normal when it is at most this factor of the p99 before it,
RECOVERED_P99_FACTOR = 1.5
# within this many seconds of the overload's end.
RECOVERY_SECONDS = 10.0


def rolling_without_failures(requests: int, failed: int, probes: int, probes_failed: int) -> Verdict:
    return (
        "rolling update: 0 failed requests",
        failed == 0 and probes_failed == 0 and requests > 0,
        f"{requests:,} load requests, {failed} failed; {probes} probes, {probes_failed} failed",
    )


def versions_switch(seen: list[str], a_after_last_stop: int) -> Verdict:
    """seen: which version answered each probe in the rolling window ("A", "B", "failed", "other")."""
    held = bool(seen) and seen[0] == "A" and seen[-1] == "B" and a_after_last_stop == 0 and "other" not in seen
    return (
        "rolling update: answers switch from A to B",
        held,
        f"first probe answer {seen[0] if seen else '-'}, last {seen[-1] if seen else '-'}, {seen.count('A')} A / "
        f"{seen.count('B')} B, {a_after_last_stop} A answers after the last A replica stopped",
    )


def out_of_rotation_before_sigterm(statuses: dict[str, str]) -> Verdict:
    """statuses: each retired replica's balancer status when its drain ended, just before its SIGTERM."""
    return (
        "each replica was out of rotation (readiness) before its SIGTERM",
        bool(statuses) and all(status == "DOWN" for status in statuses.values()),
        ", ".join(f"{slot} {status}" for slot, status in statuses.items()),
    )


def stopped_within_grace(seconds: dict[str, float], grace: float) -> Verdict:
    """seconds: each retired replica's drain + stop."""
    return (
        "each replica drained and stopped within terminationGracePeriodSeconds",
        all(value <= grace for value in seconds.values()),
        ", ".join(f"{slot} {value:.1f} s" for slot, value in seconds.items()) + f" (grace {grace:.0f} s)",
    )


def no_retry_or_redispatch(retries: int, redispatches: int) -> Verdict:
    return (
        "the balancer retried and redispatched nothing (a Service does neither)",
        retries == 0 and redispatches == 0,
        f"HAProxy's wretr {retries}, wredis {redispatches}",
    )


def kill_failures_bounded(failed: int, open_connections: int, arrived: int) -> Verdict:
    return (
        "kill -9: failures at most the requests in flight on it plus those that arrived before its endpoint left",
        failed <= open_connections + arrived,
        f"{failed} failed; {open_connections} connections open on it at the kill (at most one request in flight "
        f"each), {arrived} connections sent to it after the kill until readiness took it out",
    )


def nothing_fails_elsewhere(outside: int, requests: int) -> Verdict:
    return (
        "no request failed outside the kill -9 and overload windows",
        outside == 0,
        f"{outside} failed outside them, of {requests:,} load requests in the whole run",
    )


def overload_restarts_nothing(restarts: int, checks: int) -> Verdict:
    return (
        "overload: 0 restarts by the liveness probe",
        restarts == 0,
        f"{restarts} restarts due, {checks} liveness checks",
    )


def overload_keeps_replicas_ready(removals: int, lowest_up: int, replicas: int) -> Verdict:
    return (
        "overload: 0 replicas taken out by readiness",
        removals == 0 and lowest_up == replicas,
        f"{removals} readiness removals (HAProxy's chkdown); fewest in service {lowest_up} of {replicas}",
    )


def excess_answered_quickly(rejected: int, rejected_p99_ms: float, good_p50_ms: float) -> Verdict:
    """The excess gets TorchServe's 503 without waiting in the queue: faster than a typical good answer."""
    return (
        "overload: the excess is answered 503 without queueing",
        rejected > 0 and rejected_p99_ms < good_p50_ms,
        f"{rejected:,} answered 503, p99 {rejected_p99_ms:,.0f} ms; good answers' p50 {good_p50_ms:,.0f} ms",
    )


def p99_recovers(recovery_seconds: float | None, before_p99_ms: float) -> Verdict:
    return (
        f"overload: p99 back within {RECOVERED_P99_FACTOR}x of before within {RECOVERY_SECONDS:.0f} s",
        recovery_seconds is not None and recovery_seconds <= RECOVERY_SECONDS,
        f"p99 before {before_p99_ms:,.0f} ms; back after "
        + ("never" if recovery_seconds is None else f"{recovery_seconds:.0f} s"),
    )
