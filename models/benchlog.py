"""Benchmark records: which commit measured them, when, and one CSV appender for every `ladder bench …`.

Every benchmark appends long-format rows to ``benchmarks/results/*.csv`` with its own context columns; the
commit, the time and the file handling are the same everywhere, so they live here (no torch import).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["append_rows", "git_sha", "machine", "record_context", "timestamp"]


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


def machine() -> str:
    """Host, CPU model and core count: a benchmark's figures only compare on the same machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} {model} ({os.cpu_count()} cores)"


def record_context() -> dict[str, str]:
    """The columns every benchmark row starts with: machine, commit, time."""
    return {"machine": machine(), "git_sha": git_sha(), "timestamp": timestamp()}


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
