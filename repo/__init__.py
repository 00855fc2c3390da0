"""The checkout's root folder: where the commands find the handler, the configs and the runs."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
