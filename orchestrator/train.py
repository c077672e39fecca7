"""The trainer: one RunSpec in, one tracked, checkpointed, resumable training run out, on one worker or many.

    result = orchestrator.train.run(spec)

One loop for one process and for many: with ``resources.workers > 1``, `run` starts the workers under Ray
Train (`orchestrator.distributed.launch`) and each of them runs the same loop with a `Parallel` that says which
rows of every batch are its own and shards the model (FSDP2, DDP or HSDP). Rank 0 alone talks to MLflow; the
loss, step time and the final metrics it logs are global (the mean loss over ranks, the slowest rank's peak
memory), under the same names as a one-process run, plus each rank's peak memory.

Loop per optimizer step: the step's batch (a pure function of (seed, step)), ``grad_accum`` micro-batches of
forward + backward, gradient clipping, AdamW, the loss-free expert-bias update, metrics to the tracker (buffered;
the tracker batches them). Every ``eval_every`` steps and at the end: validation loss on fixed windows plus the
model diagnostics (Amax per layer and composite, doubly-stochastic error, expert load). Every
``checkpoint_every`` steps and at the end: an atomic checkpoint of everything the next step depends on (weights
with the router biases and load counters, optimizer, RNG state, step, divergence state) in
`torch.distributed.checkpoint` format, loadable on any number of workers (`orchestrator.distributed.state`).
The schedule is a function of the step, and batches a function of (seed, step), so a resumed run repeats an
uninterrupted one bit for bit on CPU (on the same number of workers).

A non-finite loss, or one above ``divergence_factor`` × the best loss so far, ends the run as FAILED with
reason ``diverged`` (after logging the step that diverged). Telemetry: step time, tokens/s, achieved FLOP/s
(the variant's true architecture FLOPs), peak memory (RSS on CPU, max allocated on CUDA), wall time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kernels import resolve_backend
from models import MoETransformer, build_model, collect_diagnostics, count_parameters, flops_per_token
from models.cpu_runtime import configure_cpu_runtime
from models.errors import ConfigError
from orchestrator.checkpoint import run_lock
from orchestrator.data import BatchSampler, load_dataset
from orchestrator.distributed.parallel import Parallel, check_parallel
from orchestrator.distributed.state import load_train_state, save_train_state
from orchestrator.runspec import RESOURCE_FIELDS, RunSpec
from orchestrator.schedule import lr_multiplier
from orchestrator.tracking import RunTracker, find_run

__all__ = ["RunResult", "StepReport", "run", "run_on_worker"]

log = logging.getLogger(__name__)

# How long a checkpoint waits for buffered metrics to reach the store: long enough for a healthy store, short
# enough that an outage does not stall training (the points stay buffered and are sent when it is back).
CHECKPOINT_FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class StepReport:
    """What a progress display needs after each step."""

    step: int
    total_steps: int
    loss: float
    tokens_per_s: float
    val_loss: float | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended."""

    run_key: str
    status: str  # FINISHED | FAILED | PRUNED
    steps: int
    final_val_loss: float | None = None
    failure_reason: str | None = None
    run_id: str | None = None
    skipped: bool = False  # already FINISHED in the tracking store: nothing was trained
    resumed_from: int | None = None
    losses: list[float] = field(default_factory=list)  # training losses of the steps run in this call


class DivergedError(Exception):
    """The loss became non-finite or spiked beyond the configured factor."""


def _device(spec: RunSpec) -> torch.device:
    wanted = spec.training.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device ('cuda') needs a GPU, and this process sees none")
    return torch.device(wanted)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _hardware(parallel: Parallel, threads: int, kernel_backend: str) -> str:
    """What the run's timings were measured on: overhead comparisons never mix different hardware.

    It names the mHC kernel backend that ran (on CPU ``cpp``, or ``torch`` where the C++ kernels could not be
    built): mHC's step-time overhead differs by 2× between the two, so their runs must not share a cell.
    """
    device = parallel.device
    workers = f" × {parallel.world_size} workers ({parallel.resources.sharding})" if parallel.distributed else ""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)} ({kernel_backend} kernels){workers}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu:{model} ({os.cpu_count()} cores, {threads} threads, {kernel_backend} kernels){workers}"


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(model: torch.nn.Module, inputs_BS: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy through the model's fused head + loss (`models.loss`).

    The (B, S, V) logits are never materialised: on the CPU proxies, where the 8192-token vocabulary dwarfs the
    width, the head and its loss are a third of the step, and the unfused `F.cross_entropy(model(x), y)` costs
    almost twice as much (P1, 16 × 256 tokens, 2 threads: 523 ms against 288 ms, forward + backward).
    """
    return model(inputs_BS, targets_BS)


@torch.no_grad()
def _evaluate(model: MoETransformer, batches: list, device: torch.device) -> tuple[float, dict, dict]:
    """Validation loss over the fixed windows, plus diagnostics on the first batch."""
    model.eval()
    total, count = 0.0, 0
    try:
        with _autocast(device):
            for inputs_BS, targets_BS in batches:
                loss = _loss(model, inputs_BS.to(device), targets_BS.to(device))
                total += loss.item() * targets_BS.numel()
                count += targets_BS.numel()
            diagnostics = collect_diagnostics(model, batches[0][0].to(device))
    finally:
        model.train()
    profile = {
        "layer_forward": diagnostics.amax.layer_forward,
        "layer_backward": diagnostics.amax.layer_backward,
        "composite_forward": diagnostics.amax.composite_forward,
        "composite_backward": diagnostics.amax.composite_backward,
        "ds_error": diagnostics.ds_error_per_layer,
        "expert_load": diagnostics.expert_load_per_layer,
    }
    return total / count, diagnostics.summary(), profile


def _coordinates(spec: RunSpec) -> dict[str, str]:
    """Tags that make every run findable by its grid coordinates."""
    res = spec.model.residual
    return {
        "run_key": spec.run_key,
        "size": spec.model.name,
        "variant": res.variant,
        "n": str(res.n),
        "sinkhorn_iters": str(res.sinkhorn_iters),
        "seed": str(spec.training.seed),
        **spec.tags,
    }


class _Muted:
    """The tracker of ranks other than 0: they train and checkpoint, rank 0 alone logs."""

    run_id = None

    def __enter__(self) -> _Muted:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_dict_artifact(self, obj: object, artifact_file: str) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def finish(self, status: str, failure_reason: str | None = None) -> None: ...

    def flush(self, timeout_s: float | None = None) -> bool:
        return True


def run(
    spec: RunSpec,
    *,
    parent_run_id: str | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
    max_failures: int = 0,
) -> RunResult:
    """Train ``spec`` to completion (or divergence), resuming from its newest checkpoint if one exists.

    ``on_eval(step, val_loss)`` is called after every evaluation; returning True stops the run there (a tuner's
    pruner): it ends KILLED with reason ``pruned`` and result status PRUNED.

    With ``resources.workers > 1`` the run goes to a Ray Train worker group (Ray is started locally if this
    process is not connected to a cluster); the callbacks are then pickled and called in the workers
    (``on_step`` on every rank, ``on_eval`` on rank 0), and ``max_failures`` is how often the group may be
    restarted from the newest checkpoint after a worker dies.

    Holds an exclusive lock on the run directory while training: a second process given the same run (a
    resubmitted sweep while an orphaned worker still trains) waits for the first, then finds it FINISHED.
    """
    if spec.resources.workers > 1:
        from orchestrator.distributed.launch import train_on_workers

        [result] = train_on_workers(
            [spec], parent_run_id=parent_run_id, on_step=on_step, on_eval=on_eval, max_failures=max_failures
        )
        return result
    if spec.resources.gpus and not torch.cuda.is_available():
        raise ConfigError(f"resources.gpus ({spec.resources.gpus}) asks for a GPU, and this process sees none")
    parallel = Parallel.single(spec.resources, _device(spec))
    with run_lock(spec.run_dir):
        return _run_locked(spec, parallel, parent_run_id, on_step, on_eval)


def run_on_worker(
    spec: RunSpec,
    parallel: Parallel,
    *,
    parent_run_id: str | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
) -> RunResult:
    """`run`'s body on one worker of a group (every rank calls it with its `Parallel`); rank 0 holds the lock."""
    check_parallel(spec)
    with run_lock(spec.run_dir) if parallel.is_main else contextlib.nullcontext():
        return _run_locked(spec, parallel, parent_run_id, on_step, on_eval)


class PrunedError(Exception):
    """The caller's ``on_eval`` asked to stop the run early."""


def _run_locked(
    spec: RunSpec,
    parallel: Parallel,
    parent_run_id: str | None,
    on_step: Callable[[StepReport], None] | None,
    on_eval: Callable[[int, float], bool] | None,
) -> RunResult:
    existing = parallel.broadcast(find_run(spec.tracking, spec.run_key) if parallel.is_main else None)
    if existing is not None and existing.status == "FINISHED":
        return RunResult(spec.run_key, "FINISHED", steps=0, run_id=existing.run_id, skipped=True)

    training = spec.training
    configure_cpu_runtime(training.threads)
    device = parallel.device
    dataset = load_dataset(spec.data)
    sampler = BatchSampler(dataset, seed=training.seed)
    val_batches = sampler.validation_batches(training.eval_windows, training.seq_len, training.batch_size)
    total_steps = spec.total_steps()
    flops_step = spec.flops_per_step()
    six_n_step = flops_per_token(spec.model, training.seq_len).six_n * training.tokens_per_step

    model = build_model(spec.model, device=device, seed=training.seed)  # the same weights on every rank
    kernel_backend = resolve_backend(spec.model.kernel_backend, device)
    forward_model = parallel.prepare(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=training.lr,
        betas=training.betas,
        eps=training.adam_eps,
        weight_decay=training.weight_decay,
    )
    start_step, best_loss = 0, math.inf
    checkpoint = load_train_state(parallel, spec.run_dir, model, optimizer)
    if checkpoint is not None:
        start_step, trainer_state = checkpoint
        best_loss = trainer_state["best_loss"]
        log.info("resuming %s from step %d", spec.run_key, start_step)
    step_fn = torch.compile(forward_model) if training.compile else forward_model

    params = count_parameters(spec.model)
    # MLflow params are immutable and define the result. What does not change the trained weights (resources,
    # threads, device, compile, checkpoint cadence, data cache: the fields the run key leaves out) is logged as
    # tags instead, so a run may resume with other ones, and the tags say what the latest attempt ran with.
    settings = {f"resources.{name}": str(value) for name, value in spec.resources.model_dump().items()}
    settings |= {
        f"{section}.{name}": str(getattr(getattr(spec, section), name))
        for section, names in RESOURCE_FIELDS.items()
        for name in sorted(names)
    }
    result_defining = spec.model_dump(
        mode="json", exclude={"tracking": True, "tags": True, "resources": True, **RESOURCE_FIELDS}
    )
    tracker = (
        RunTracker.open(
            spec.tracking,
            run_key=spec.run_key,
            run_name=spec.name or spec.run_key,
            tags={**_coordinates(spec), **settings},
            params=result_defining,
            parent_run_id=parent_run_id,
        )
        if parallel.is_main
        else _Muted()
    )
    losses: list[float] = []
    val_loss = None
    with tracker:
        if checkpoint is None:
            tracker.log_dict_artifact(spec.model_dump(mode="json"), "config/resolved.json")
            tracker.log_dict_artifact(dataset.metadata.as_dict(), "config/dataset.json")
            tracker.set_tags(
                {
                    "params_total": str(params.total),
                    "params_activated": str(params.activated),
                    "params_activated_non_embedding": str(params.activated_non_embedding),
                    "total_steps": str(total_steps),
                    "device": str(device),
                    "hardware": _hardware(parallel, training.threads, kernel_backend),
                    "kernel_backend": kernel_backend,
                    "unigram_entropy": f"{dataset.metadata.unigram_entropy_nats:.6f}",
                }
            )

        def evaluate(step: int) -> float:
            loss, summary, profile = _evaluate(model, val_batches, device)
            tracker.log_metrics({"eval/loss": loss, **{f"eval/{k}": v for k, v in summary.items()}}, step)
            tracker.log_dict_artifact(profile, f"diagnostics/step_{step:08d}.json")
            return loss

        started = time.perf_counter()
        rows = parallel.rows(training.batch_size)
        micro = (rows.stop - rows.start) // training.grad_accum
        try:
            for step in range(start_step, total_steps):
                step_started = time.perf_counter()
                multiplier = lr_multiplier(step, total_steps, training)
                for group in optimizer.param_groups:
                    group["lr"] = training.lr * multiplier
                inputs_BS, targets_BS = sampler.train_batch(step, training.batch_size, training.seq_len)
                inputs_BS, targets_BS = inputs_BS[rows].to(device), targets_BS[rows].to(device)
                step_loss = 0.0
                for index in range(training.grad_accum):
                    chunk = slice(index * micro, (index + 1) * micro)
                    with _autocast(device), parallel.gradient_sync(forward_model, index == training.grad_accum - 1):
                        loss = _loss(step_fn, inputs_BS[chunk], targets_BS[chunk])
                        balance = model.balance_loss()
                        objective = loss + balance if balance is not None else loss
                        (objective / training.grad_accum).backward()
                    step_loss += loss.item() / training.grad_accum
                step_loss = parallel.mean(step_loss)  # equal slices: the mean over ranks is the batch's loss
                if not math.isfinite(step_loss) or step_loss > training.divergence_factor * best_loss:
                    tracker.log_metrics({"train/loss": step_loss}, step + 1)
                    tracker.set_tags({"diverged_step": str(step + 1)})
                    raise DivergedError(f"loss {step_loss:.4g} at step {step + 1} (best {best_loss:.4g})")
                best_loss = min(best_loss, step_loss)
                grad_norm = parallel.clip_grad_norm(list(model.parameters()), training.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                parallel.sync_expert_load(model)
                model.update_expert_biases()
                done = step + 1
                elapsed = time.perf_counter() - step_started
                tokens = done * training.tokens_per_step
                losses.append(step_loss)
                tracker.log_metrics(
                    {
                        "train/loss": step_loss,
                        "train/lr": training.lr * multiplier,
                        "train/grad_norm": grad_norm,
                        "train/tokens": tokens,
                        "train/epochs": sampler.epochs(tokens),
                        "train/flops": done * flops_step,
                        "train/flops_6n": done * six_n_step,
                        "perf/step_time_s": elapsed,
                        "perf/tokens_per_s": training.tokens_per_step / elapsed,
                        "perf/flops_per_s": flops_step / elapsed,
                    },
                    done,
                )
                if done % training.eval_every == 0 or done == total_steps:
                    val_loss = evaluate(done)
                    if (
                        on_eval is not None
                        and done < total_steps
                        and parallel.broadcast(on_eval(done, val_loss) if parallel.is_main else None)
                    ):
                        raise PrunedError(f"stopped by the caller at step {done} (validation loss {val_loss:.4f})")
                if done % training.checkpoint_every == 0 or done == total_steps:
                    # Metrics first, then the checkpoint: whatever step a resume starts from, every step before
                    # it is already in the store, so a kill at any moment leaves no gap in the histories.
                    if not tracker.flush(timeout_s=CHECKPOINT_FLUSH_TIMEOUT_S):
                        log.warning("tracking store unreachable at step %d: metrics stay buffered", done)
                    save_train_state(parallel, spec.run_dir, done, model, optimizer, {"best_loss": best_loss})
                if on_step is not None:
                    on_step(StepReport(done, total_steps, step_loss, training.tokens_per_step / elapsed, val_loss))
        except DivergedError as error:
            log.warning("run %s diverged: %s", spec.run_key, error)
            tracker.finish("FAILED", failure_reason="diverged")
            return RunResult(
                spec.run_key,
                "FAILED",
                steps=step + 1,
                failure_reason="diverged",
                run_id=tracker.run_id,
                resumed_from=checkpoint and start_step,
                losses=losses,
            )
        except (torch.cuda.OutOfMemoryError, MemoryError) as error:
            # An infrastructure failure worth a retry (a co-located run, a smaller device): recorded as `oom`
            # rather than the tracker's generic `crashed`, so the ledger says why; the error still propagates.
            log.error("run %s ran out of memory at step %d: %s", spec.run_key, step + 1, error)
            tracker.set_tags({"failure_detail": f"{type(error).__name__}: {error}"[:8000]})
            tracker.finish("FAILED", failure_reason="oom")
            raise
        except PrunedError as error:
            log.info("run %s %s", spec.run_key, error)
            tracker.finish("KILLED", failure_reason="pruned")
            return RunResult(
                spec.run_key,
                "PRUNED",
                steps=step + 1,
                final_val_loss=val_loss,
                failure_reason="pruned",
                run_id=tracker.run_id,
                resumed_from=checkpoint and start_step,
                losses=losses,
            )
        if val_loss is None:  # resumed at the end: the final evaluation is still owed
            val_loss = evaluate(total_steps)
        peak_mb = parallel.gather(_peak_memory_mb(device))
        if parallel.distributed:
            tracker.log_metrics(
                {f"final/peak_memory_mb_rank{rank}": mb for rank, mb in enumerate(peak_mb)}, total_steps
            )
        tracker.log_metrics(
            {
                "final/val_loss": val_loss,
                "final/wall_time_s": time.perf_counter() - started,
                "final/peak_memory_mb": max(peak_mb),
                "final/flops": total_steps * flops_step,
                "final/tokens": total_steps * training.tokens_per_step,
            },
            total_steps,
        )
        tracker.finish("FINISHED")
    return RunResult(
        spec.run_key,
        "FINISHED",
        steps=total_steps,
        final_val_loss=val_loss,
        run_id=tracker.run_id,
        resumed_from=checkpoint and start_step,
        losses=losses,
    )
