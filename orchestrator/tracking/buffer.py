"""An ordered queue of tracking operations: in memory up to a cap, then in a JSONL spill file; never dropped.

One producer side (`put`, any thread) and one consumer (the tracker's flusher thread): the consumer `peek`s a
batch from the front, sends it, and `ack`s how many of its operations the store took; on failure it acks
nothing and the batch stays at the front. The logical order is ``spill file (from its cursor) + memory``:

- When memory holds more than ``max_in_memory`` operations, all of memory is appended to the spill file
  (fsynced) and memory is emptied, so memory stays bounded whatever the outage and order is kept.
- The consumer reads from the spill file while it has unacked lines, and from memory only when it has none. If
  memory moves to the file while a memory batch is in flight, that batch is now the file's first lines, so its
  ack advances the file cursor instead (tracked by a generation counter).
- When every line of the file is acked, the file is deleted.
- `dump` (a finish that timed out, process exit) rewrites the file to hold exactly the unacked operations and
  closes the queue. A file left by a dead process is adopted by the next queue on the same path (a torn last
  line is dropped with a warning), so its operations are sent first when the run is reopened.

Operations are short JSON-able tuples whose first item is the kind; the tracker defines the kinds. Stores that
deduplicate identical metric points (MLflow's SQL store does, on key, step, timestamp and value) make a resend
after an unknown outcome harmless.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

__all__ = ["Batch", "OpQueue"]

log = logging.getLogger(__name__)

Op = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Operations from the front of the queue, handed to the consumer; ack with `OpQueue.ack`."""

    ops: list[Op]
    source: str  # "memory" | "spill"
    generation: int
    line_ends: tuple[int, ...] = ()  # spill batches: file offset after each line


def _encode(op: Op) -> str:
    return json.dumps(op, separators=(",", ":")) + "\n"


class OpQueue:
    """Ordered, bounded-memory, spill-to-disk operation queue (see the module doc)."""

    def __init__(self, spill_path: Path, max_in_memory: int) -> None:
        self._lock = threading.Lock()
        self._memory: deque[Op] = deque()
        self._max_in_memory = max_in_memory
        self.spill_path = Path(spill_path)
        self._spill_pending = 0  # unacked lines in the spill file
        self._spill_cursor = 0  # byte offset of the first unacked line
        self._generation = 0  # bumped whenever memory moves to the file
        self._closed = False
        self.spill_moves = 0  # how many times memory overflowed to the file
        if self.spill_path.exists():
            self._adopt()

    # ---- producer side
    def put(self, ops: Iterable[Op]) -> bool:
        """Append ``ops``; returns True when this call moved memory to the spill file."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"operation queue for {self.spill_path} is closed")
            self._memory.extend(ops)
            if len(self._memory) <= self._max_in_memory:
                return False
            self._append_lines(_encode(op) for op in self._memory)
            self._spill_pending += len(self._memory)
            self._memory.clear()
            self._generation += 1
            self.spill_moves += 1
            return True

    # ---- consumer side
    def peek(self, max_ops: int) -> Batch | None:
        """Up to ``max_ops`` operations from the front, without removing them; None when empty or closed."""
        with self._lock:
            if self._closed:
                return None
            if self._spill_pending:
                ops, ends = self._read_lines(self._spill_cursor, min(max_ops, self._spill_pending))
                return Batch(ops, "spill", self._generation, tuple(ends))
            if self._memory:
                return Batch(list(islice(self._memory, max_ops)), "memory", self._generation)
            return None

    def ack(self, batch: Batch, count: int) -> bool:
        """The store took the first ``count`` operations of ``batch``: drop them. False once closed (kept)."""
        assert 0 < count <= len(batch.ops), (count, len(batch.ops))
        with self._lock:
            if self._closed:
                return False
            if batch.source == "memory" and batch.generation == self._generation:
                for _ in range(count):
                    self._memory.popleft()
                return True
            if batch.source == "spill":
                self._spill_cursor = batch.line_ends[count - 1]
            else:  # a memory batch that moved to the file while in flight: it is the file's front
                _, ends = self._read_lines(self._spill_cursor, count)
                self._spill_cursor = ends[-1]
            self._spill_pending -= count
            if self._spill_pending == 0:
                self.spill_path.unlink(missing_ok=True)
                self._spill_cursor = 0
            return True

    # ---- state
    @property
    def pending(self) -> int:
        """Operations not yet acked (memory and spill file)."""
        with self._lock:
            return len(self._memory) + self._spill_pending

    @property
    def spilled(self) -> int:
        """Unacked operations currently in the spill file."""
        with self._lock:
            return self._spill_pending

    @property
    def closed(self) -> bool:
        return self._closed

    def dump(self) -> tuple[Path | None, list[Op]]:
        """Close the queue; leave exactly the unacked operations in the spill file (None if none)."""
        with self._lock:
            self._closed = True
            remaining: list[Op] = []
            if self._spill_pending:
                remaining, _ = self._read_lines(self._spill_cursor, self._spill_pending)
            remaining.extend(self._memory)
            self._memory.clear()
            self._spill_pending = len(remaining)
            self._spill_cursor = 0
            if not remaining:
                self.spill_path.unlink(missing_ok=True)
                return None, []
            self._rewrite(remaining)
            return self.spill_path, remaining

    # ---- file helpers (called with the lock held)
    def _append_lines(self, lines: Iterable[str]) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spill_path, "a", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _read_lines(self, offset: int, count: int) -> tuple[list[Op], list[int]]:
        ops, ends = [], []
        with open(self.spill_path, "rb") as handle:
            handle.seek(offset)
            for _ in range(count):
                line = handle.readline()
                if not line.endswith(b"\n"):
                    raise RuntimeError(f"spill file {self.spill_path} ends early at byte {handle.tell()}")
                ops.append(tuple(json.loads(line)))
                ends.append(handle.tell())
        return ops, ends

    def _rewrite(self, ops: Sequence[Op]) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.spill_path.with_name(self.spill_path.name + ".tmp")
        with open(temp, "w", encoding="utf-8") as handle:
            handle.writelines(_encode(op) for op in ops)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.spill_path)

    def _adopt(self) -> None:
        """Take over a spill file left by an earlier process: its operations go first."""
        ops: list[Op] = []
        bad = 0
        with open(self.spill_path, "rb") as handle:
            for line in handle:
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn last line")
                    ops.append(tuple(json.loads(line)))
                except ValueError:
                    bad += 1
        if bad:
            log.warning(
                "spill file %s: dropped %d unreadable line(s) (a write cut short)", self.spill_path, bad
            )
            self._rewrite(ops)
        if not ops:
            self.spill_path.unlink(missing_ok=True)
            return
        self._spill_pending = len(ops)
        log.info(
            "spill file %s: %d operation(s) from an earlier attempt will be sent first",
            self.spill_path,
            len(ops),
        )
