"""From what the drill recorded to figures per window and the verdicts of fleet/rules.py."""

from __future__ import annotations

from fleet import rules
from fleet.load import Sent


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def inside(items, window: tuple[float, float]) -> list:
    """The Sent requests (or (time, ...) tuples) whose time lies in the window."""
    start, end = window
    return [i for i in items if start <= (i.time if isinstance(i, Sent) else i[0]) < end]


def window_figures(name: str, window: tuple[float, float], figures: dict) -> dict:
    sent, probes = inside(figures["sent"], window), inside(figures["probes"], window)
    good = [s.ms for s in sent if not s.failure]
    seconds = max(window[1] - window[0], 1e-9)
    return {
        "window": name,
        "seconds": seconds,
        "requests": len(sent),
        "per_second": len(sent) / seconds,
        "p50_ms": percentile(good, 0.5),
        "p99_ms": percentile(good, 0.99),
        "failed": sum(bool(s.failure) for s in sent),
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
    normal = rules.RECOVERED_P99_FACTOR * percentile(before, 0.99)
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


def verdicts(figures: dict) -> list[rules.Verdict]:
    """The bounds of every scenario played."""
    windows = {name: window_figures(name, window, figures) for name, window in figures["windows"].items()}
    results = [rules.no_retry_or_redispatch(figures["balancer"]["retries"], figures["balancer"]["redispatches"])]
    if figures["retired"]:
        retired = figures["retired"]
        results.append(rules.out_of_rotation_before_sigterm({slot: r["status"] for slot, r in retired.items()}))
        results.append(
            rules.stopped_within_grace({slot: r["seconds"] for slot, r in retired.items()}, figures["pod"].grace)
        )
    if "rolling update" in windows:
        w = windows["rolling update"]
        results.append(rules.rolling_without_failures(w["requests"], w["failed"], w["probes"], w["probes_failed"]))
        seen = [name for _t, name in inside(figures["probes"], figures["windows"]["rolling update"])]
        last_a = max(e.time for e in figures["events"] if e.what == "stopped" and e.data["replica"] in ("r1", "r2"))
        results.append(rules.versions_switch(seen, sum(name == "A" for t, name in figures["probes"] if t > last_a)))
    excused = 0
    if "kill" in figures:
        w, kill = windows["kill -9"], figures["kill"]
        excused += w["failed"] + w["probes_failed"]
        results.append(rules.kill_failures_bounded(excused, kill["open_connections"], kill["arrived"]))
    if "overload" in figures:
        o = overload_figures(figures)
        results.append(rules.overload_restarts_nothing(o["restarts"], figures["liveness_checks"]))
        results.append(rules.overload_keeps_replicas_ready(o["removals"], o["lowest_up"], 2))
        results.append(rules.excess_answered_quickly(o["rejected"], o["rejected_p99_ms"], o["good_p50_ms"]))
        results.append(rules.p99_recovers(o["recovery_seconds"], o["before_p99_ms"]))
        for name in ("overload", "after overload"):  # requests queued in the overload end after it too
            excused += windows[name]["failed"] + windows[name]["probes_failed"]
    whole = windows["whole run"]
    results.append(rules.nothing_fails_elsewhere(whole["failed"] + whole["probes_failed"] - excused, whole["requests"]))
    return results
