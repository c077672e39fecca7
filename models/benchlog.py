"""Benchmark records: which commit measured them, when, and one CSV appender for every `ladder bench …`.

Every benchmark appends long-format rows to ``benchmarks/results/*.csv`` with its own context columns; the
commit, the time and the file handling are the same everywhere, so they live here (no torch import).
"""

from __future__ import annotations

import csv
import datetime as dt
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["append_rows", "git_sha", "timestamp"]


def git_sha() -> str:
    """The short commit of this checkout ("unknown" outside git): a figure is only as good as its code."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timestamp() -> str:
    """Now, UTC, to the second (ISO 8601)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def append_rows(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Append ``records`` to the CSV at ``path``, writing the header (the first record's keys) when it is new."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        if new_file:
            writer.writeheader()
        writer.writerows(records)
