"""Benchmarks, and the command line they share. The handler's modules (handler/cifar10_images.py)
are top-level modules inside the .mar; the benchmarks import them the same way, so handler/ goes on
the path when this package loads."""

import argparse
import os
import sys
from pathlib import Path

HANDLER = str(Path(__file__).resolve().parent.parent / "handler")
if HANDLER not in sys.path:
    sys.path.insert(0, HANDLER)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module's docstring as written, and each option's default."""


def command_parser(module: str, doc: str, data_required: bool = True) -> argparse.ArgumentParser:
    """`python -m {module}`'s options, starting with --data: the CIFAR-10 copy ($CIFAR10_DATA by default)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc, formatter_class=HelpFormatter)
    data = os.environ.get("CIFAR10_DATA")
    parser.add_argument("--data", default=data, required=data_required and not data, help="CIFAR-10 copy")
    return parser


def command_line(module: str, argv: list[str] | None) -> str:
    """The command as it was typed, for its report."""
    return " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)])
