"""Other work on the machine during a measurement, and the rule that keeps a busy machine's figures
out of the reports (the rule and its limits: docs/performance.md, "Busy machines").

A command wraps what it measures in `OtherWork`: a thread samples the machine's CPU counters, every
process and the load average every SAMPLE_SECONDS (psutil). Other work is the CPU time the cores
spent on anything but the measurement: their busy time less the CPU time of the measurement's own
processes. Those are this process, its descendants, and the processes it adopted (`adopt`,
`adopt_listeners`) with theirs: what it started that is not its descendant (TorchServe's frontend,
whose launcher exits; a container, under its engine's monitor). The machine's counters, rather than
a sum over the other processes, also hold what no process list shows: processes that ran between
two samples, the kernel's work, other containers' processes, a hypervisor's other guests (steal).
The command's report (harness.report.Report) states the figures, and `judge` refuses them
(BusyMachine) when other work took more than OTHER_WORK_LIMIT of the cores, or when the load
average before the run was above the cores' count plus LOAD_MARGIN; with --noisy the report is
written all the same, marked as measured on a busy machine.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlparse

import psutil

OTHER_WORK_LIMIT = 0.10  # of the cores' time over the run
LOAD_MARGIN = 1.0  # over the cores' count: the highest 1-minute load average before a run
SAMPLE_SECONDS = 1.0
NOISY_HELP = "write the report even from a busy machine, marked as such (docs/performance.md: Busy machines)"

_adopted: set[tuple[int, float]] = set()  # (pid, start time) of the processes adopted by this one


class BusyMachine(RuntimeError):
    """Other work on the machine took too much of it for the figures measured beside it to hold."""


def adopt(process: int | psutil.Process) -> None:
    """Counts `process` and its descendants as this process's own work, as its children are: for a
    process it started that is not its descendant. One already gone is ignored."""
    try:
        process = process if isinstance(process, psutil.Process) else psutil.Process(process)
        _adopted.add((process.pid, process.create_time()))
    except psutil.NoSuchProcess:
        pass


def adopt_listeners(url: str) -> None:
    """Adopts the processes that listen on `url`'s port, when its host is this machine: the server a
    load measures though another command started it, or the process that forwards a container's port.
    Sockets of other users' processes are not visible, and not adopted."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = {ipaddress.ip_address(found[4][0]) for found in socket.getaddrinfo(parsed.hostname, port)}
    except OSError:
        return  # a host this machine cannot resolve is not this machine
    families = (socket.AF_INET, socket.AF_INET6)
    ours = {
        ipaddress.ip_address(address.address.split("%")[0])
        for addresses_of_one in psutil.net_if_addrs().values()
        for address in addresses_of_one
        if address.family in families
    }
    if not any(address.is_loopback or address in ours for address in addresses):
        return
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            adopt(connection.pid)


@dataclass(frozen=True)
class MachineLoad:
    """What the machine did beside a measurement."""

    cores: int
    seconds: float  # measured so far
    other_cpu_seconds: float  # the cores' busy time spent on anything but the measurement
    own_cpu_seconds: float  # the measurement's processes' CPU time
    load_before: float  # 1-minute load average when the measurement started
    load_during: float  # the highest 1-minute load average sampled since

    @property
    def other_share(self) -> float:
        """Other work's share of the cores' time."""
        return self.other_cpu_seconds / (self.cores * self.seconds) if self.seconds > 0 else 0.0

    @property
    def load_limit(self) -> float:
        return self.cores + LOAD_MARGIN

    def too_busy(self) -> str | None:
        """Why figures measured beside this load would not hold; None when they would."""
        if self.load_before > self.load_limit:
            return (
                f"load average {self.load_before:.1f} before the run on {self.cores} cores (limit {self.load_limit:g})"
            )
        if self.other_share > OTHER_WORK_LIMIT:
            return f"other work took {self.other_share:.1%} of the {self.cores} cores (limit {OTHER_WORK_LIMIT:.0%})"
        return None

    def line(self) -> str:
        """The figures, as every report states them."""
        return (
            f"Machine: other work took {self.other_share:.1%} of the {self.cores} cores over the "
            f"{self.seconds:.0f} s measured ({self.other_cpu_seconds:.1f} CPU s, the measurement's own "
            f"{self.own_cpu_seconds:.1f}); load average {self.load_before:.1f} before, {self.load_during:.1f} at most "
            f"during (the measurement's own load included). Limits: other work {OTHER_WORK_LIMIT:.0%} of the "
            f"cores; before the run, a 1-minute load of at most {self.load_limit:g} (docs/performance.md: Busy machines)."
        )


class Seen(NamedTuple):
    """One process at one sample."""

    ppid: int
    started: float  # its start time: with the pid, which process it is
    cpu: float  # user + system seconds
    reaped: float  # the same of its children that ended and were waited for


def busy_seconds() -> float:
    """The seconds all cores have been busy since boot: processes, the kernel, and what a hypervisor
    gave its other guests (steal)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def snapshot() -> dict[int, Seen]:
    """Every process of the machine this user may read, by pid."""
    seen = {}
    for process in psutil.process_iter(["ppid", "create_time", "cpu_times"]):
        info = process.info
        if info["cpu_times"] is not None and info["create_time"] is not None:
            times = info["cpu_times"]
            reaped = times.children_user + times.children_system
            seen[process.pid] = Seen(info["ppid"], info["create_time"], times.user + times.system, reaped)
    return seen


def cpu_used(before: dict[int, Seen], now: dict[int, Seen]) -> dict[int, float]:
    """The CPU seconds each process of `now` used since `before`; one that was not there counts
    from its start. A process that ended in between counts in the first of its ancestors still
    there, whose reaped time then holds all of it: the part seen while it ran is taken off there, so
    that none counts twice."""
    ended = {pid for pid, last in before.items() if pid not in now or now[pid].started != last.started}
    seen_of_ended: dict[int, float] = defaultdict(float)  # ancestor -> its ended descendants' CPU when last seen
    for pid in ended:
        ancestor, passed = before[pid].ppid, {pid}
        while ancestor in ended and ancestor not in passed:  # ended too: its own parent reaped both
            passed.add(ancestor)
            ancestor = before[ancestor].ppid
        seen_of_ended[ancestor] += before[pid].cpu + before[pid].reaped
    used = {}
    for pid, seen in now.items():
        last = before.get(pid)
        if last is None or last.started != seen.started:
            used[pid] = seen.cpu + seen.reaped
        else:
            used[pid] = seen.cpu - last.cpu + max(0.0, seen.reaped - last.reaped - seen_of_ended[pid])
    return used


def own_processes(now: dict[int, Seen]) -> set[int]:
    """This process, what it adopted, and all their descendants, among `now`."""
    children = defaultdict(list)
    for pid, seen in now.items():
        children[seen.ppid].append(pid)
    roots = [pid for pid, started in _adopted if pid in now and now[pid].started == started]
    found, stack = set(), [os.getpid(), *roots]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += children[pid]
    return found


class OtherWork:
    """`with OtherWork(noisy=args.noisy) as other_work:` around what a command measures; its Report
    takes `other_work`, states its figures and asks `judge` whether they hold. `exempt`: why the
    command's figures do not depend on the machine's load (a count of bytes, say): stated, never refused.

    Entering refuses at once (BusyMachine) where the load average is already over the limit."""

    def __init__(self, noisy: bool = False, exempt: str = ""):
        self.noisy, self.exempt = noisy, exempt
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self.sample_until_stopped, daemon=True)

    def __enter__(self) -> OtherWork:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> OtherWork:
        self.load_before = self.load_during = psutil.getloadavg()[0]
        self.started, self.busy_at_start, self.last = time.time(), busy_seconds(), snapshot()
        self.last_time, self.busy, self.own = self.started, 0.0, 0.0
        self.judge()
        self.thread.start()
        return self

    def stop(self) -> None:
        """Takes the last sample; the figures stay as they are from then on."""
        if not self.stopping.is_set():
            self.stopping.set()
            self.thread.join()
            self.sample()

    def sample_until_stopped(self) -> None:
        while not self.stopping.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        with self.lock:
            at, busy, now = time.time(), busy_seconds(), snapshot()
            own = own_processes(now)
            self.own += sum(seconds for pid, seconds in cpu_used(self.last, now).items() if pid in own)
            self.last, self.last_time, self.busy = now, at, busy - self.busy_at_start
            self.load_during = max(self.load_during, psutil.getloadavg()[0])

    def load(self) -> MachineLoad:
        """The figures until now (a sample is taken first while it runs)."""
        if not self.stopping.is_set() and self.thread.is_alive():
            self.sample()
        with self.lock:
            seconds, other = self.last_time - self.started, max(0.0, self.busy - self.own)
            cores = psutil.cpu_count() or 1
            return MachineLoad(cores, seconds, other, self.own, self.load_before, self.load_during)

    def judge(self) -> list[str]:
        """The lines a report of this measurement starts with; raises BusyMachine where its figures
        would not hold, unless the command was run with --noisy (or is exempt)."""
        load = self.load()
        if self.exempt:
            return [f"{load.line()} Not judged: {self.exempt}."]
        reason = load.too_busy()
        if reason is None:
            return [load.line()]
        if not self.noisy:
            raise BusyMachine(
                f"busy machine: {reason}, so figures measured now would not hold; run it on a quiet machine, or "
                "with --noisy to write the report marked as measured on a busy machine"
            )
        return [
            f"**Measured on a busy machine**: other work took {load.other_share:.0%} of the cores "
            f"(load average {load.load_before:.1f}).",
            "",
            load.line(),
        ]


def add_noisy_option(parser: argparse.ArgumentParser, **options) -> None:
    """A report-writing command's --noisy (`options`: more of add_argument's, e.g. Locust's env_var)."""
    parser.add_argument("--noisy", action="store_true", help=NOISY_HELP, **options)


def exits_when_busy(main: Callable) -> Callable:
    """A report-writing command's `main`: a BusyMachine refusal ends it with one line on stderr and
    exit status 2."""

    @functools.wraps(main)
    def command(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BusyMachine as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return command
