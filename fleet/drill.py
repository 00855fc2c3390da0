"""The fleet drill: the Kubernetes Deployment's behaviour played with processes on this machine.

    python -m fleet.drill --run-a models/fleet-a --run-b models/fleet-b     (make fleet-drill)

Replicas of the pod (fleet/replica.py: TorchServe with the pod's config + the nginx gateway) run
behind HAProxy (fleet/balancer.py), which checks them with the readinessProbe's command; Locust's
steady users (loadtests/, ClassifierUser) send their mix of images through it with the gateway's
token, and a prober sends one fixed image every 100 ms to tell which model version answers.

1. rolling update, as the Deployment's strategy (maxSurge 1, maxUnavailable 0) does it: two
   replicas of version A; for each: start a replica of version B, wait until the balancer has it
   in service, drain an A replica with the preStop drain (serve.drain), stop it. Must be 0 failed
   requests, and the answers switch from A's to B's.
2. kill -9 of one replica (TorchServe, its workers and its gateway): the balancer must stop sending
   to it within 5 s; failed requests at most those in flight on it.
3. scale from one replica to two under the same load: throughput and p99 before and after.

Writes <out>/fleet-drill.md, .csv (one row per second) and .png; exits 1 when a bound is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from fleet.balancer import CHECK_SECONDS, FALL, SECONDS_TO_TAKE_OUT, Balancer, BalancerError
from fleet.gateway import GatewayError
from fleet.replica import Replica, ReplicaError
from loadtests.payloads import DEFAULT_FOLDER as PAYLOADS
from serve.archive import REPO, build_archive
from serve.healthcheck import probe_png

KILL_BOUND_SECONDS = 5.0


class DrillError(Exception):
    """The drill could not be played (a replica did not start, versions answer alike...)."""


@dataclass
class Version:
    name: str  # "A" or "B"
    run: Path
    store: Path  # a model store holding this run's cifar10.mar
    probe_answer: str = ""  # its answer to the prober's image, as JSON text

    @property
    def model_version(self) -> str:
        return json.loads((self.run / "metadata.json").read_text())["version"]


@dataclass
class Event:
    time: float
    what: str
    data: dict = field(default_factory=dict)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Fleet:
    """The balancer and the replicas in service, with a log of what happened when."""

    def __init__(self, root: Path, port_base: int, token: str, settle: float, quiet: float):
        self.root, self.token, self.settle, self.quiet = root, token, settle, quiet
        self.slots = {f"r{index}": port_base + 10 * index for index in range(1, 5)}
        self.balancer = Balancer(root, port_base, self.slots)
        self.replicas: dict[str, Replica] = {}
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def event(self, what: str, **data) -> Event:
        event = Event(time.time(), what, data)
        with self.lock:
            self.events.append(event)
        print(f"[{time.strftime('%H:%M:%S')}] {what} {data if data else ''}", flush=True)
        return event

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "image/png"}

    def add(self, slot: str, version: Version) -> Replica:
        """Starts a replica of `version` in `slot`; returns once the balancer has it in service."""
        replica = Replica(slot, self.root / slot, self.slots[slot], version.store, {"drill": self.token})
        self.event("start", replica=slot, version=version.name)
        self.replicas[slot] = replica
        seconds = replica.start()
        answer = requests.post(
            f"{replica.gateway.url}/predictions/cifar10", data=probe_png(), headers=self.headers(), timeout=30
        )
        answer.raise_for_status()
        version.probe_answer = version.probe_answer or answer.text
        self.balancer.enable(slot)
        self.balancer.wait_status(slot, "UP")
        self.event("in service", replica=slot, version=version.name, ready_seconds=round(seconds, 1))
        return replica

    def retire(self, slot: str) -> None:
        """The pod's termination: the preStop drain, then TorchServe and the gateway stop."""
        replica = self.replicas.pop(slot)
        self.event("drain", replica=slot)
        seconds = replica.drain(self.settle, self.quiet)
        self.event("drained", replica=slot, seconds=round(seconds, 1), balancer=self.balancer.states()[slot].status)
        replica.stop()
        self.balancer.disable(slot)
        self.event("stopped", replica=slot)

    def kill(self, slot: str) -> dict:
        """kill -9 of a replica; returns what the balancer did about it."""
        replica = self.replicas.pop(slot)
        victims = replica.victims()
        before = self.balancer.states()[slot]  # its requests in flight, just before the kill
        killed_at = time.time()
        replica.kill(victims)
        self.event("kill -9", replica=slot, processes=len(victims), in_flight=before.in_flight)
        down_seconds = self.balancer.wait_status(slot, "DOWN", timeout=30)
        # When did it last get a request? Watch its session count for a while after it is down.
        last_total, last_change = self.balancer.states()[slot].total, time.time()
        watch_until = killed_at + 2 * KILL_BOUND_SECONDS
        while time.time() < watch_until:
            total = self.balancer.states()[slot].total
            if total != last_total:
                last_total, last_change = total, time.time()
            time.sleep(0.05)
        self.event("down", replica=slot, seconds=round(down_seconds, 2))
        self.balancer.disable(slot)
        return {
            "in_flight": before.in_flight,
            # sent to it after the kill, before it was marked down (on connections kept open to it)
            "sent_after": last_total - before.total,
            "down_seconds": down_seconds,
            "last_request_seconds": max(0.0, last_change - killed_at) if last_total != before.total else 0.0,
            "killed_at": killed_at,
        }

    def close(self) -> None:
        for slot in list(self.replicas):
            self.replicas.pop(slot).stop()
        self.balancer.stop()


class Prober(threading.Thread):
    """Sends the fixed image through the balancer every 100 ms: (time, status, answer text)."""

    def __init__(self, url: str, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.answers: list[tuple[float, int, str]] = []
        self.stopping = threading.Event()

    def run(self):
        session, image = requests.Session(), probe_png()
        while not self.stopping.wait(0.1):
            try:
                response = session.post(f"{self.url}/predictions/cifar10", data=image, headers=self.headers, timeout=30)
                self.answers.append((time.time(), response.status_code, response.text))
            except requests.RequestException as error:
                self.answers.append((time.time(), 0, str(error)))

    def stop(self):
        self.stopping.set()
        self.join()


class Sampler(threading.Thread):
    """Once a second: replicas in service, the CPU (cores) and memory (RSS) of TorchServe (frontend
    and workers) in each replica, the load generator's CPU, and the whole machine's busy cores."""

    def __init__(self, fleet: Fleet, locust: psutil.Process):
        super().__init__(daemon=True)
        self.fleet, self.locust = fleet, locust
        self.rows: list[dict] = []
        self.stopping = threading.Event()
        self.cpu_seconds: dict[int, float] = {}

    def _cpu(self, processes: list[psutil.Process], interval: float) -> float:
        used = 0.0
        for process in processes:
            try:
                total = sum(process.cpu_times()[:2])
            except psutil.Error:
                continue
            used += total - self.cpu_seconds.get(process.pid, total)
            self.cpu_seconds[process.pid] = total
        return used / interval

    def run(self):
        last = time.time()
        while not self.stopping.wait(1.0):
            now = time.time()
            replicas = {}
            for slot, replica in list(self.fleet.replicas.items()):
                processes = replica.processes()
                rss = 0
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        rss += process.memory_info().rss
                replicas[slot] = {"cpu": self._cpu(processes, now - last), "rss_mb": rss / 2**20}
            try:
                locust = [self.locust, *self.locust.children(recursive=True)]
            except psutil.Error:
                locust = []
            up = sum(state.status.startswith("UP") for state in self.fleet.balancer.states().values())
            self.rows.append(
                {
                    "time": now,
                    "replicas": replicas,
                    "up": up,
                    "locust_cpu": self._cpu(locust, now - last),
                    "machine_cpu": psutil.cpu_percent() / 100 * psutil.cpu_count(),  # busy cores, all processes
                }
            )
            last = now

    def stop(self):
        self.stopping.set()
        self.join()


def start_load(url: str, token: str, users: int, payloads: Path, log: Path) -> subprocess.Popen:
    """Locust's steady scenario (valid images and 5 % bad payloads), ClassifierUser only: the
    operator scales TorchServe's workers through one management API, which a fleet does not have."""
    command = [
        sys.executable, "-m", "locust",
        "-f", "loadtests/steady.py,fleet/record.py",
        "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", "30m",
        "--host", url,
        "--inference-key", token,
        "--key-file", str(log.parent / "no-key-file.json"),
        "--payloads", str(payloads),
        "--csv", str(log.parent / "locust"),
        "ClassifierUser",
    ]  # fmt: skip
    env = {**os.environ, "FLEET_REQUEST_LOG": str(log), "PYTHONPATH": str(REPO)}
    with open(log.parent / "locust.out", "ab") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output)


def stop_load(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_requests(log: Path) -> list[tuple[float, float, str]]:
    """(end time, milliseconds, failure) of every request Locust sent."""
    with open(log, newline="") as handle:
        return [(float(row["time"]), float(row["milliseconds"]), row["failure"]) for row in csv.DictReader(handle)]


@dataclass
class Window:
    name: str
    start: float
    end: float


def window_figures(window: Window, sent: list[tuple[float, float, str]], probes) -> dict:
    inside = [(t, ms, failure) for t, ms, failure in sent if window.start <= t < window.end]
    failures = [failure for _t, _ms, failure in inside if failure]
    probe_inside = [(t, status, text) for t, status, text in probes if window.start <= t < window.end]
    return {
        "seconds": window.end - window.start,
        "requests": len(inside),
        "per_second": len(inside) / max(window.end - window.start, 1e-9),
        "p50_ms": percentile([ms for _t, ms, f in inside if not f], 0.50),
        "p99_ms": percentile([ms for _t, ms, f in inside if not f], 0.99),
        "failed": len(failures),
        "failures": sorted(set(failures))[:5],
        "probes": len(probe_inside),
        "probes_failed": sum(status != 200 for _t, status, _text in probe_inside),
    }


@dataclass
class DrillOptions:
    root: Path
    out: Path
    run_a: Path
    run_b: Path
    port_base: int
    users: int
    warm: float
    hold: float
    scale_hold: float
    settle: float
    quiet: float
    scenarios: tuple[str, ...] = ("rolling", "kill", "scale")
    replicas: int = 2  # of version A before the rolling update (the kill and scale scenarios need 2)
    payloads: Path = PAYLOADS  # Locust's images (`make payloads`)


def prepare_versions(options: DrillOptions) -> tuple[Version, Version]:
    versions = []
    for name, run in (("A", options.run_a), ("B", options.run_b)):
        store = options.root / f"store-{name}"
        if store.exists():
            shutil.rmtree(store)
        build_archive(run, store)
        versions.append(Version(name, run, store))
    if versions[0].model_version == versions[1].model_version:
        raise DrillError(f"runs {options.run_a} and {options.run_b} have the same version: train two runs")
    return versions[0], versions[1]


def play(options: DrillOptions) -> dict:
    """Runs the scenarios; returns everything the report needs."""
    if options.root.exists():
        shutil.rmtree(options.root)
    options.root.mkdir(parents=True)
    version_a, version_b = prepare_versions(options)
    token = secrets.token_hex(32)
    fleet = Fleet(options.root, options.port_base, token, options.settle, options.quiet)
    request_log = options.root / "requests.csv"
    windows: list[Window] = []
    figures: dict = {"versions": {v.name: v.model_version for v in (version_a, version_b)}}
    load = prober = sampler = None
    try:
        fleet.balancer.start()
        initial = (["r1", "r2"] if "rolling" in options.scenarios else ["r3", "r4"])[: options.replicas]
        initial_version = version_a if "rolling" in options.scenarios else version_b
        for slot in initial:
            fleet.add(slot, initial_version)
        load = start_load(fleet.balancer.url, token, options.users, options.payloads, request_log)
        prober = Prober(fleet.balancer.url, fleet.headers())
        prober.start()
        sampler = Sampler(fleet, psutil.Process(load.pid))
        sampler.start()
        load_start = fleet.event("load", users=options.users).time
        time.sleep(options.warm)
        if "rolling" in options.scenarios:
            start = fleet.event("rolling update").time
            for new, old in (("r3", "r1"), ("r4", "r2"))[: options.replicas]:
                fleet.add(new, version_b)
                fleet.retire(old)
            time.sleep(options.hold)
            windows.append(Window("rolling update", start, time.time()))
        if version_a.probe_answer and version_a.probe_answer == version_b.probe_answer:
            raise DrillError("versions A and B give the same answer to the probe image: cannot tell them apart")
        if "kill" in options.scenarios:
            start = fleet.event("kill scenario").time
            time.sleep(options.hold)
            figures["kill"] = fleet.kill("r4")
            time.sleep(options.hold)
            windows.append(Window("kill -9", figures["kill"]["killed_at"], time.time()))
            windows.append(Window("before kill", start, figures["kill"]["killed_at"]))
        if "scale" in options.scenarios:
            for slot in [slot for slot in fleet.replicas if slot != "r3"]:
                fleet.retire(slot)
            start = fleet.event("one replica").time
            time.sleep(options.scale_hold)
            windows.append(Window("one replica", start, time.time()))
            start = time.time()
            fleet.add("r1", version_b)
            windows.append(Window("adding the second replica", start, time.time()))
            start = fleet.event("two replicas").time
            time.sleep(options.scale_hold)
            windows.append(Window("two replicas", start, time.time()))
        windows.append(Window("whole run", load_start, time.time()))
    finally:
        for thread in (prober, sampler):
            if thread is not None:
                thread.stop()
        if load is not None:
            stop_load(load)
        fleet.close()
    sent = read_requests(request_log)
    figures.update(
        events=fleet.events,
        windows=windows,
        sent=sent,
        probes=prober.answers,
        samples=sampler.rows,
        versions_answers={version_a.probe_answer: "A", version_b.probe_answer: "B"},
        figures={w.name: window_figures(w, sent, prober.answers) for w in windows},
    )
    return figures


def probe_versions(figures: dict) -> list[tuple[float, str]]:
    """(time, "A" | "B" | "failed" | "other") of each prober answer."""
    names = figures["versions_answers"]
    return [(t, "failed" if status != 200 else names.get(text, "other")) for t, status, text in figures["probes"]]


def verdicts(figures: dict) -> list[tuple[str, bool, str]]:
    """(bound, held, figures) for each scenario played."""
    results = []
    by_name = figures["figures"]
    rolling = by_name.get("rolling update")
    if rolling:
        window = next(w for w in figures["windows"] if w.name == "rolling update")
        seen = [name for t, name in probe_versions(figures) if window.start <= t < window.end]
        last_a_stop = max(
            e.time for e in figures["events"] if e.what == "stopped" and e.data["replica"] in ("r1", "r2")
        )
        a_after = sum(name == "A" for t, name in probe_versions(figures) if t > last_a_stop)
        switched = bool(seen) and seen[0] == "A" and seen[-1] == "B" and a_after == 0 and "other" not in seen
        results.append(
            (
                "rolling update: 0 failed requests",
                rolling["failed"] == 0 and rolling["probes_failed"] == 0,
                f"{rolling['requests']:,} load requests, {rolling['failed']} failed; "
                f"{rolling['probes']} probes, {rolling['probes_failed']} failed",
            )
        )
        results.append(
            (
                "rolling update: answers switch from A to B",
                switched,
                f"first probe answer {seen[0] if seen else '-'}, last {seen[-1] if seen else '-'}, "
                f"{seen.count('A')} A / {seen.count('B')} B, {a_after} A answers after the last A replica stopped",
            )
        )
    if "kill" in figures:
        kill, window = figures["kill"], by_name["kill -9"]
        results.append(
            (
                f"kill -9: the balancer stops sending to it within {KILL_BOUND_SECONDS:.0f} s",
                kill["down_seconds"] <= KILL_BOUND_SECONDS and kill["last_request_seconds"] <= KILL_BOUND_SECONDS,
                f"marked down after {kill['down_seconds']:.2f} s; last request sent to it "
                f"{kill['last_request_seconds']:.2f} s after the kill",
            )
        )
        failed = window["failed"] + window["probes_failed"]
        results.append(
            (
                "kill -9: failed requests at most those in flight on it",
                failed <= kill["in_flight"] + kill["sent_after"],
                f"{failed} failed ({window['failed']} load, {window['probes_failed']} probes); "
                f"{kill['in_flight'] + kill['sent_after']} in flight on it: {kill['in_flight']} at the kill and "
                f"{kill['sent_after']} sent to it before it was marked down (HAProxy's counts)",
            )
        )
    whole = by_name.get("whole run")
    if whole:
        killed = by_name.get("kill -9", {"failed": 0, "probes_failed": 0})
        outside = whole["failed"] + whole["probes_failed"] - killed["failed"] - killed["probes_failed"]
        results.append(
            (
                "no request failed outside the kill -9 window",
                outside == 0,
                f"{whole['requests']:,} load requests and {whole['probes']} probes in the whole run; "
                f"{outside} failed outside the kill window",
            )
        )
    return results


def timeline_rows(figures: dict) -> list[dict]:
    start = min(e.time for e in figures["events"])
    end = max(t for t, _ms, _f in figures["sent"]) if figures["sent"] else start
    rows = []
    probes = probe_versions(figures)
    samples = {int(s["time"] - start): s for s in figures["samples"]}
    sent_by_second: dict[int, list[tuple[float, str]]] = {}
    for t, ms, failure in figures["sent"]:
        sent_by_second.setdefault(int(t - start), []).append((ms, failure))
    probes_by_second: dict[int, list[str]] = {}
    for t, name in probes:
        probes_by_second.setdefault(int(t - start), []).append(name)
    for second in range(int(end - start) + 1):
        sent = sent_by_second.get(second, [])
        good = [ms for ms, failure in sent if not failure]
        answers = probes_by_second.get(second, [])
        sample = samples.get(second, {})
        replicas = sample.get("replicas", {})
        rows.append(
            {
                "second": second,
                "requests": len(sent),
                "failed": sum(1 for _ms, failure in sent if failure),
                "p50_ms": round(percentile(good, 0.5), 1) if good else "",
                "p99_ms": round(percentile(good, 0.99), 1) if good else "",
                "probe_a": answers.count("A"),
                "probe_b": answers.count("B"),
                "probe_failed": answers.count("failed") + answers.count("other"),
                "replicas_up": sample.get("up", ""),
                "torchserve_cpu_cores": round(sum(r["cpu"] for r in replicas.values()), 2) if replicas else "",
                "torchserve_rss_mb": round(max(r["rss_mb"] for r in replicas.values())) if replicas else "",
                "locust_cpu_cores": round(sample["locust_cpu"], 2) if sample else "",
                "machine_busy_cores": round(sample["machine_cpu"], 2) if sample else "",
            }
        )
    return rows


def plot(figures: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(e.time for e in figures["events"])
    seconds = [row["second"] for row in rows]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    top.plot(seconds, [row["requests"] for row in rows], label="requests/s (Locust)")
    top.bar(seconds, [row["failed"] for row in rows], color="red", label="failed/s")
    top.set_ylabel("per second")
    top.legend(loc="upper right")
    middle.plot(seconds, [row["p99_ms"] or float("nan") for row in rows], color="purple", label="p99 ms")
    middle.plot(seconds, [row["p50_ms"] or float("nan") for row in rows], color="grey", label="p50 ms")
    middle.set_ylabel("latency ms")
    middle.set_yscale("log")
    middle.legend(loc="upper right")
    bottom.plot(seconds, [row["probe_a"] for row in rows], color="tab:blue", label="probe answered by A")
    bottom.plot(seconds, [row["probe_b"] for row in rows], color="tab:orange", label="probe answered by B")
    sampled = [row for row in rows if row["replicas_up"] != ""]
    bottom.step(
        [row["second"] for row in sampled],
        [row["replicas_up"] for row in sampled],
        color="black",
        where="post",
        label="replicas up (balancer)",
    )
    bottom.set_ylabel("per second / count")
    bottom.set_xlabel("seconds since the first replica started")
    bottom.legend(loc="upper right")
    for event in figures["events"]:
        if event.what in ("in service", "drain", "kill -9", "stopped"):
            for axis in (top, middle, bottom):
                axis.axvline(event.time - start, color="lightgrey", linewidth=0.8, zorder=0)
            top.annotate(
                f"{event.what} {event.data.get('replica', '')}",
                (event.time - start, 0),
                rotation=90,
                fontsize=7,
                va="bottom",
            )
    fig.suptitle("Fleet drill: replicas behind HAProxy under Locust's steady load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def resource_figures(figures: dict, window_name: str) -> dict:
    """Mean CPU (cores) and largest RSS of one TorchServe (frontend + workers) in a window."""
    window = next((w for w in figures["windows"] if w.name == window_name), None)
    if window is None:
        return {}
    cpu, rss, locust, machine = [], [], [], []
    for sample in figures["samples"]:
        if window.start <= sample["time"] < window.end:
            cpu += [r["cpu"] for r in sample["replicas"].values()]
            rss += [r["rss_mb"] for r in sample["replicas"].values()]
            locust.append(sample["locust_cpu"])
            machine.append(sample["machine_cpu"])
    if not cpu:
        return {}
    return {
        "cpu": sum(cpu) / len(cpu),
        "rss_mb": max(rss),
        "locust_cpu": sum(locust) / len(locust),
        "machine_cpu": sum(machine) / len(machine),
    }


def write_report(figures: dict, options: DrillOptions, command: str) -> list[tuple[str, bool, str]]:
    options.out.mkdir(parents=True, exist_ok=True)
    rows = timeline_rows(figures)
    with open(options.out / "fleet-drill.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(figures, rows, options.out / "fleet-drill.png")
    results = verdicts(figures)
    start = min(e.time for e in figures["events"])
    lines = [
        "# Fleet drill: rolling update, kill -9 and scale-up behind a load balancer",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(start))} with `{command}` "
        f"({os.cpu_count()} cores, shared with other work: timings are noisy; compare within this run only).",
        "",
        "Each replica plays one pod of deploy/k8s: TorchServe 0.12 with the pod's config.properties "
        "(token auth off, APIs on loopback) behind the pod's nginx gateway (the same nginx.conf, bearer "
        "token checked); HAProxy 2.6 plays the Service and checks each replica with the readinessProbe's "
        "command (`python -m serve.healthcheck --predict --drain-file ...`, every "
        f"{CHECK_SECONDS:.0f} s with {CHECK_SECONDS:.0f} s to answer, {FALL} failures take it out); replicas "
        "leave through `serve.drain`, the preStop "
        "hook. Load: "
        f"Locust's steady ClassifierUser, {options.users} users (closed loop, the loadtests/ mix with 5 % bad "
        "payloads that must get their 400), plus a prober sending one fixed image every 100 ms to tell "
        f"the versions apart: A = {figures['versions']['A']} (`{options.run_a}`), B = "
        f"{figures['versions']['B']} (`{options.run_b}`). Docs: docs/kubernetes.md.",
        "",
        "## Verdicts",
        "",
        "| bound | held | figures |",
        "| --- | --- | --- |",
        *[f"| {bound} | {'yes' if held else '**NO**'} | {text} |" for bound, held, text in results],
        "",
        "## Windows",
        "",
        "| window | seconds | load requests | per second | p50 ms | p99 ms | failed | probes | probes failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in figures["figures"].items():
        lines.append(
            f"| {name} | {f['seconds']:.0f} | {f['requests']:,} | {f['per_second']:,.0f} | {f['p50_ms']:.0f} | "
            f"{f['p99_ms']:.0f} | {f['failed']} | {f['probes']} | {f['probes_failed']} |"
        )
    failures = {failure for f in figures["figures"].values() for failure in f["failures"]}
    if failures:
        lines += ["", "Failures seen (up to 5 kinds per window):", ""] + [f"- `{failure}`" for failure in failures]
    one, two = resource_figures(figures, "one replica"), resource_figures(figures, "two replicas")
    if one and two:
        single, scaled = figures["figures"]["one replica"], figures["figures"]["two replicas"]
        lines += [
            "",
            "## Resources (psutil, sampled every second)",
            "",
            "| window | TorchServe CPU per replica (cores, mean) | TorchServe RSS per replica (MiB, max) "
            f"| Locust CPU (cores, mean) | machine busy (of {psutil.cpu_count()} cores, all processes) |",
            "| --- | --- | --- | --- | --- |",
            *[
                f"| {name} | {r['cpu']:.2f} | {r['rss_mb']:.0f} | {r['locust_cpu']:.2f} | {r['machine_cpu']:.2f} |"
                for name, r in (("one replica", one), ("two replicas", two))
            ],
            "",
            f"Scale-up: {scaled['per_second']:,.0f} req/s with two replicas against {single['per_second']:,.0f} "
            f"with one (p99 {scaled['p99_ms']:,.0f} against {single['p99_ms']:,.0f} ms). Both replicas share "
            f"this machine's {psutil.cpu_count()} cores with Locust, HAProxy, the gateways "
            "and whatever else runs here: a second replica adds workers, not cores, so the gain is bounded by "
            "the cores left over (the machine-busy column), not by TorchServe. On a cluster each pod brings "
            "its own cores (its CPU request), and throughput adds up per pod (docs/kubernetes.md: Capacity).",
        ]
    lines += ["", "## Events", "", "| second | event |", "| --- | --- |"]
    for event in figures["events"]:
        data = ", ".join(f"{key} {value}" for key, value in event.data.items())
        lines.append(f"| {event.time - start:.1f} | {event.what}{': ' + data if data else ''} |")
    lines += [
        "",
        "Per second: fleet-drill.csv (requests, failures, p50/p99, which version answered the probe, "
        "replicas up, CPU and RSS); fleet-drill.png.",
        "",
        "![fleet drill](fleet-drill.png)",
        "",
    ]
    (options.out / "fleet-drill.md").write_text("\n".join(lines))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.drill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-a", type=Path, required=True, help="training run of version A")
    parser.add_argument("--run-b", type=Path, required=True, help="training run of version B (another seed)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "fleet")
    parser.add_argument("--workdir", type=Path, default=REPO / "logs" / "fleet-drill", help="replicas' folders")
    parser.add_argument("--port-base", type=int, default=38500, help="HAProxy's port; replica i at +10*i")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--warm", type=float, default=10, help="seconds of load before the first scenario")
    parser.add_argument("--hold", type=float, default=10, help="seconds of load after each change")
    parser.add_argument("--scale-hold", type=float, default=30, help="seconds measured with one, then two replicas")
    parser.add_argument(
        "--settle",
        type=float,
        default=SECONDS_TO_TAKE_OUT,
        help=f"serve.drain --settle: until the balancer's checks take the replica out (default: {SECONDS_TO_TAKE_OUT})",
    )
    parser.add_argument("--quiet", type=float, default=1, help="serve.drain --quiet")
    parser.add_argument("--scenarios", default="rolling,kill,scale")
    parser.add_argument("--payloads", type=Path, default=PAYLOADS, help="Locust's images (make payloads)")
    args = parser.parse_args(argv)
    options = DrillOptions(
        root=args.workdir.resolve(),
        out=args.out,
        run_a=args.run_a,
        run_b=args.run_b,
        port_base=args.port_base,
        users=args.users,
        warm=args.warm,
        hold=args.hold,
        scale_hold=args.scale_hold,
        settle=args.settle,
        quiet=args.quiet,
        scenarios=tuple(args.scenarios.split(",")),
        payloads=args.payloads,
    )
    try:
        figures = play(options)
    except (DrillError, BalancerError, GatewayError, ReplicaError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m fleet.drill " + " ".join(argv if argv is not None else sys.argv[1:])
    results = write_report(figures, options, command)
    for bound, held, text in results:
        print(f"{'held' if held else 'BROKEN'}: {bound}: {text}")
    print(f"wrote {options.out / 'fleet-drill.md'}")
    return 0 if all(held for _bound, held, _text in results) else 1


if __name__ == "__main__":
    sys.exit(main())
