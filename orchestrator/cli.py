"""The `ladder` command line: a thin typer layer over the library; the only place that prints.

Library imports happen inside the commands: `models` imports torch (seconds), MLflow and Ray take seconds
more, and ``ladder --help`` or ``ladder cancel`` need none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from models import LadderError, ModelConfig

app = typer.Typer(help="mhc-ladder: scaling-law sweeps of mHC residual variants on MoE language models.")
model_app = typer.Typer(help="Inspect and smoke-test model presets.")
bench_app = typer.Typer(help="Benchmarks that print ratio tables (append rows to benchmarks/results/*.csv).")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
console = Console()
SUBMIT_CANCELLED_EXIT = 3  # `ladder submit` stopped by `ladder cancel` or Ctrl-C

PresetArg = Annotated[str, typer.Argument(help="paper-3b | paper-9b | paper-27b | p1 | p4 | p16 | p64 | nano")]
ResidualOpt = Annotated[str, typer.Option("--residual", help="residual | hc | mhc | mhc-lite")]
StreamsOpt = Annotated[int | None, typer.Option("--n", help="Expansion rate (default: 4, or 1 for residual).")]


def _configured(preset: str, residual: str, n: int | None) -> ModelConfig:
    from models import get_preset

    streams = n if n is not None else (1 if residual == "residual" else 4)
    return get_preset(preset).with_residual(variant=residual, n=streams)


def _fail(error: LadderError) -> None:
    console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)  # paths stay on one line
    raise typer.Exit(code=2)


def _human(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


@model_app.command("info")
def model_info(
    preset: PresetArg,
    residual: ResidualOpt = "residual",
    n: StreamsOpt = None,
    seq_len: Annotated[int, typer.Option(help="Sequence length for the attention FLOPs.")] = 4096,
) -> None:
    """Parameter counts (total / activated / vocab) and training FLOPs per token of a preset."""
    from models import ConfigError, count_parameters, flops_per_token

    try:
        config = _configured(preset, residual, n)
    except ConfigError as error:
        _fail(error)
    params = count_parameters(config)
    flops = flops_per_token(config, seq_len)
    table = Table(title=f"{config.name} · {config.residual.variant} (n={config.residual.n}) · seq_len {seq_len}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("exact", justify="right")
    for label, value in [
        ("total parameters", params.total),
        ("activated parameters", params.activated),
        ("vocab parameters (embedding + head)", params.vocab),
        ("activated non-embedding (N)", params.activated_non_embedding),
        ("residual-variant parameters", params.residual),
        ("FLOPs/token: 6N", flops.six_n),
        ("FLOPs/token: DeepSeek M (with attention)", flops.deepseek_m),
        ("FLOPs/token: output head", flops.lm_head),
        ("FLOPs/token: residual variant extra", flops.residual_extra),
        ("FLOPs/token: total (architecture count)", flops.total),
    ]:
        table.add_row(label, _human(value), f"{value:,.0f}")
    console.print(table)


@model_app.command("smoke")
def model_smoke(
    preset: PresetArg = "p1",
    residual: ResidualOpt = "mhc",
    n: StreamsOpt = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 40,
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 2,
) -> None:
    """Train a few CPU steps on synthetic progressions and show the loss falling."""
    from models import ConfigError
    from models.cpu_runtime import configure_cpu_runtime
    from orchestrator.smoke import run_smoke

    configure_cpu_runtime(threads)
    try:
        config = _configured(preset, residual, n)
    except ConfigError as error:
        _fail(error)
    with console.status(f"training {config.name} ({residual}, n={config.residual.n}) for {steps} steps"):
        result = run_smoke(config, steps=steps)
    first, last = result.losses[0], result.losses[-1]
    verdict = "[green]learning[/green]" if result.learned else "[red]not learning[/red]"
    console.print(
        f"loss {first:.3f} → {last:.3f} over {steps} steps (uniform guess {result.uniform_loss:.3f}, "
        f"alphabet only {result.alphabet_loss:.3f}): {verdict}"
    )
    if not result.learned:
        raise typer.Exit(code=1)


@bench_app.command("step")
def bench_step(
    preset: Annotated[list[str] | None, typer.Option("--preset", help="Repeatable; default p1 and p4.")] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", help="Repeatable; default all four.")] = None,
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 256,
    repeats: Annotated[int, typer.Option(help="Timed steps per variant (after 2 warm-up steps).")] = 10,
    csv_path: Annotated[Path, typer.Option("--csv", help="Where to append rows.")] = Path(
        "benchmarks/results/step.csv"
    ),
) -> None:
    """Forward+backward step time and tokens/s per residual variant, with the ratio to `residual`."""
    from models import ConfigError
    from models.benchmark import VARIANTS, append_csv, run_step_benchmark

    presets = preset or ["p1", "p4"]
    variants = variant or list(VARIANTS)
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        _fail(ConfigError(f"--variant ({', '.join(unknown)}) must be among {', '.join(VARIANTS)}"))
    try:
        with console.status("timing steps"):
            rows = run_step_benchmark(
                presets, variants, threads=threads, batch_size=batch_size, seq_len=seq_len, repeats=repeats
            )
    except ConfigError as error:
        _fail(error)
    table = Table(title=f"model step (forward + backward), CPU, {threads} threads, {batch_size}×{seq_len} tokens")
    for column in ("preset", "variant", "n", "median ms", "tokens/s", "× residual", "overhead"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.preset,
            row.variant,
            str(row.n),
            f"{row.median_ms:.1f}",
            f"{row.tokens_per_s:,.0f}",
            f"{row.ratio_to_residual:.3f}",
            f"{100 * (row.ratio_to_residual - 1):+.1f}%",
        )
    console.print(table)
    append_csv(rows, csv_path)
    console.print(f"rows appended to {csv_path}")


@bench_app.command("train")
def bench_train(
    preset: Annotated[str, typer.Option(help="Model preset.")] = "p1",
    steps: Annotated[int, typer.Option(help="Steps per variant.")] = 30,
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 2,
    cache_dir: Annotated[str, typer.Option(help="Data cache (the corpus builds there once).")] = "./.ladder-cache",
    csv_path: Annotated[Path, typer.Option("--csv", help="Append long-format rows here.")] = Path(
        "benchmarks/results/train.csv"
    ),
) -> None:
    """Full trainer step vs the model-only step, and data + tracking on their own, per variant (target ≤ 5 %)."""
    from orchestrator.bench_train import append_csv, run_train_step_benchmark
    from orchestrator.data import DataConfig

    variants = [{"variant": "residual", "n": 1}] + [{"variant": v, "n": 4} for v in ("hc", "mhc", "mhc-lite")]
    with console.status("timing training steps"):
        rows = run_train_step_benchmark(
            preset, variants, data=DataConfig(vocab_size=8192, cache_dir=cache_dir), steps=steps, threads=threads
        )
    table = Table(title=f"{preset}: full training step vs model-only step, CPU, {threads} thread(s)")
    columns = ("variant", "n", "model-only ms", "full ms", "full tokens/s", "full / model", "data + tracking ms",
               "data + tracking share")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row.variant, str(row.n), f"{row.model_step_ms:.1f}", f"{row.full_step_ms:.1f}",
                      f"{row.full_tokens_per_s:,.0f}", f"{100 * row.full_overhead:+.1f}%",
                      f"{row.data_tracking_ms:.2f}", f"{100 * row.data_tracking_share:.2f}%")
    console.print(table)
    append_csv(rows, csv_path)
    console.print(f"rows appended to {csv_path}")


@bench_app.command("distributed")
def bench_distributed(
    preset: Annotated[str, typer.Option(help="Model preset.")] = "p1",
    residual: ResidualOpt = "mhc",
    n: StreamsOpt = None,
    workers: Annotated[int, typer.Option(help="Data-parallel workers (1 CPU, 1 thread each).")] = 2,
    steps: Annotated[int, typer.Option(help="Steps per configuration (the first 2 are warm-up).")] = 12,
    batch_size: Annotated[int, typer.Option(help="Global batch (sequences per step), the same everywhere.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 128,
    cache_dir: Annotated[str, typer.Option(help="Data cache (the corpus builds there once).")] = "./.ladder-cache",
    csv_path: Annotated[Path, typer.Option("--csv", help="Append long-format rows here.")] = Path(
        "benchmarks/results/distributed.csv"
    ),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the configurations and exit.")] = False,
) -> None:
    """Step time of N data-parallel workers (FSDP, DDP; gloo on CPU) vs one process, same global batch."""
    import os
    import tempfile

    from orchestrator.bench_distributed import append_csv, benchmark_specs, run_distributed_benchmark
    from orchestrator.data import DataConfig

    stream = {"variant": residual, "n": n if n is not None else (1 if residual == "residual" else 4)}
    data = DataConfig(vocab_size=8192, cache_dir=cache_dir)
    if dry_run:
        with tempfile.TemporaryDirectory() as scratch:
            specs = benchmark_specs(preset, stream, data=data, root=Path(scratch), workers=workers, steps=steps,
                                    batch_size=batch_size, seq_len=seq_len)
        table = Table(title=f"would time {preset} ({residual}, n={stream['n']}), {steps} steps each")
        for column in ("config", "workers", "threads/process", "global batch", "tokens/step"):
            table.add_column(column, justify="right")
        for label, spec in specs.items():
            table.add_row(label, str(spec.resources.workers), str(spec.training.threads), str(batch_size),
                          f"{spec.training.tokens_per_step:,}")
        console.print(table)
        return
    with console.status(f"timing {preset}: one process, then {workers} workers on Ray Train"):
        rows = run_distributed_benchmark(preset, stream, data=data, workers=workers, steps=steps,
                                         batch_size=batch_size, seq_len=seq_len)
    load = os.getloadavg()[0]
    table = Table(title=f"{preset} ({residual}, n={stream['n']}): step time, batch {batch_size}×{seq_len}, "
                        f"CPU gloo loopback, load {load:.1f} on {os.cpu_count()} cores")
    for column in ("config", "ms/step", "tokens/s", "peak MB", "vs 1 proc 1 thread", f"vs 1 proc {workers} threads"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row.config, f"{row.step_ms:.1f}", f"{row.tokens_per_s:,.0f}", f"{row.peak_memory_mb:,.0f}",
                      f"{row.ratio_same_threads:.2f}×", f"{row.ratio_same_cores:.2f}×")
    console.print(table)
    append_csv(rows, csv_path, preset=preset, residual=stream)
    console.print(f"rows appended to {csv_path}")


@bench_app.command("orchestrator")
def bench_orchestrator(
    sweep_file: Annotated[
        Path | None, typer.Argument(help="Sweep YAML; default sweeps/quickstart.yaml (24 runs, ~10 min on 2 cores).")
    ] = None,
    scale: Annotated[
        float, typer.Option(help="Multiply every budget (quickstart at 0.25: a few minutes on 2 cores).")
    ] = 1.0,
    workdir: Annotated[
        Path | None, typer.Option(help="Fresh folder for the store and checkpoints (default: a temp folder).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address; default: an embedded local Ray.")] = None,
    data_cache: Annotated[
        Path | None, typer.Option(help="Data cache to use instead of the sweep's (reuse a built corpus).")
    ] = None,
    csv_path: Annotated[Path, typer.Option("--csv", help="Where to append rows.")] = Path(
        "benchmarks/results/orchestrator.csv"
    ),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs it would train and exit.")] = False,
) -> None:
    """Scheduler overhead around training: submit → first step, per-run overhead, CPU utilisation, resubmission."""
    import shutil
    import tempfile

    from models import LadderError
    from models.benchlog import machine
    from orchestrator.bench_orchestrator import QUICKSTART, prepare_sweep, run_benchmark
    from orchestrator.bench_orchestrator import append_csv as append_orchestrator_csv

    source = sweep_file or QUICKSTART
    _load_sweep_or_fail(source)  # errors point at the user's file, not the benchmark's copy
    scratch = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="ladder-bench-")) if scratch else workdir
    if not scratch and any(folder.iterdir() if folder.exists() else ()):
        _fail(LadderError(f"--workdir {folder} must be empty or absent: the benchmark trains from scratch"))
    try:
        sweep_path = prepare_sweep(source, folder, scale, data_cache)
        sweep, points = _load_sweep_or_fail(sweep_path)
        steps = sum(p.spec.total_steps() for p in points)
        console.print(f"{sweep.name} ({source}, budgets × {scale:g}): {len(points)} runs, {steps:,} steps in all; "
                      f"store and checkpoints in {folder}")
        if dry_run:
            return
        try:
            with console.status(f"training {len(points)} runs"):
                result = run_benchmark(sweep_path, address=address)
        except (LadderError, RuntimeError) as error:
            _fail(error if isinstance(error, LadderError) else LadderError(str(error)))
    finally:
        if scratch:
            shutil.rmtree(folder, ignore_errors=True)
    table = Table(title=f"orchestrator: {result.sweep}, {result.num_runs} runs, {result.cores:g} CPUs · {machine()}")
    for column in ("metric", "value", "target", "met"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, value, unit, target in result.rows():
        shown = "" if value is None else (f"{100 * value:.1f} %" if unit == "fraction" else f"{value:.2f} {unit}")
        limit = "" if target is None else (
            f"{'≥' if target.at_least else '≤'} {100 * target.limit:g} %" if unit == "fraction" else f"{target} {unit}"
        )
        met = target.met(value) if target is not None else None
        table.add_row(metric, shown, limit, {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[met])
    console.print(table)
    append_orchestrator_csv(result, csv_path)
    console.print(f"rows appended to {csv_path}")


@bench_app.command(
    "kernels", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def bench_kernels(ctx: typer.Context) -> None:
    """mHC kernels vs eager PyTorch: Triton (and torch.compile) on a CUDA GPU, or the fused C++ kernels with
    --device cpu (GB/s, % of copy bandwidth, speedups).

    Options pass through to `python -m kernels.benchmark` (torch + triton only, for GPU machines without the
    rest of the stack): --device, --widths, --n, --tokens, --dtype, --repeats, --threads, --sinkhorn-iters,
    --convention, --no-compile, --csv, --dry-run. Without a GPU and without --device cpu it says so and exits 0.
    """
    from kernels.benchmark import main as kernel_benchmark_main

    raise typer.Exit(code=kernel_benchmark_main(list(ctx.args)))


@app.command("train")
def train(
    spec_file: Annotated[Path, typer.Argument(help="A RunSpec YAML: model, training, data, tracking.")],
) -> None:
    """Train one RunSpec with a live progress bar; resumes from its newest checkpoint; skips if FINISHED."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from models import ConfigError, LadderError
    from orchestrator.runspec import RunSpec
    from orchestrator.train import StepReport, run
    from orchestrator.yamlio import load_config_file

    try:
        spec = load_config_file(spec_file, RunSpec, root="run")
    except ConfigError as error:
        _fail(error)
    console.print(f"run [bold]{spec.run_key}[/bold] → {spec.tracking.uri} (experiment {spec.tracking.experiment})")
    columns = (
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn()
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(spec.name or spec.run_key, total=spec.total_steps(), status="starting")

        def on_step(report: StepReport) -> None:
            val = f" val {report.val_loss:.3f}" if report.val_loss is not None else ""
            status = f"step {report.step} loss {report.loss:.3f}{val} {report.tokens_per_s:,.0f} tok/s"
            progress.update(task, completed=report.step, status=status)

        try:
            # A multi-worker run calls on_step in its workers: no live bar there, the final line only.
            result = run(spec, on_step=on_step if spec.resources.workers == 1 else None)
        except LadderError as error:
            _fail(error)
    if result.skipped:
        console.print(f"already FINISHED (MLflow run {result.run_id}): nothing to do")
    elif result.status == "FINISHED":
        console.print(f"FINISHED: final validation loss {result.final_val_loss:.4f} (MLflow run {result.run_id})")
    else:
        console.print(f"[red]{result.status}[/red] ({result.failure_reason}) at step {result.steps}")
        raise typer.Exit(code=1)


def _load_sweep_or_fail(sweep_file: Path):
    from models import ConfigError
    from orchestrator.sweep import load_sweep

    try:
        return load_sweep(sweep_file)
    except ConfigError as error:
        _fail(error)


def _sweep_table(title: str, states) -> Table:
    table = Table(title=title)
    for column in ("run_key", "size", "variant", "n", "budget FLOPs", "steps", "state", "step", "loss", "reason"):
        table.add_column(column, justify="right" if column in ("n", "steps", "step", "loss") else "left")
    colours = {"finished": "green", "failed": "red", "running": "cyan", "pending": "white", "skipped": "green"}
    for state in states:
        spec = state.point.spec
        table.add_row(
            spec.run_key,
            spec.model.name,
            spec.model.residual.variant,
            str(spec.model.residual.n),
            f"{state.point.budget_flops:.3g}",
            str(spec.total_steps()),
            f"[{colours.get(state.state, 'white')}]{state.state}[/]",
            "" if state.step is None else str(state.step),
            "" if state.loss is None else f"{state.loss:.4f}",
            state.reason or "",
        )
    return table


@app.command("submit")
def submit(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML (see sweeps/quickstart.yaml).")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address or 'auto'; default: an embedded local Ray.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded grid and exit.")] = False,
) -> None:
    """Expand a sweep and train every pending grid point on Ray (finished points are skipped).

    Exit codes: 0 every point finished; 1 some point failed or is still pending; 2 bad input, nothing ran;
    3 cancelled (`ladder cancel` or Ctrl-C; the interrupted runs resume on the next submit).
    """
    from rich.live import Live

    from models import LadderError
    from orchestrator.planner import check_fits
    from orchestrator.scheduler import plan
    from orchestrator.scheduler import submit as submit_sweep

    sweep, points = _load_sweep_or_fail(sweep_file)
    if dry_run:
        table = Table(title=f"{sweep.name}: {len(points)} grid points (dry run)")
        for column in ("run_key", "size", "variant", "n", "budget FLOPs", "tokens", "steps", "FLOPs (true)",
                       "cpus", "gpus", "workers"):
            table.add_column(column, justify="left" if column in ("run_key", "size", "variant") else "right")
        for point in points:
            spec = point.spec
            steps = spec.total_steps()
            table.add_row(
                spec.run_key, spec.model.name, spec.model.residual.variant, str(spec.model.residual.n),
                f"{point.budget_flops:.3g}", f"{steps * spec.training.tokens_per_step:,}", f"{steps:,}",
                f"{steps * spec.flops_per_step():.3g}", f"{point.resources.cpus:g}", str(point.resources.gpus),
                str(point.resources.workers),
            )
        console.print(table)
        return
    title = f"{sweep.name} ({sweep_file})"
    try:
        check_fits(points)  # nothing launches when a GPU point cannot fit its GPUs (`ladder plan` shows why)
        with Live(_sweep_table(title, plan(sweep, points)), console=console, refresh_per_second=2) as live:
            result = submit_sweep(
                sweep, points, sweep_file=sweep_file, address=address,
                on_update=lambda states: live.update(_sweep_table(title, states)),
            )
    except LadderError as error:  # unsupported points, or the sweep is being submitted elsewhere: nothing ran
        _fail(error)
    counts = {name: sum(s.state == name for s in result.states) for name in ("finished", "failed", "pending")}
    console.print()
    console.print(
        f"launched {result.launched}; finished {counts['finished']}, failed {counts['failed']}, "
        f"pending {counts['pending']} of {len(result.states)}"
    )
    if result.cancelled:
        stopped = sum(task.outcome == "cancelled" for task in result.tasks)
        console.print(
            f"[yellow]cancelled[/yellow]: {stopped} run(s) stopped and recorded as cancelled; "
            f"`ladder submit {sweep_file}` resumes them from their checkpoints"
        )
        raise typer.Exit(code=SUBMIT_CANCELLED_EXIT)
    if not result.complete:
        raise typer.Exit(code=1)


PLAN_TABLE_WIDTH = 240


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for scale, suffix in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {suffix}"
    return f"{seconds:.3g} s"


@app.command("plan")
def plan_command(sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML.")]) -> None:
    """Memory per GPU, GPUs, tokens per step and estimated time of every grid point, before anything launches.

    Memory columns are GB (1e9 bytes) per GPU; activations are the peak of one micro-batch under the point's
    recompute policy ("act none" without recomputation); "residual" is the n-stream residual's share of the
    latter. Exit codes: 0 every point fits; 1 some point does not fit its GPUs (named); 2 bad input.
    """
    from models import ConfigError
    from orchestrator.planner import GB, plan_sweep

    sweep, points = _load_sweep_or_fail(sweep_file)
    try:
        plans = plan_sweep(points)
    except ConfigError as error:
        _fail(error)
    table = Table(title=f"{sweep.name}: memory plan of {len(plans)} grid points (GB per GPU)")
    columns = ("run_key", "size", "variant", "workers×gpus", "sharding", "recompute", "micro", "params", "grads",
               "optim", "buffers", "act", "act none", "residual", "total", "capacity", "fits", "tokens/step",
               "step", "run")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run_key", "size", "variant", "sharding") else "right")
    for plan in plans:
        spec, resources, memory = plan.point.spec, plan.point.resources, plan.memory
        residual = spec.model.residual
        table.add_row(
            spec.run_key, spec.model.name,
            residual.variant if residual.variant == "residual" else f"{residual.variant} n={residual.n}",
            f"{resources.workers}×{resources.gpus}", f"{resources.sharding}/{plan.shard_degree}",
            resources.recompute, f"{plan.micro_batch_sequences}×{spec.training.grad_accum}",
            *(f"{value / GB:.1f}" for value in (memory.parameters, memory.gradients, memory.optimizer,
                                                memory.buffers, memory.activations.peak,
                                                memory.activations_none.peak, memory.activations_none.residual,
                                                memory.total)),
            "-" if plan.capacity_bytes is None else f"{plan.capacity_bytes / GB:.0f}",
            "[green]yes[/]" if plan.fits else "[red]NO[/]",
            f"{plan.tokens_per_step:,}", _duration(plan.step_seconds), _duration(plan.run_seconds),
        )
    Console(width=max(console.width, PLAN_TABLE_WIDTH)).print(table)  # 20 columns: wider than most terminals
    too_big = [plan for plan in plans if not plan.fits]
    if too_big:
        console.print(f"[red]{len(too_big)} grid point(s) do not fit their GPUs:[/red]", soft_wrap=True)
        for plan in too_big:
            need, usable = plan.memory.total / GB, plan.capacity_bytes / GB
            console.print(f"  {escape(plan.label)}: {need:.1f} GB > {usable:.1f} GB usable", soft_wrap=True)
        raise typer.Exit(code=1)


@app.command("cancel")
def cancel(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML of the running `ladder submit`.")],
    wait: Annotated[bool, typer.Option(help="Wait until the submission has stopped.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to stop.")] = 120.0,
) -> None:
    """Stop a running `ladder submit` of this sweep: its in-flight runs are killed and recorded as cancelled;
    a later `ladder submit` resumes them from their checkpoints. Exits 1 if no submission is running."""
    import time

    from orchestrator.control import SweepControl, read_sweep_identity

    try:
        name, storage = read_sweep_identity(sweep_file)
    except (OSError, ValueError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(code=2) from None
    control = SweepControl.for_sweep(name, storage)
    token = control.request_cancel()
    if token is None:
        console.print(f"no submission of sweep {escape(name)!r} is running (lock {escape(str(control.lock_path))})")
        raise typer.Exit(code=1)
    console.print(f"cancel requested for sweep {escape(name)!r} (submission {escape(token)})")
    if not wait:
        return
    started = time.monotonic()
    with console.status("waiting for the submission to stop its runs"):
        stopped = control.wait_until_stopped(timeout)
    if not stopped:
        console.print(f"[red]the submission has not stopped after {timeout:g} s[/red]; it will act on the request "
                      "at its next poll, or stop it with Ctrl-C / `ray job stop`")
        raise typer.Exit(code=1)
    console.print(f"stopped after {time.monotonic() - started:.1f} s; `ladder submit {escape(str(sweep_file))}` "
                  "resumes the cancelled runs")


@app.command("status")
def status(sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML.")]) -> None:
    """Every grid point's state from the tracking store; runs nothing."""
    from orchestrator.scheduler import plan

    sweep, points = _load_sweep_or_fail(sweep_file)
    console.print(_sweep_table(f"{sweep.name} ({sweep_file})", plan(sweep, points)))


@app.command("dashboard")
def dashboard(
    experiment: Annotated[str, typer.Option(help="MLflow experiment (a sweep's name).")],
    tracking_uri: Annotated[str | None, typer.Option(help="Tracking store (default: ./mlruns.db).")] = None,
    out: Annotated[Path, typer.Option(help="Where the HTML pages and parquet/JSON results go.")] = Path(
        "dashboards/out"
    ),
    study: Annotated[
        str | None, typer.Option(help="Optuna study for the tuning page (default: the one named like the experiment).")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="The study's RDB storage (default: optuna.db beside the tracking store).")
    ] = None,
) -> None:
    """Polars analysis of an experiment's runs → Plotly HTML dashboard (offline, plotly.js written once); a
    tuning page when a study is given or one is named like the experiment (as `ladder tune` names them)."""
    from dashboards import build_experiment_dashboard
    from orchestrator.tracking import TrackingConfig

    uri = tracking_uri or TrackingConfig().uri
    trials = None
    if study is not None or storage is not None or _default_study_exists(uri):
        from orchestrator.tune import TuningError, trials_frame
        from orchestrator.tune.results import default_storage_url

        url = storage or default_storage_url(uri)
        try:
            trials = trials_frame(url, study or experiment)
        except TuningError as error:
            if study is not None or storage is not None:
                _fail(error)  # asked for by name: say why there is none
    with console.status(f"analysing {experiment} in {uri}"):
        index = build_experiment_dashboard(uri, experiment, out / experiment, trials=trials)
    console.print(f"dashboard: {index}")


def _default_study_exists(tracking_uri: str) -> bool:
    """Whether the default Optuna storage file (`default_storage_url`) is there, checked before importing
    orchestrator.tune (seconds) on every dashboard build."""
    from orchestrator.tracking.config import sqlite_db_path

    db = sqlite_db_path(tracking_uri)
    return (db.parent if db is not None else Path.cwd()).joinpath("optuna.db").exists()  # spec.OPTUNA_DB_NAME


@app.command("ui")
def ui(
    tracking_uri: Annotated[str | None, typer.Option(help="Tracking store (default: ./mlruns.db).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Serve the MLflow UI on 127.0.0.1 over the tracking store."""
    from orchestrator.tracking import TrackingConfig, serve_ui

    config = TrackingConfig(uri=tracking_uri) if tracking_uri else TrackingConfig()
    console.print(f"MLflow UI for {config.uri} on http://127.0.0.1:{port} (Ctrl-C stops it)")
    serve_ui(config.uri, host="127.0.0.1", port=port)


def _tune_table(title: str, frame, knobs: list[str]) -> Table:
    """Trials of a `trials_frame` as a table: the searched knobs, the metrics, the Pareto mark."""
    table = Table(title=title)
    short = {"sinkhorn_iters": "iters", "alpha_init": "α init", "convention": "conv."}  # fits 80 columns
    for column in ("trial", "state", *knobs, "val loss", "overhead", "DS error", "front"):
        table.add_column(short.get(column, column), justify="left" if column in ("state", "convention") else "right")
    colours = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "white"}

    def number(value, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    for row in frame.iter_rows(named=True):
        state = (row["outcome"] or row["state"]).lower()  # complete, pruned, diverged, duplicate, running, ...
        table.add_row(
            str(row["number"]),
            f"[{colours.get(row['state'], 'white')}]{state}[/]",
            *(number(row[k], ".2g") if isinstance(row[k], float) else str(row[k]) for k in knobs),
            number(row["val_loss"], ".4f"),
            "" if row["step_time_overhead"] is None else f"{100 * row['step_time_overhead']:+.0f}%",
            number(row["ds_error"], ".1e"),
            "[bold]★[/bold]" if row["pareto"] else "",
        )
    return table


@app.command("tune")
def tune_command(
    spec_file: Annotated[Path, typer.Argument(help="Tuning YAML (see sweeps/sinkhorn_tuning.yaml).")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address or 'auto'; default: an embedded local Ray.")
    ] = None,
    report: Annotated[bool, typer.Option("--report", help="Print the best trials and Pareto front.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved study and exit.")] = False,
) -> None:
    """Run (again: continue) an Optuna study of mHC knobs, trials trained on Ray; resumable after any kill."""
    import polars as pl
    from rich.live import Live

    from models import ConfigError, LadderError
    from orchestrator.tune import TuningError, frame_from_trials, load_tuning, trials_frame
    from orchestrator.tune import tune as run_study
    from orchestrator.tune.study import masked_url

    try:
        spec = load_tuning(spec_file)
    except ConfigError as error:
        _fail(error)
    knobs = spec.search.knobs()
    storage = masked_url(spec.storage_url)
    objective = (
        " + ".join(f"{w:g}·{m}" for m, w in spec.weights.items()) if spec.weights else ", ".join(spec.metrics)
    )
    if dry_run:
        base = spec.base_spec
        steps = base.total_steps()
        table = Table(title=f"{spec.name}: study {spec.study_name} (dry run)", show_header=False)
        table.add_column("what")
        table.add_column("value")
        for what, value in [
            ("storage", storage),
            ("objectives (minimised)", objective),
            ("sampler", f"{spec.sampler_kind} (seed {spec.sampler.seed})"),
            ("pruner", spec.pruner_kind),
            ("trials", f"{spec.budget.n_trials}, {spec.budget.parallelism} at once, "
                       f"timeout {spec.budget.timeout_s or 'none'} s"),
            *((f"search.{k}", str(getattr(spec.search, k))) for k in knobs),
            ("base run", f"{base.model.name} {base.model.residual.variant} n={base.model.residual.n}, "
                         f"{steps:,} steps × {base.training.tokens_per_step:,} tokens, "
                         f"{steps * base.flops_per_step():.3g} FLOPs"),
            ("baseline run_key", spec.baseline_spec().run_key if spec.needs_baseline else "not needed"),
            ("tracking", f"{spec.tracking_config.uri} (experiment {spec.tracking_config.experiment})"),
        ]:
            table.add_row(what, escape(value))
        console.print(table)
        dashboard = f"dashboard: optuna-dashboard {escape(spec.storage_url)} --host 127.0.0.1"
        console.print(dashboard, soft_wrap=True)
        return
    if report:
        try:
            frame = trials_frame(spec.storage_url, spec.study_name)
        except TuningError as error:
            _fail(error)
        counts = frame.group_by("state").len().sort("state")
        console.print(f"study [bold]{spec.study_name}[/bold] in {storage}: "
                      + ", ".join(f"{s} {n}" for s, n in counts.iter_rows()) + f"; objectives {objective}")
        complete = frame.filter(pl.col("state") == "COMPLETE")
        if spec.multi_objective:
            front = complete.filter(pl.col("pareto")).sort(spec.metrics[0])
            title = f"Pareto front ({front.height} of {complete.height} complete)"
            console.print(_tune_table(title, front, knobs))
            for metric in spec.metrics:
                best = complete.sort(metric).head(3)
                console.print(_tune_table(f"best by {metric}", best, knobs))
        else:
            console.print(_tune_table(f"best trials ({objective})", complete.sort("value").head(10), knobs))
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would scroll the live table away
    console.print(f"study [bold]{spec.study_name}[/bold] → {storage}; objectives {objective}")
    console.print(f"dashboard: optuna-dashboard {escape(spec.storage_url)} --host 127.0.0.1", soft_wrap=True)
    title = f"{spec.study_name} ({spec_file})"

    def view(trials) -> Table:
        return _tune_table(title, frame_from_trials(trials).tail(20), knobs)

    try:
        with Live(Table(title=title), console=console, refresh_per_second=2) as live:
            result = run_study(spec, spec_file=spec_file, address=address,
                               on_update=lambda trials: live.update(view(trials)))
    except LadderError as error:
        _fail(error)
    console.print()
    console.print(
        f"launched {result.launched}; complete {result.complete}, pruned {result.pruned}, "
        f"failed {result.failed} of {result.n_trials}"
        + (" (timed out: run again to continue)" if result.timed_out else "")
        + (" (search space exhausted)" if result.exhausted else "")
    )
    if not (result.finished or result.exhausted or result.timed_out):
        raise typer.Exit(code=1)


def main() -> None:
    """Console-script entry point."""
    app()
