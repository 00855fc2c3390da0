"""Markdown reports (with a CSV of their rows) for runs against the service: the benchmarks, the
drills, the soak and the fleet drill all write theirs through `Report`, so every report names the
command that made it, the day it ran and what other work the machine did meanwhile (and none is
written from a busy machine unless asked: harness/other_work.py), and its tables look alike.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.other_work import OtherWork

Cell = Callable[[object], str]


def cell(value: object) -> str:
    """A table cell: floats to one decimal (smaller ones to three significant figures), None as —."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def percent(value: object) -> str:
    return "—" if value is None else f"{value:.1%}"


class Report:
    """One Markdown page: a title, the command and when it ran, the other work beside what it
    measured (`other_work`, which judges whether the figures hold), then text and tables in order."""

    def __init__(self, title: str, command: str, other_work: OtherWork):
        self.head = [f"# {title}", "", f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores."]
        self.other_work = other_work
        self.lines: list[str] = []

    def text(self, *lines: str) -> Report:
        self.lines += [*lines, ""]
        return self

    def table(self, rows: Iterable[dict], columns: list[str], formats: dict[str, Cell] | None = None) -> Report:
        """A Markdown table of `columns` of `rows`; `formats` maps a column to its own cell writer."""
        formats = formats or {}
        self.lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            self.lines.append("| " + " | ".join(formats.get(c, cell)(row.get(c)) for c in columns) + " |")
        self.lines.append("")
        return self

    def markdown(self) -> str:
        """The page; raises harness.other_work.BusyMachine where other work took too much of the machine
        for its figures to hold."""
        return "\n".join([*self.head, "", *self.other_work.judge(), "", *self.lines]).rstrip() + "\n"

    def write(self, path: Path) -> Path:
        """Writes the page (through a temporary file: never half-written) and prints it; raises
        BusyMachine, and writes nothing, where its figures would not hold."""
        page = self.markdown()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(page)
        partial.replace(path)
        print(page)
        return path


def write_csv(path: Path, rows: Iterable[dict], columns: list[str]) -> Path:
    """The rows behind a report, one per line, `columns` in order (other keys left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)
    return path
