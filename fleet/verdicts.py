"""The fleet drill's pass/fail rules, from what it recorded to figures per window and one verdict
per bound. The drill reports them and tests/e2e/test_fleet_drill.py checks them: each bound is
written here only. A verdict is (bound, held, the figures behind it).
"""

from __future__ import annotations

from collections.abc import Iterator

from fleet.load import Sent

Verdict = tuple[str, bool, str]
RECOVERED_P99_FACTOR = 1.5  # after the overload, p99 is normal again at most this factor of before,
RECOVERY_SECONDS = 10.0  # within this many seconds of its end


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def inside(items, window: tuple[float, float]) -> list:
    """The Sent requests (or (time, ...) tuples) whose time lies in the window."""
    start, end = window
    return [i for i in items if start <= (i.time if isinstance(i, Sent) else i[0]) < end]


def load_figures(sent: list[Sent], seconds: float) -> dict:
    """Throughput, latency of the good answers and failures of `sent` over `seconds`."""
    good = [s.ms for s in sent if not s.failure]
    return {
        "seconds": seconds,
        "requests": len(sent),
        "per_second": len(sent) / seconds,
        "p50_ms": percentile(good, 0.5),
        "p99_ms": percentile(good, 0.99),
        "failed": sum(bool(s.failure) for s in sent),
    }


def window_figures(name: str, window: tuple[float, float], figures: dict) -> dict:
    sent, probes = inside(figures["sent"], window), inside(figures["probes"], window)
    return {
        "window": name,
        **load_figures(sent, max(window[1] - window[0], 1e-9)),
        "probes": len(probes),
        "probes_failed": sum(name != "A" and name != "B" for _t, name in probes),
        "failures": sorted({s.failure for s in sent if s.failure})[:5],
    }


def overload_figures(figures: dict) -> dict:
    """The overload's own requests (good, 503) and the steady load's p99 before and after it."""
    load = figures["overload"]
    start, end = figures["windows"]["overload"]
    good = [s.ms for s in load["sent"] if not s.failure]
    rejected = [s.ms for s in load["sent"] if s.rejected]
    before = [s.ms for s in inside(figures["sent"], (start - 20, start)) if not s.failure]
    normal = RECOVERED_P99_FACTOR * percentile(before, 0.99)
    recovery = None
    for second in range(int(figures["windows"]["after overload"][1] - end)):
        after = [s.ms for s in inside(figures["sent"], (end + second, end + second + 2)) if not s.failure]
        if after and percentile(after, 0.99) <= normal:
            recovery = float(second)
            break
    samples = inside([(r["time"], r["up"]) for r in figures["samples"]], (start, end))
    return {
        **load,
        "answered": len(load["sent"]) / (end - start),
        "good": len(good),
        "good_p50_ms": percentile(good, 0.5),
        "good_p99_ms": percentile(good, 0.99),
        "rejected": len(rejected),
        "rejected_p50_ms": percentile(rejected, 0.5),
        "rejected_p99_ms": percentile(rejected, 0.99),
        "other_failures": sum(bool(s.failure) and not s.rejected for s in load["sent"]),
        "before_p99_ms": percentile(before, 0.99),
        "recovery_seconds": recovery,
        "lowest_up": min((up for _t, up in samples), default=0),
        "restarts": len(inside(figures["restarts"], (start, end + 20))),
    }


def retired_verdicts(retired: dict[str, dict], grace: float) -> Iterator[Verdict]:
    """retired: each replica's balancer status when its drain ended (before its SIGTERM), and the
    seconds from its drain to its stop."""
    text = ", ".join(f"{slot} {r['status']}" for slot, r in retired.items())
    held = all(r["status"] == "DOWN" for r in retired.values())
    yield "each replica was out of rotation (readiness) before its SIGTERM", held, text
    text = ", ".join(f"{slot} {r['seconds']:.1f} s" for slot, r in retired.items()) + f" (grace {grace:.0f} s)"
    held = max(r["seconds"] for r in retired.values()) <= grace
    yield "each replica drained and stopped within its grace period", held, text


def rolling_verdicts(window: dict, figures: dict) -> Iterator[Verdict]:
    """Nothing failed in the rolling update, and the probe's answers went from A to B for good."""
    requests, failed, probes, probes_failed = (window[k] for k in ("requests", "failed", "probes", "probes_failed"))
    text = f"{requests:,} load requests, {failed} failed; {probes} probes, {probes_failed} failed"
    yield "rolling update: 0 failed requests", failed == 0 and probes_failed == 0 and requests > 0, text
    seen = [name for _t, name in inside(figures["probes"], figures["windows"]["rolling update"])]
    last_a = max(e.time for e in figures["events"] if e.what == "stopped" and e.data["replica"] in ("r1", "r2"))
    late_a = sum(name == "A" for t, name in figures["probes"] if t > last_a)
    held = bool(seen) and seen[0] == "A" and seen[-1] == "B" and late_a == 0 and "other" not in seen
    text = f"{seen.count('A')} A then {seen.count('B')} B answers; {late_a} A after the last A stopped"
    yield "rolling update: answers switch from A to B", held, text


def kill_verdict(failed: int, kill: dict) -> Verdict:
    open_connections, arrived = kill["open_connections"], kill["arrived"]
    text = (
        f"{failed} failed; {open_connections} connections open on it at the kill (one request in flight at most "
        f"each), {arrived} connections sent to it after the kill until readiness took it out"
    )
    return (
        "kill -9: failures at most in flight + arrived before its endpoint left",
        failed <= open_connections + arrived,
        text,
    )


def overload_verdicts(o: dict, liveness_checks: int) -> Iterator[Verdict]:
    """Overload restarts nothing, takes no replica out, answers the excess 503 without queueing (faster
    than a typical good answer), and the steady load's p99 comes back soon after."""
    text = f"{o['restarts']} restarts due; {liveness_checks} liveness checks in the run"
    yield "overload: 0 restarts by liveness", o["restarts"] == 0, text
    text = f"{o['removals']} readiness removals (HAProxy's chkdown); fewest in rotation {o['lowest_up']} of 2"
    yield "overload: 0 replicas taken out by readiness", o["removals"] == 0 and o["lowest_up"] == 2, text
    held = o["rejected"] > 0 and o["rejected_p99_ms"] < o["good_p50_ms"]
    text = f"{o['rejected']:,} answered 503 (p99 {o['rejected_p99_ms']:,.0f} ms); good answers' p50 {o['good_p50_ms']:,.0f} ms"
    yield "overload: the excess is answered 503 without queueing", held, text
    recovery = o["recovery_seconds"]
    text = f"p99 before {o['before_p99_ms']:,.0f} ms; back after {'never' if recovery is None else f'{recovery:.0f} s'}"
    bound = f"overload: p99 back within {RECOVERED_P99_FACTOR}x of before within {RECOVERY_SECONDS:.0f} s"
    yield bound, recovery is not None and recovery <= RECOVERY_SECONDS, text


def verdicts(figures: dict) -> list[Verdict]:
    """The bounds of every scenario played."""
    windows = {name: window_figures(name, window, figures) for name, window in figures["windows"].items()}
    retries, redispatches = figures["balancer"]["retries"], figures["balancer"]["redispatches"]
    text = f"HAProxy's wretr {retries}, wredis {redispatches}"
    results = [("the balancer retried and redispatched nothing", retries == 0 and redispatches == 0, text)]
    if figures["retired"]:
        results += retired_verdicts(figures["retired"], figures["pod"].grace)
    if "rolling update" in windows:
        results += rolling_verdicts(windows["rolling update"], figures)
    excused = 0  # failures the kill -9 and the overload may cause, each within its own bound
    if "kill" in figures:
        excused += windows["kill -9"]["failed"] + windows["kill -9"]["probes_failed"]
        results.append(kill_verdict(excused, figures["kill"]))
    if "overload" in figures:
        results += overload_verdicts(overload_figures(figures), figures["liveness_checks"])
        for name in ("overload", "after overload"):  # requests queued in the overload end after it too
            excused += windows[name]["failed"] + windows[name]["probes_failed"]
    whole = windows["whole run"]
    outside = whole["failed"] + whole["probes_failed"] - excused
    text = f"{outside} failed outside them, of {whole['requests']:,} load requests"
    return [*results, ("no request failed outside the kill -9 and overload windows", outside == 0, text)]
