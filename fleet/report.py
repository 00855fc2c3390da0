"""The fleet drill's pass/fail rules and its report (reports/fleet/fleet-drill.md, .csv per second, .png).

Each bound is written here only: the drill reports the verdicts and tests/e2e/test_fleet_drill.py
checks them. A verdict is (bound, held, the figures behind it).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import psutil

from harness.other_work import OtherWork
from harness.report import Report, write_csv

Verdict = tuple[str, bool, str]
RECOVERED_P99_FACTOR = 1.5  # after the overload, p99 is normal again at most this factor of before,
RECOVERY_SECONDS = 10.0  # within this many seconds of its end
LABELLED_EVENTS = ("in service", "drain", "kill -9", "overload")  # named on the plot
MARKED_EVENTS = (*LABELLED_EVENTS, "SIGTERM", "out of rotation", "overload ends")  # a line on the plot


class Sent(NamedTuple):
    """One request of Locust's log (fleet/record.py)."""

    time: float  # when the answer came
    ms: float
    failure: str

    @property
    def rejected(self) -> bool:
        """TorchServe's 503 for a full queue (passed through the gateway)."""
        return "HTTP 503" in self.failure


def read_sent(log: Path) -> list[Sent]:
    with open(log, newline="") as handle:
        return [Sent(float(r["time"]), float(r["milliseconds"]), r["failure"]) for r in csv.DictReader(handle)]


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def inside(items: list, window: tuple[float, float]) -> list:
    """The items (Sent requests, or tuples with the time first) whose time lies in the window."""
    start, end = window
    return [item for item in items if start <= item[0] < end]


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
        "probes_failed": sum(name not in ("A", "B") for _t, name in probes),
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


def verdicts(figures: dict) -> list[Verdict]:
    """The bounds of every scenario played."""
    windows = {name: window_figures(name, window, figures) for name, window in figures["windows"].items()}
    retries, redispatches = figures["balancer"]["retries"], figures["balancer"]["redispatches"]
    text = f"HAProxy's wretr {retries}, wredis {redispatches}"
    results = [("the balancer retried and redispatched nothing", retries == 0 and redispatches == 0, text)]
    if retired := figures["retired"]:  # each replica's status when its drain ended, seconds from drain to stop
        text = ", ".join(f"{slot} {r['status']}" for slot, r in retired.items())
        held = all(r["status"] == "DOWN" for r in retired.values())
        results.append(("each replica was out of rotation (readiness) before its SIGTERM", held, text))
        grace = figures["pod"].grace
        text = ", ".join(f"{slot} {r['seconds']:.1f} s" for slot, r in retired.items()) + f" (grace {grace:.0f} s)"
        held = max(r["seconds"] for r in retired.values()) <= grace
        results.append(("each replica drained and stopped within its grace period", held, text))
    if window := windows.get("rolling update"):  # nothing failed, and the answers went from A to B for good
        requests, failed, probes, probes_failed = (window[k] for k in ("requests", "failed", "probes", "probes_failed"))
        text = f"{requests:,} load requests, {failed} failed; {probes} probes, {probes_failed} failed"
        held = failed == 0 and probes_failed == 0 and requests > 0
        results.append(("rolling update: 0 failed requests", held, text))
        seen = [name for _t, name in inside(figures["probes"], figures["windows"]["rolling update"])]
        last_a = max(e.time for e in figures["events"] if e.what == "stopped" and e.data["replica"] in ("r1", "r2"))
        late_a = sum(name == "A" for t, name in figures["probes"] if t > last_a)
        held = bool(seen) and seen[0] == "A" and seen[-1] == "B" and late_a == 0 and "other" not in seen
        text = f"{seen.count('A')} A then {seen.count('B')} B answers; {late_a} A after the last A stopped"
        results.append(("rolling update: answers switch from A to B", held, text))
    excused = 0  # failures the kill -9 and the overload may cause, each within its own bound
    if "kill" in figures:
        excused += windows["kill -9"]["failed"] + windows["kill -9"]["probes_failed"]
        open_connections, arrived = figures["kill"]["open_connections"], figures["kill"]["arrived"]
        text = (
            f"{excused} failed; {open_connections} connections open on it at the kill (one request in flight at "
            f"most each), {arrived} connections sent to it after the kill until readiness took it out"
        )
        bound = "kill -9: failures at most in flight + arrived before its endpoint left"
        results.append((bound, excused <= open_connections + arrived, text))
    if "overload" in figures:  # no restart, no removal, the excess answered 503 at once, p99 back soon
        o = overload_figures(figures)
        text = f"{o['restarts']} restarts due; {figures['liveness_checks']} liveness checks in the run"
        results.append(("overload: 0 restarts by liveness", o["restarts"] == 0, text))
        text = f"{o['removals']} readiness removals (HAProxy's chkdown); fewest in rotation {o['lowest_up']} of 2"
        held = o["removals"] == 0 and o["lowest_up"] == 2
        results.append(("overload: 0 replicas taken out by readiness", held, text))
        held = o["rejected"] > 0 and o["rejected_p99_ms"] < o["good_p50_ms"]
        text = f"{o['rejected']:,} answered 503 (p99 {o['rejected_p99_ms']:,.0f} ms); "
        text += f"good answers' p50 {o['good_p50_ms']:,.0f} ms"
        results.append(("overload: the excess is answered 503 without queueing", held, text))
        recovery = o["recovery_seconds"]
        text = f"p99 before {o['before_p99_ms']:,.0f} ms; back after "
        text += "never" if recovery is None else f"{recovery:.0f} s"
        bound = f"overload: p99 back within {RECOVERED_P99_FACTOR}x of before within {RECOVERY_SECONDS:.0f} s"
        results.append((bound, recovery is not None and recovery <= RECOVERY_SECONDS, text))
        for name in ("overload", "after overload"):  # requests queued in the overload end after it too
            excused += windows[name]["failed"] + windows[name]["probes_failed"]
    whole = windows["whole run"]
    outside = whole["failed"] + whole["probes_failed"] - excused
    text = f"{outside} failed outside them, of {whole['requests']:,} load requests"
    held = outside == 0 and whole["requests"] > 0
    return [*results, ("no request failed outside the kill -9 and overload windows", held, text)]


def timeline(figures: dict) -> list[dict]:
    """One row per second; a figure missing in that second is None (an empty CSV cell)."""
    start = min(e.time for e in figures["events"])
    end = max([s.time for s in figures["sent"]] + [start])
    overload = figures.get("overload", {}).get("sent", [])
    samples = {int(s["time"] - start): s for s in figures["samples"]}
    rows = []
    for second in range(int(end - start) + 1):
        window = (start + second, start + second + 1)
        sent, extra = inside(figures["sent"], window), inside(overload, window)
        probes = [name for _t, name in inside(figures["probes"], window)]
        good = [s.ms for s in sent if not s.failure]
        sample = samples.get(second, {})
        replicas = sample.get("replicas", {}).values()
        row = {
            "second": second,
            "requests": len(sent),
            "failed": sum(bool(s.failure) for s in sent),
            "p50_ms": percentile(good, 0.5) if good else None,
            "p99_ms": percentile(good, 0.99) if good else None,
            "probe_a": probes.count("A"),
            "probe_b": probes.count("B"),
            "probe_failed": len(probes) - probes.count("A") - probes.count("B"),
            "overload_requests": len(extra),
            "overload_503": sum(s.rejected for s in extra),
            "replicas_up": sample.get("up"),
            "torchserve_cpu_cores": round(sum(r["cpu"] for r in replicas), 2) if replicas else None,
            "torchserve_rss_mb": round(max(r["rss_mb"] for r in replicas)) if replicas else None,
            "locust_cpu_cores": round(sample["locust_cpu"], 2) if sample else None,
            "machine_busy_cores": round(sample["machine_cpu"], 2) if sample else None,
        }
        rows.append(row)
    return rows


def plot(figures: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(e.time for e in figures["events"])
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    series = (
        (0, "requests", "requests/s (steady users)", None),
        (0, "overload_requests", "overload requests/s", None),
        (0, "overload_503", "overload 503/s", "red"),
        (0, "failed", "steady failed/s", "black"),
        (1, "p99_ms", "p99 ms (steady)", "purple"),
        (1, "p50_ms", "p50 ms (steady)", "grey"),
        (2, "probe_a", "probe answered by A", "tab:blue"),
        (2, "probe_b", "probe answered by B", "tab:orange"),
        (2, "replicas_up", "replicas in rotation", "black"),
    )
    for axis, key, label, color in series:
        values = [float("nan") if row[key] is None else row[key] for row in rows]
        axes[axis].plot([row["second"] for row in rows], values, label=label, color=color)
    axes[1].set_yscale("log")
    for axis, label in zip(axes, ("per second", "latency ms", "per second / count"), strict=True):
        axis.set_ylabel(label)
        axis.legend(loc="upper right", fontsize=7)
        for event in figures["events"]:
            if event.what in MARKED_EVENTS:
                axis.axvline(event.time - start, color="lightgrey", linewidth=0.8, zorder=0)
    for event in figures["events"]:
        if event.what in LABELLED_EVENTS:
            label = f"{event.what} {event.data.get('replica', '')}"
            axes[0].annotate(label, (event.time - start, 0), rotation=90, fontsize=7, va="bottom")
    axes[2].set_xlabel("seconds since the first replica started")
    fig.suptitle("Fleet drill: replicas behind a Service-like balancer under Locust's load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def resources(figures: dict, name: str) -> dict | None:
    samples = [s for _t, s in inside([(s["time"], s) for s in figures["samples"]], figures["windows"][name])]
    replicas = [r for s in samples for r in s["replicas"].values()]
    if not replicas:
        return None
    return {
        "window": name,
        "TorchServe CPU per replica (cores, mean)": sum(r["cpu"] for r in replicas) / len(replicas),
        "TorchServe RSS per replica (MiB, max)": max(r["rss_mb"] for r in replicas),
        "Locust CPU (cores, mean)": sum(s["locust_cpu"] for s in samples) / len(samples),
        f"machine busy (of {psutil.cpu_count()} cores)": sum(s["machine_cpu"] for s in samples) / len(samples),
    }


def write_report(figures: dict, options, command: str, other_work: OtherWork) -> list[Verdict]:
    results = verdicts(figures)
    pod, v = figures["pod"], figures["versions"]
    windows = [window_figures(name, window, figures) for name, window in figures["windows"].items()]
    title = "Fleet drill: rolling update, kill -9, scale-up and overload behind a Service"
    report = Report(title, command, other_work).text(
        "Compare timings within this run only. Each replica is one pod of deploy/k8s as processes: TorchServe "
        "(harness.server.LocalServer) with the pod's config.properties and console log configuration behind the pod's "
        "nginx gateway. HAProxy plays the Service: "
        "`mode tcp` (connections balanced, not requests), no retries, no redispatch, no passive mark-down; a replica "
        f"leaves rotation only when the Deployment's readiness command fails {pod.readiness.failure_threshold} times, "
        f"{pod.readiness.period:.0f} s apart. The kubelet's liveness probe runs every {pod.liveness.period:.0f} s "
        f"({pod.liveness.failure_threshold} failures would restart). Replicas leave through the preStop drain with the "
        f"Deployment's arguments (settle {pod.drain['settle']:.0f} s, quiet {pod.drain['quiet']:.0f} s). Load: Locust's "
        f"ClassifierUser, {options.users} users with keep-alive connections (the loadtests/ mix, 5 % bad payloads), plus "
        f"a prober every 100 ms telling A = {v['A']} from B = {v['B']}. Docs: docs/kubernetes.md."
    )
    report.text("## Verdicts").table(
        [{"bound": b, "held": h, "figures": t} for b, h, t in results], ["bound", "held", "figures"]
    )
    columns = ["window", "seconds", "requests", "per_second", "p50_ms", "p99_ms", "failed", "probes", "probes_failed"]
    report.text("## Windows (steady users and prober)").table(windows, columns)
    if failures := sorted({f for w in windows for f in w["failures"]}):
        report.text("Failures seen (up to 5 kinds per window):", *[f"- `{f}`" for f in failures])
    if "overload" in figures:
        o = overload_figures(figures)
        report.text(
            "## Overload",
            f"Two replicas; {options.overload_users} PacedUsers offering {o['offered']:,.0f} req/s, twice the "
            f"{o['capacity']:,.0f} req/s the two replicas answered in the 'two replicas' window, for "
            f"{options.overload_seconds:.0f} s beside the steady users. Good answers p50 {o['good_p50_ms']:,.0f} ms, "
            f"p99 {o['good_p99_ms']:,.0f} ms; {o['rejected']:,} answered 503 (queue full) in p50 "
            f"{o['rejected_p50_ms']:,.0f} ms, p99 {o['rejected_p99_ms']:,.0f} ms; {o['other_failures']} other failures; "
            f"{o['answered']:,.0f} answers/s. Steady p99 before {o['before_p99_ms']:,.0f} ms, back within "
            f"{o['recovery_seconds']} s of the end. Readiness removals {o['removals']}, liveness restarts due {o['restarts']}.",
        )
    found = [resources(figures, name) for name in ("one replica", "two replicas") if name in figures["windows"]]
    if found := [r for r in found if r]:
        report.text("## Resources (psutil, every second)").table(found, list(found[0]))
    start = min(e.time for e in figures["events"])
    events = []
    for e in figures["events"]:
        details = ": " + ", ".join(f"{key} {value}" for key, value in e.data.items()) if e.data else ""
        events.append({"second": e.time - start, "event": e.what + details})
    report.text("## Events").table(events, ["second", "event"])
    report.text(
        "Per second: fleet-drill.csv; fleet-drill.png. Per-pod capacity: ../capacity.md (make capacity).",
        "![fleet drill](fleet-drill.png)",
    )
    report.write(options.out / "fleet-drill.md")
    rows = timeline(figures)
    write_csv(options.out / "fleet-drill.csv", rows, list(rows[0]))
    plot(figures, rows, options.out / "fleet-drill.png")
    return results
