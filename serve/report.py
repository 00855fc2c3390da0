"""Markdown reports (with a CSV of their rows) for runs against the service: the benchmarks, the
drills, the soak and the fleet drill all write theirs through `Report`, so every report names the
command that made it and the day it ran, and its tables look alike.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

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
    """One Markdown page: a title, the command and when it ran, then text and tables in order."""

    def __init__(self, title: str, command: str):
        self.lines = [
            f"# {title}",
            "",
            f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores.",
            "",
        ]

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
        return "\n".join(self.lines).rstrip() + "\n"

    def write(self, path: Path) -> Path:
        """Writes the page (through a temporary file: never half-written) and prints it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(self.markdown())
        partial.replace(path)
        print(self.markdown())
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
