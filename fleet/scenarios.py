"""The Deployment's behaviour played with replicas behind the balancer, under Locust's load:

1. rolling update A -> B as maxSurge 1 / maxUnavailable 0: start a B replica, wait until readiness
   puts it in service, run the preStop drain on an A replica (readiness takes it out), stop it;
2. kill -9 of a whole replica: it leaves only when readiness has failed, as with a Service;
3. scale from one replica to two under the same load;
4. overload: two replicas, about twice their measured throughput offered for a while, the pod's
   probes running as the kubelet runs them.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from fleet.balancer import Balancer
from fleet.load import Kubelet, Prober, Sampler, read_sent, start_locust, stop_locust
from fleet.manifest import Pod, read_pod
from fleet.replica import Replica
from loadtests.payloads import DEFAULT_FOLDER as PAYLOADS
from serve.archive import build_archive
from serve.healthcheck import probe_png


class DrillError(Exception):
    """The drill could not be played (versions answer alike...)."""


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
class DrillOptions:
    root: Path
    out: Path
    run_a: Path
    run_b: Path
    port_base: int
    users: int = 16
    warm: float = 10
    hold: float = 10
    scale_hold: float = 30
    overload_seconds: float = 60
    overload_users: int = 768  # > both replicas' queues (job_queue_size 256 each): the excess gets 503
    capacity: float = 0.0  # req/s of two replicas; 0: the scale scenario's measurement
    scenarios: tuple[str, ...] = ("rolling", "kill", "scale", "overload")
    replicas: int = 2  # of version A before the rolling update (kill, scale and overload need 2)
    payloads: Path = PAYLOADS


@dataclass
class Event:
    time: float
    what: str
    data: dict = field(default_factory=dict)


class Fleet:
    """The balancer and the replicas in service, with a log of what happened when."""

    def __init__(self, root: Path, port_base: int, token: str, pod: Pod):
        self.root, self.token, self.pod = root, token, pod
        self.slots = {f"r{index}": port_base + 10 * index for index in range(1, 5)}
        self.balancer = Balancer(root, port_base, self.slots, pod.readiness)
        self.replicas: dict[str, Replica] = {}
        self.events: list[Event] = []
        self.retired: dict[str, dict] = {}
        self.counters = {"retries": 0, "redispatches": 0}
        self.windows: dict[str, tuple[float, float]] = {}  # what the report measures: name -> (start, end)
        self.lock = threading.Lock()

    def event(self, what: str, **data) -> Event:
        event = Event(time.time(), what, data)
        with self.lock:
            self.events.append(event)
        print(f"[{time.strftime('%H:%M:%S')}] {what} {data if data else ''}", flush=True)
        return event

    def hold(self, seconds: float, window: str, start: float) -> None:
        """Keeps the load on for `seconds`, then records the window `window` from `start` until now."""
        time.sleep(seconds)
        self.windows[window] = (start, time.time())

    def add(self, slot: str, version: Version) -> None:
        """Starts a replica of `version` in `slot`; returns once readiness has put it in service."""
        replica = Replica(slot, self.root / slot, self.slots[slot], version.store, {"drill": self.token})
        self.event("start", replica=slot, version=version.name)
        seconds = replica.start()
        self.replicas[slot] = replica
        answer = requests.post(
            f"{replica.gateway.url}/predictions/cifar10",
            data=probe_png(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "image/png"},
            timeout=30,
        )
        answer.raise_for_status()
        version.probe_answer = version.probe_answer or answer.text
        self.balancer.enable(slot)
        self.balancer.wait_status(slot, "UP")
        self.event("in service", replica=slot, version=version.name, ready_seconds=round(seconds, 1))

    def retire(self, slot: str) -> None:
        """The pod's termination: the preStop drain (readiness fails, the balancer takes it out), then
        SIGTERM: TorchServe stops, then the gateway."""
        replica = self.replicas.pop(slot)
        started = time.monotonic()
        self.event("drain", replica=slot)
        replica.drain(**{key: self.pod.drain[key] for key in ("settle", "quiet", "timeout")})
        status = self.balancer.states()[slot].status
        self.event("SIGTERM", replica=slot, balancer=status)
        replica.stop()
        self.retired[slot] = {"status": status, "seconds": time.monotonic() - started}
        self.balancer.disable(slot)
        self.event("stopped", replica=slot)

    def kill(self, slot: str) -> dict:
        """kill -9 of a replica; it stays in rotation until its readiness fails."""
        replica = self.replicas.pop(slot)
        victims = replica.victims()
        before = self.balancer.states()[slot]
        killed_at = time.time()
        replica.kill(victims)
        self.event("kill -9", replica=slot, processes=len(victims), connections=before.connections)
        timeout = self.pod.seconds_to_take_out + 2 * self.pod.readiness.timeout + 10
        down_seconds = self.balancer.wait_status(slot, "DOWN", timeout=timeout)
        after = self.balancer.states()[slot]
        self.event("out of rotation", replica=slot, seconds=round(down_seconds, 1))
        self.balancer.disable(slot)
        return {"killed_at": killed_at, "open_connections": before.connections, "arrived": after.total - before.total}

    def close(self) -> None:
        if self.balancer.process is not None:
            states = self.balancer.states().values()
            self.counters = {
                "retries": sum(s.retries for s in states),
                "redispatches": sum(s.redispatches for s in states),
            }
        for slot in list(self.replicas):
            self.replicas.pop(slot).stop()
        self.balancer.stop()


def prepare_versions(options: DrillOptions) -> tuple[Version, Version]:
    versions = []
    for name, run in (("A", options.run_a), ("B", options.run_b)):
        store = options.root / f"store-{name}"
        build_archive(run, store)
        versions.append(Version(name, run, store))
    if versions[0].model_version == versions[1].model_version:
        raise DrillError(f"runs {options.run_a} and {options.run_b} have the same version: train two runs")
    return versions[0], versions[1]


def overload(fleet: Fleet, options: DrillOptions, capacity: float) -> dict:
    """Two replicas, twice `capacity` offered by PacedUsers, beside the steady load."""
    offered = 2 * capacity
    log = fleet.root / "overload.csv"
    downs = sum(state.downs for state in fleet.balancer.states().values())
    start = fleet.event("overload", offered_per_second=round(offered), users=options.overload_users).time
    locust = start_locust(
        fleet.balancer.url, fleet.token, options.overload_users, options.payloads, log,
        user="PacedUser", rate=offered / options.overload_users, seconds=f"{options.overload_seconds:.0f}s",
    )  # fmt: skip
    locust.wait(timeout=options.overload_seconds + 120)
    end = fleet.event("overload ends").time
    fleet.windows["overload"] = (start, end)
    fleet.hold(options.hold * 2, "after overload", end)
    return {
        "offered": offered,
        "capacity": capacity,
        "sent": read_sent(log),
        "removals": sum(state.downs for state in fleet.balancer.states().values()) - downs,
    }


def rolling_update(fleet: Fleet, options: DrillOptions, version_a: Version, version_b: Version) -> None:
    start = fleet.event("rolling update").time
    for new, old in (("r3", "r1"), ("r4", "r2"))[: options.replicas]:
        fleet.add(new, version_b)
        fleet.retire(old)
    fleet.hold(options.hold, "rolling update", start)
    if version_a.probe_answer == version_b.probe_answer:
        raise DrillError("versions A and B give the same answer to the probe image: cannot tell them apart")


def kill(fleet: Fleet, options: DrillOptions) -> dict:
    start = fleet.event("kill scenario").time
    time.sleep(options.hold)
    figures = fleet.kill("r4")
    fleet.windows["before kill"] = (start, figures["killed_at"])
    fleet.hold(options.hold, "kill -9", figures["killed_at"])
    return figures


def scale_up(fleet: Fleet, options: DrillOptions, version: Version) -> None:
    """From one replica (r3) to two."""
    for slot in [slot for slot in fleet.replicas if slot != "r3"]:
        fleet.retire(slot)
    fleet.hold(options.scale_hold, "one replica", fleet.event("one replica").time)
    fleet.add("r1", version)
    fleet.hold(options.scale_hold, "two replicas", fleet.event("two replicas").time)


def play(options: DrillOptions) -> dict:
    """Runs the scenarios; returns what the report needs."""
    if options.root.exists():
        shutil.rmtree(options.root)
    options.root.mkdir(parents=True)
    version_a, version_b = prepare_versions(options)
    fleet = Fleet(options.root, options.port_base, secrets.token_hex(32), read_pod())
    figures: dict = {"versions": {v.name: v.model_version for v in (version_a, version_b)}, "pod": fleet.pod}
    log = options.root / "requests.csv"
    load = threads = None
    try:
        fleet.balancer.start()
        rolling = "rolling" in options.scenarios
        for slot in (["r1", "r2"] if rolling else ["r3", "r4"])[: options.replicas]:
            fleet.add(slot, version_a if rolling else version_b)
        load = start_locust(fleet.balancer.url, fleet.token, options.users, options.payloads, log)
        threads = (
            Prober(fleet.balancer.url, fleet.token),
            Sampler(fleet, [psutil.Process(load.pid)]),
            Kubelet(fleet, fleet.pod.liveness),
        )
        for thread in threads:
            thread.start()
        load_start = fleet.event("load", users=options.users).time
        time.sleep(options.warm)
        if rolling:
            rolling_update(fleet, options, version_a, version_b)
        if "kill" in options.scenarios:
            figures["kill"] = kill(fleet, options)
        if "scale" in options.scenarios:
            scale_up(fleet, options, version_b)
        if "overload" in options.scenarios:
            capacity = options.capacity
            if not capacity:  # what two replicas answered in the scale scenario
                start, end = fleet.windows["two replicas"]
                capacity = sum(start <= s.time < end for s in read_sent(log)) / (end - start)
            figures["overload"] = overload(fleet, options, capacity)
        fleet.windows["whole run"] = (load_start, time.time())
    finally:
        for thread in threads or ():
            thread.stop()
        if load is not None:
            stop_locust(load)
        fleet.close()
    prober, sampler, kubelet = threads
    names = {version_a.probe_answer: "A", version_b.probe_answer: "B"}
    figures.update(
        events=fleet.events,
        windows=fleet.windows,
        sent=read_sent(log),
        probes=[(t, names.get(text, "other") if status == 200 else "failed") for t, status, text in prober.answers],
        samples=sampler.rows,
        restarts=kubelet.restarts,
        liveness_checks=kubelet.checks,
        retired=fleet.retired,
        balancer=fleet.counters,
    )
    return figures
