"""The `ladder` command line: a thin typer layer over the library; the only place that prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models import ConfigError, LadderError, ModelConfig, count_parameters, flops_per_token, get_preset

app = typer.Typer(help="mhc-ladder: scaling-law sweeps of mHC residual variants on MoE language models.")
model_app = typer.Typer(help="Inspect and smoke-test model presets.")
bench_app = typer.Typer(help="Benchmarks that print ratio tables (append rows to benchmarks/results/*.csv).")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
console = Console()

PresetArg = Annotated[str, typer.Argument(help="paper-3b | paper-9b | paper-27b | p1 | p4 | p16 | p64 | nano")]
ResidualOpt = Annotated[str, typer.Option("--residual", help="residual | hc | mhc | mhc-lite")]
StreamsOpt = Annotated[int | None, typer.Option("--n", help="Expansion rate (default: 4, or 1 for residual).")]


def _configured(preset: str, residual: str, n: int | None) -> ModelConfig:
    streams = n if n is not None else (1 if residual == "residual" else 4)
    return get_preset(preset).with_residual(variant=residual, n=streams)


def _fail(error: LadderError) -> None:
    console.print(f"[red]error:[/red] {error}")
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
    import torch

    from orchestrator.smoke import run_smoke

    torch.set_num_threads(threads)
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


def main() -> None:
    """Console-script entry point."""
    app()
