"""Multi-worker training: data-parallel sharding (FSDP2, DDP, HSDP), sharded checkpoints, Ray Train launch.

`Parallel` is the trainer's view of its worker group; `save_train_state` / `load_train_state` write and read
checkpoints that load on any number of workers; `train_on_workers` runs RunSpecs on a Ray Train worker group.

Expert parallelism (routed experts spread over ranks, tokens exchanged by all-to-all) is not built: FSDP alone
is the current path. Why, and what EP would add, is in ``benchmarks/DISTRIBUTED.md``.
"""

from orchestrator.distributed.launch import WorkerGroupFailedError, check_cluster_fits, train_on_workers
from orchestrator.distributed.parallel import Parallel, check_parallel
from orchestrator.distributed.state import load_train_state, read_model_state, save_train_state

__all__ = [
    "Parallel",
    "WorkerGroupFailedError",
    "check_cluster_fits",
    "check_parallel",
    "load_train_state",
    "read_model_state",
    "save_train_state",
    "train_on_workers",
]
