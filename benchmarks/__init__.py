"""Benchmarks, and the command line they share. The handler's modules (handler/cifar10_images.py)
are top-level modules inside the .mar; the benchmarks import them the same way, so handler/ goes on
the path when this package loads."""

import argparse
import os
import sys
from pathlib import Path

from harness.other_work import add_noisy_option
from repo import REPO, import_handler_modules

import_handler_modules()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module's docstring as written, and each option's default."""


def command_parser(
    module: str,
    doc: str,
    data_required: bool = True,
    out: Path = REPO / "reports",
    run=False,
    load=False,
    noisy=True,
) -> argparse.ArgumentParser:
    """`python -m {module}`'s options: --data, the CIFAR-10 copy ($CIFAR10_DATA by default), and --out;
    with `run`, --run; with `load`, the options of a wrk load at each concurrency; with `noisy`
    (a report the machine's load is judged for: harness/other_work.py), --noisy."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc, formatter_class=HelpFormatter)
    data = os.environ.get("CIFAR10_DATA")
    parser.add_argument("--data", default=data, required=data_required and not data, help="CIFAR-10 copy")
    parser.add_argument("--out", type=Path, default=out, help="the reports' folder")
    if noisy:
        add_noisy_option(parser)
    if run:
        parser.add_argument("--run", type=Path, default=REPO / "models" / "latest", help="the trained run")
    if load:
        parser.add_argument("--images", type=int, default=500, help="benchmark images sent in turn by wrk")
        parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="wrk connections")
        parser.add_argument("--seconds", type=int, default=15, help="per concurrency level")
        parser.add_argument("--warmup", type=int, default=5, help="seconds of load before the first level")
    return parser


def command_line(module: str, argv: list[str] | None) -> str:
    """The command as it was typed, for its report."""
    return " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)])
