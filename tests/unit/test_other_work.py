"""The busy-machine guard (harness/other_work.py): what counts as other work, and that a report refuses
to be written from a busy machine unless --noisy. A process of the test's own keeps a core busy:
started detached (not the measurement's descendant), it is other work; as a child, or adopted, it is
the measurement's own. Other work of the shared machine may add to the figures, never take from them:
the quiet case is checked through the measurement's own CPU time, which nothing else touches."""

from __future__ import annotations

import contextlib
import importlib
import os
import shlex
import subprocess
import sys
import time

import psutil
import pytest

from harness.other_work import (
    OTHER_WORK_LIMIT,
    BusyMachine,
    MachineLoad,
    OtherWork,
    Seen,
    adopt,
    cpu_used,
    exits_when_busy,
)
from harness.report import Report

SPIN = f"{shlex.quote(sys.executable)} -c 'while True: pass'"
BUSY_SECONDS = 3


def cpu(process: psutil.Process) -> float:
    """User + system seconds of `process`, with those of its children that ended."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


@contextlib.contextmanager
def detached_busy_process():
    """A process spinning on one core whose parent exits at once: it is no descendant of this one."""
    launcher = subprocess.run(["sh", "-c", f"{SPIN} >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    busy = psutil.Process(int(launcher.stdout))
    try:
        assert busy.ppid() != os.getpid()
        yield busy
    finally:
        busy.kill()


def test_a_busy_process_beside_the_measurement_refuses_the_report_and_noisy_marks_it(tmp_path):
    with detached_busy_process() as busy:
        used_before = cpu(busy)
        with OtherWork(noisy=True) as other_work:
            time.sleep(BUSY_SECONDS)
        busy_seconds = cpu(busy) - used_before
    load = other_work.load()
    assert load.other_cpu_seconds >= 0.8 * busy_seconds
    assert load.other_share >= OTHER_WORK_LIMIT
    assert load.too_busy() is not None

    page = Report("Figures", "python -m figures", other_work).text("a figure").write(tmp_path / "noisy.md").read_text()
    assert page.split("\n\n")[2].startswith("**Measured on a busy machine**: other work took")  # below the command
    assert f"Machine: other work took {load.other_share:.1%} of the {load.cores} cores" in page

    other_work.noisy = False  # the same figures, judged as a run without --noisy
    with pytest.raises(BusyMachine, match=r"^busy machine: (other work took|load average)"):
        Report("Figures", "python -m figures", other_work).text("a figure").write(tmp_path / "strict.md")
    assert not (tmp_path / "strict.md").exists()


def test_the_measurements_children_and_adopted_processes_are_its_own_work():
    """A busy grandchild (it and its parent end within the run, so they count through this process's
    reaped time) and a busy detached process this one adopted: all their CPU time is the
    measurement's, once."""
    with detached_busy_process() as adopted:
        adopt(adopted)
        this = psutil.Process()
        before, adopted_before = cpu(this), cpu(adopted)
        with OtherWork(noisy=True) as other_work:
            child = subprocess.Popen(["sh", "-c", f"{SPIN}; true"])
            while not (spinning := psutil.Process(child.pid).children()):
                time.sleep(0.05)
            deadline = time.monotonic() + 60  # however busy the machine, until each has had half a CPU second
            while min(cpu(spinning[0]), cpu(adopted) - adopted_before) < 0.5 and time.monotonic() < deadline:
                time.sleep(0.25)
            spinning[0].kill()  # the shell reaps it, goes on to `true` and ends
            child.wait(timeout=30)
            adopted_seconds = cpu(adopted) - adopted_before
        ours = cpu(this) - before
    load = other_work.load()
    assert ours >= 0.5 and adopted_seconds >= 0.5
    assert load.own_cpu_seconds == pytest.approx(ours + adopted_seconds, abs=0.1)


def test_a_process_that_ended_counts_once_in_its_parent():
    before = {
        1: Seen(ppid=0, started=10.0, cpu=5.0, reaped=0.0),
        2: Seen(ppid=1, started=20.0, cpu=1.0, reaped=0.0),  # ends, 0.5 s later
        3: Seen(ppid=1, started=30.0, cpu=2.0, reaped=0.0),  # ends, 0.25 s later; its pid is taken since
        5: Seen(ppid=1, started=40.0, cpu=1.0, reaped=0.0),  # ends, with its child, both 0.125 s later
        6: Seen(ppid=5, started=41.0, cpu=3.0, reaped=0.0),
    }
    now = {
        1: Seen(ppid=0, started=10.0, cpu=5.5, reaped=1.5 + 2.25 + 1.125 + 3.125),  # reaped all of them
        3: Seen(ppid=1, started=31.0, cpu=0.25, reaped=0.0),
        4: Seen(ppid=1, started=32.0, cpu=0.75, reaped=0.0),  # started since
    }
    # 1: 0.5 s of its own and, of its reaped time, what the ended ones used since they were last seen;
    # the new 3 and 4 from their start
    assert cpu_used(before, now) == {1: 0.5 + 0.5 + 0.25 + 0.125 + 0.125, 3: 0.25, 4: 0.75}


def test_the_limits():
    quiet = MachineLoad(cores=2, seconds=100, other_cpu_seconds=19, own_cpu_seconds=150, load_before=3, load_during=9)
    assert quiet.other_share == pytest.approx(0.095) and quiet.too_busy() is None
    busy = MachineLoad(cores=2, seconds=100, other_cpu_seconds=21, own_cpu_seconds=150, load_before=0, load_during=3)
    assert busy.too_busy() == "other work took 10.5% of the 2 cores (limit 10%)"
    loaded = MachineLoad(cores=2, seconds=0, other_cpu_seconds=0, own_cpu_seconds=0, load_before=3.2, load_during=0)
    assert loaded.too_busy() == "load average 3.2 before the run on 2 cores (limit 3)"


def test_an_exempt_report_states_the_load_and_is_never_refused(tmp_path):
    with detached_busy_process(), OtherWork(exempt="a count of bytes") as other_work:
        time.sleep(1)
    page = Report("Bytes", "python -m bytes", other_work).write(tmp_path / "bytes.md").read_text()
    assert "Machine: other work took" in page and "Not judged: a count of bytes." in page
    assert "busy machine" not in page


def test_a_refusal_ends_the_command_with_one_line_and_status_2(capsys):
    @exits_when_busy
    def main(argv=None):
        raise BusyMachine("busy machine: other work took 50.0% of the 2 cores (limit 10%)")

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: busy machine: other work took 50.0% of the 2 cores (limit 10%)\n"


JUDGED = ["benchmarks.serving", "benchmarks.images", "benchmarks.portability", "benchmarks.training"]
JUDGED += ["fleet.drill", "fleet.capacity", "reliability.__main__"]
EXEMPT = ["benchmarks.log_volume", "benchmarks.gpu_check"]


@pytest.mark.parametrize("module", JUDGED + EXEMPT)
def test_every_judged_command_takes_noisy_and_no_exempt_one_does(module, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    assert ("--noisy" in capsys.readouterr().out) == (module in JUDGED)
