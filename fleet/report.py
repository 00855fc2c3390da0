"""The drill's report: reports/fleet/fleet-drill.md (serve.report), .csv (one row per second), .png."""

from __future__ import annotations

import psutil

from fleet.verdicts import inside, overload_figures, percentile, verdicts, window_figures
from serve.report import Report, write_csv

TIMELINE = ["second", "requests", "failed", "p50_ms", "p99_ms", "probe_a", "probe_b", "probe_failed",
            "overload_requests", "overload_503", "replicas_up", "torchserve_cpu_cores", "torchserve_rss_mb",
            "locust_cpu_cores", "machine_busy_cores"]  # fmt: skip
LABELLED_EVENTS = ("in service", "drain", "kill -9", "overload")  # named on the plot
MARKED_EVENTS = (*LABELLED_EVENTS, "SIGTERM", "out of rotation", "overload ends")  # a line on the plot


def timeline(figures: dict) -> list[dict]:
    start = min(e.time for e in figures["events"])
    end = max([s.time for s in figures["sent"]] + [start])
    overload = figures.get("overload", {}).get("sent", [])
    samples = {int(s["time"] - start): s for s in figures["samples"]}
    rows = []
    for second in range(int(end - start) + 1):
        window = (start + second, start + second + 1)
        sent, probes = inside(figures["sent"], window), [n for _t, n in inside(figures["probes"], window)]
        extra, sample = inside(overload, window), samples.get(second, {})
        good = [s.ms for s in sent if not s.failure]
        replicas = sample.get("replicas", {}).values()
        rows.append({
            "second": second, "requests": len(sent), "failed": sum(bool(s.failure) for s in sent),
            "p50_ms": percentile(good, 0.5) if good else None, "p99_ms": percentile(good, 0.99) if good else None,
            "probe_a": probes.count("A"), "probe_b": probes.count("B"), "probe_failed": len(probes) - probes.count("A") - probes.count("B"),
            "overload_requests": len(extra), "overload_503": sum(s.rejected for s in extra), "replicas_up": sample.get("up"),
            "torchserve_cpu_cores": round(sum(r["cpu"] for r in replicas), 2) if replicas else None,
            "torchserve_rss_mb": round(max(r["rss_mb"] for r in replicas)) if replicas else None,
            "locust_cpu_cores": round(sample["locust_cpu"], 2) if sample else None,
            "machine_busy_cores": round(sample["machine_cpu"], 2) if sample else None,
        })  # fmt: skip
    return rows


def plot(figures: dict, rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(e.time for e in figures["events"])
    x = [row["second"] for row in rows]
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    series = (
        (0, "requests", "requests/s (steady users)", None), (0, "overload_requests", "overload requests/s", None),
        (0, "overload_503", "overload 503/s", "red"), (0, "failed", "steady failed/s", "black"),
        (1, "p99_ms", "p99 ms (steady)", "purple"), (1, "p50_ms", "p50 ms (steady)", "grey"),
        (2, "probe_a", "probe answered by A", "tab:blue"), (2, "probe_b", "probe answered by B", "tab:orange"),
        (2, "replicas_up", "replicas in rotation", "black"),
    )  # fmt: skip
    for axis, key, label, color in series:
        axes[axis].plot(
            x, [row[key] if row[key] is not None else float("nan") for row in rows], label=label, color=color
        )
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
    samples = inside([(s["time"], s) for s in figures["samples"]], figures["windows"][name])
    cpu = [r["cpu"] for _t, s in samples for r in s["replicas"].values()]
    if not cpu:
        return None
    return {
        "window": name,
        "TorchServe CPU per replica (cores, mean)": sum(cpu) / len(cpu),
        "TorchServe RSS per replica (MiB, max)": max(r["rss_mb"] for _t, s in samples for r in s["replicas"].values()),
        "Locust CPU (cores, mean)": sum(s["locust_cpu"] for _t, s in samples) / len(samples),
        f"machine busy (of {psutil.cpu_count()} cores)": sum(s["machine_cpu"] for _t, s in samples) / len(samples),
    }


def write_report(figures: dict, options, command: str) -> list:
    rows = timeline(figures)
    write_csv(options.out / "fleet-drill.csv", rows, TIMELINE)
    plot(figures, rows, options.out / "fleet-drill.png")
    results = verdicts(figures)
    pod, v = figures["pod"], figures["versions"]
    windows = [window_figures(name, window, figures) for name, window in figures["windows"].items()]
    report = Report("Fleet drill: rolling update, kill -9, scale-up and overload behind a Service", command).text(
        f"{psutil.cpu_count()} cores shared with other work: timings are noisy; compare within this run only. "
        "Each replica is one pod of deploy/k8s as processes: TorchServe (serve.server.LocalServer) with the pod's "
        "config.properties and console log configuration behind the pod's nginx gateway. HAProxy plays the Service: "
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
    failures = sorted({f for w in windows for f in w["failures"]})
    if failures:
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
    found = [
        r for r in (resources(figures, n) for n in ("one replica", "two replicas") if n in figures["windows"]) if r
    ]
    if found:
        report.text("## Resources (psutil, every second)").table(found, list(found[0]))
    start = min(e.time for e in figures["events"])
    events = [
        {
            "second": e.time - start,
            "event": e.what + (": " + ", ".join(f"{k} {x}" for k, x in e.data.items()) if e.data else ""),
        }
        for e in figures["events"]
    ]
    report.text("## Events").table(events, ["second", "event"])
    report.text(
        "Per second: fleet-drill.csv; fleet-drill.png. Per-pod capacity: capacity.md.",
        "![fleet drill](fleet-drill.png)",
    )
    report.write(options.out / "fleet-drill.md")
    return results
