"""The trainer's checkpoints: model, optimizer and RNG state in `torch.distributed.checkpoint` (DCP) format.

One format for every worker count. `get_state_dict` names every tensor by its parameter path (no DDP
``module.`` prefix, no flattened FSDP state, optimizer state keyed by parameter name rather than by index),
and DCP stores each tensor with its global shape and each rank's shard: so a checkpoint written by 2 FSDP
workers loads into 1 process, 4 HSDP workers or a DDP group, and one written by one process loads sharded.
Without a process group (one process) DCP reads and writes the same files in place (``no_dist``).

Each checkpoint is a step directory of `orchestrator.checkpoint` (staged, hashed into ``COMPLETE`` by rank 0,
renamed into place): every rank writes its shard into the shared staging directory, and rank 0 seals it after
a barrier. Loading takes the newest directory that verifies, as chosen by rank 0 and broadcast, so every rank
reads the same one. Python values (step, best loss) go to ``trainer.json`` beside the tensors; nothing is
unpickled on load. The run directory must be on storage every worker sees (one machine, or a shared
filesystem), as it already must be for a single-worker run that resumes on another node.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from orchestrator.checkpoint import commit_checkpoint, latest_complete, staging_dir
from orchestrator.distributed.parallel import Parallel

__all__ = ["TRAINER_FILE", "load_train_state", "read_model_state", "save_train_state"]

TRAINER_FILE = "trainer.json"


@contextlib.contextmanager
def _single_process_quietly() -> Iterator[None]:
    """DCP warns on every call without a process group that it assumes one process: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_train_state(
    parallel: Parallel,
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer: dict[str, Any],
    keep: int = 2,
) -> None:
    """Checkpoint ``step`` (a collective: every rank calls it); ``trainer`` holds JSON values from rank 0."""
    staging = parallel.broadcast(str(staging_dir(run_dir, step)) if parallel.is_main else None)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, "rng": torch.get_rng_state()}
    with _single_process_quietly():
        dcp.save(state, checkpoint_id=staging, no_dist=not parallel.distributed)
    if parallel.is_main:
        (Path(staging) / TRAINER_FILE).write_text(json.dumps(trainer))
        commit_checkpoint(run_dir, step, Path(staging), keep)
    parallel.barrier()  # no rank runs ahead (to a failure, or the next save) before the commit


def load_train_state(
    parallel: Parallel, run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]] | None:
    """Restore the newest complete checkpoint into ``model`` and ``optimizer`` (a collective); return
    (step, trainer values), or None when the run has no checkpoint."""
    found = parallel.broadcast(latest_complete(run_dir) if parallel.is_main else None)
    if found is None:
        return None
    step, directory = found
    # The templates say what to read and where it goes: this process's shards, in its own layout.
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, "rng": torch.get_rng_state()}
    with _single_process_quietly():
        dcp.load(state, checkpoint_id=directory, no_dist=not parallel.distributed)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    torch.set_rng_state(state["rng"])
    return step, json.loads((Path(directory) / TRAINER_FILE).read_text())


def read_model_state(directory: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model weights and buffers of a checkpoint directory, in one process.

    ``model`` (for example ``build_model(config, "meta")`` materialised on CPU) supplies the names and shapes.
    """
    state = {"model": model.state_dict()}
    with _single_process_quietly():
        dcp.load(state, checkpoint_id=directory, no_dist=True)
    return state["model"]
