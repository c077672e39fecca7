"""Kernel benchmark: one mHC sublayer's primitive ops, Triton (GPU) or fused C++ (CPU) vs eager PyTorch.

For each width C (the paper's 3B / 9B / 27B widths by default), n streams and T tokens, it times the forward
and the forward + backward of:

- ``coefficients``  x·φ, Σx², scale, bias, σ / 2σ            (T, n·C) → (T, 2n + n²)
- ``sinkhorn``      the H_res projection, ``sinkhorn_iters``   (T, n, n) → (T, n, n)
- ``pre_mix``       u = Σ_j H_pre[j] x_j                         (T, n, C) → (T, C)
- ``post_res_mix``  x' = H_res x + H_postᵀ f                      (T, n, C), (T, C) → (T, n, C)
- ``mhc_layer``     the four chained, with F = identity (the mHC overhead around one sublayer)

for the backends of the device: on a GPU the Triton kernels (`kernels.triton_ops`), the eager PyTorch
reference (`kernels.reference`) and `torch.compile` of that reference, each timed with CUDA events after
flushing the L2 cache (as `triton.testing.do_bench` does), so every run streams its operands from HBM as in
training; on CPU (``--device cpu``) the fused C++ kernels (`kernels.cpu_ops`) against the same reference, timed
by the wall clock with caches as the previous run left them. ``mhc_layer`` calls the backend's ``mhc_read``, so
on CPU it includes the fused read kernel. Times are the median of ``repeats`` runs after warm-up. Each row also
reports:

- ``bytes``: what the op must move at least (MHC_SPEC §5: every input read once, every output written once;
  the backward reads the saved inputs and the output gradients and writes the input gradients). The whole
  layer counts the sum of its ops, ≈ (3n+1)C read and (n+1)C written per token forward (§5, "fused mHC I/O").
- ``gb_per_s`` = bytes / time, and ``copy_fraction`` = that over the device copy bandwidth measured in the
  same run (a 1 GiB ``copy_``, read + write); the issue's target for the memory-bound ops is ≥ 0.8.
- ``speedup_vs_eager`` = eager time / this backend's time for the same op, mode and width.
- ``max_rel_error``: the forward max-norm error of the fast backend (Triton or C++) against eager.

Usage: ``python -m kernels.benchmark [--tokens 16384] [--n 4] [--widths 1280 1920 2560]`` (also wired to
``ladder bench kernels``); on CPU ``--device cpu --threads 2`` (defaults there: the P1 / P4 widths 96 and 160,
4096 tokens, float32). Only torch and triton are needed (rich is used for the table when installed). Rows
are appended in long format to ``benchmarks/results/kernels.csv`` with the machine, GPU, versions, git SHA and
time. Without a CUDA device and without ``--device cpu`` it says so and returns no rows.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels import reference
from kernels.dispatch import TORCH_OPS, MHCOps, compose_mhc_read
from models.benchlog import append_rows, git_sha, machine, timestamp

__all__ = ["DEFAULT_CSV", "append_csv", "describe", "op_bytes", "print_table", "run_kernel_benchmark"]

log = logging.getLogger(__name__)

DEFAULT_CSV = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "kernels.csv"
OPS = ("coefficients", "sinkhorn", "pre_mix", "post_res_mix", "mhc_layer")
BACKENDS = ("triton", "cpp", "torch", "compiled")
FAST_BACKENDS = ("triton", "cpp")  # the backend each run is about; the others are baselines
GPU_BACKENDS = ("triton", "torch", "compiled")
MODES = ("fwd", "fwd+bwd")
NEEDS_GPU = "the kernel benchmark needs a CUDA GPU (none is visible); nothing was timed"
_L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MiB, H200: 60 MiB)


@dataclass(frozen=True, slots=True)
class _Case:
    """One op at one shape: its inputs, how to call it with a backend's ops, and the bytes it must move."""

    inputs: list[torch.Tensor]
    call: Callable[[MHCOps, list[torch.Tensor]], tuple[torch.Tensor, ...]]
    bytes_fwd: int
    bytes_bwd: int


def op_bytes(n: int, width: int, tokens: int, dtype: torch.dtype) -> dict[str, tuple[int, int]]:
    """(forward, backward) bytes each op must move: inputs read once, outputs written once (MHC_SPEC §5).

    Activations (x, f, u and their gradients) are in ``dtype``; φ, coefficients and logits are fp32.
    """
    T, C, K, M = tokens, width, n * width, 2 * n + n * n
    s, f32 = torch.finfo(dtype).bits // 8, 4
    coef_io = T * (n + n * n) * f32  # H_post and H_res as the post mix reads them
    coef = (T * K * s + K * M * f32 + T * M * f32, 2 * T * K * s + 2 * K * M * f32 + T * M * f32)
    sink = (2 * T * n * n * f32, 3 * T * n * n * f32)
    pre = (T * K * s + T * n * f32 + T * C * s, T * C * s + 2 * T * K * s + 2 * T * n * f32)
    post = (2 * T * K * s + T * C * s + coef_io, 3 * T * K * s + 2 * T * C * s + 2 * coef_io)
    parts = {"coefficients": coef, "sinkhorn": sink, "pre_mix": pre, "post_res_mix": post}
    layer = (sum(p[0] for p in parts.values()), sum(p[1] for p in parts.values()))
    return {**parts, "mhc_layer": layer}


def _cases(
    n: int, width: int, tokens: int, dtype: torch.dtype, iters: int, convention: str, device: torch.device
) -> dict[str, _Case]:
    T, C, K, M = tokens, width, n * width, 2 * n + n * n
    x_TNC = torch.randn(T, n, C, device=device, dtype=dtype)
    f_TC = torch.randn(T, C, device=device, dtype=dtype)
    phi_KM = torch.randn(K, M, device=device) / math.sqrt(K)
    alpha_3 = torch.full((3,), 0.01, device=device)
    bias_M = torch.randn(M, device=device)
    logits_TNN = torch.randn(T, n, n, device=device)
    h_pre_TN = torch.rand(T, n, device=device)
    h_post_TN = 2 * torch.rand(T, n, device=device)
    h_res_TNN = torch.rand(T, n, n, device=device)

    def coefficients(ops: MHCOps, t: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return ops.coefficients(t[0].flatten(1), t[1], t[2], t[3], n, 1e-6, 1e-6)

    def layer(ops: MHCOps, t: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        u_TC, h_post, h_res = ops.mhc_read(t[0], t[1], t[2], t[3], 1e-6, 1e-6, iters, convention)
        return (ops.post_res_mix(t[0], u_TC, h_post, h_res),)

    nbytes = op_bytes(n, width, tokens, dtype)
    return {
        "coefficients": _Case([x_TNC, phi_KM, alpha_3, bias_M], coefficients, *nbytes["coefficients"]),
        "sinkhorn": _Case(
            [logits_TNN], lambda ops, t: (ops.sinkhorn(t[0], iters, convention, 1e-6),), *nbytes["sinkhorn"]
        ),
        "pre_mix": _Case([x_TNC, h_pre_TN], lambda ops, t: (ops.pre_mix(*t),), *nbytes["pre_mix"]),
        "post_res_mix": _Case(
            [x_TNC, f_TC, h_post_TN, h_res_TNN],
            lambda ops, t: (ops.post_res_mix(*t),),
            *nbytes["post_res_mix"],
        ),
        "mhc_layer": _Case([x_TNC, phi_KM, alpha_3, bias_M], layer, *nbytes["mhc_layer"]),
    }


def _compiled_ops() -> MHCOps:
    coefficients = torch.compile(reference.mhc_coefficients, dynamic=False)
    sinkhorn = torch.compile(reference.sinkhorn, dynamic=False)
    pre_mix = torch.compile(reference.pre_mix, dynamic=False)
    return MHCOps(
        name="compiled",
        coefficients=coefficients,
        sinkhorn=sinkhorn,
        pre_mix=pre_mix,
        post_res_mix=torch.compile(reference.post_res_mix, dynamic=False),
        mhc_read=compose_mhc_read(coefficients, sinkhorn, pre_mix),
    )


def _backend_ops(backends: tuple[str, ...]) -> dict[str, MHCOps]:
    """The ops of each named backend; the fast ones are imported here (triton needs a GPU, cpp a compiler)."""
    ops: dict[str, MHCOps] = {"torch": TORCH_OPS}
    if "triton" in backends:
        from kernels import triton_ops

        ops["triton"] = triton_ops.TRITON_OPS
    if "cpp" in backends:
        from kernels import cpu_ops

        ops["cpp"] = cpu_ops.CPP_OPS
    if "compiled" in backends:
        ops["compiled"] = _compiled_ops()
    return ops


def _median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median of CUDA-event timings, the L2 flushed before each run (wall clock on CPU: harness tests)."""
    for _ in range(5 if device.type == "cuda" else 1):  # warm-up: compilation, autotuning of cuBLAS, caches
        fn()
    times = []
    if device.type != "cuda":
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    for _ in range(repeats):
        flush.zero_()
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_event.record()
        fn()
        end_event.record()
        torch.cuda.synchronize()
        times.append(start_event.elapsed_time(end_event))
    return statistics.median(times)


def _copy_gb_per_s(repeats: int, device: torch.device) -> float:
    """Device copy bandwidth: a 1 GiB tensor (16 MiB on CPU) copied, counting the read and the write."""
    src = torch.empty(2**30 if device.type == "cuda" else 2**24, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), repeats, device)
    return 2 * src.numel() / ms / 1e6


def _timer(case: _Case, ops: MHCOps, mode: str) -> Callable[[], object]:
    if mode == "fwd":

        def forward() -> object:
            with torch.no_grad():
                return case.call(ops, case.inputs)

        return forward
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in case.inputs]
    outputs = case.call(ops, leaves)
    grads = [torch.randn_like(o) for o in outputs]

    def forward_backward() -> object:
        outs = case.call(ops, leaves)
        return torch.autograd.grad(outs, leaves, grads)

    return forward_backward


def _max_error(case: _Case, ops: MHCOps) -> float:
    """Forward max-norm relative error of a backend against eager PyTorch at the benchmark shape."""
    with torch.no_grad():
        ours, ref = case.call(ops, case.inputs), case.call(TORCH_OPS, case.inputs)
    return max(
        ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
        for a, b in zip(ours, ref, strict=True)
    )


def _environment(device: torch.device) -> dict[str, str]:
    import triton

    return {
        "machine": machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git_sha": git_sha(),
        "timestamp": timestamp(),
    }


def run_kernel_benchmark(
    widths: tuple[int, ...] = (1280, 1920, 2560),
    n: int = 4,
    tokens: int = 16384,
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 50,
    *,
    sinkhorn_iters: int = 20,
    convention: str = "paper",
    backends: tuple[str, ...] = GPU_BACKENDS,
    csv_path: Path | None = DEFAULT_CSV,
    device: torch.device | None = None,
) -> list[dict]:
    """Time every op × backend × mode × width; returns long-format rows (also appended to ``csv_path``).

    Returns ``[]`` (with a warning) when no CUDA device is visible and ``device`` is not given. ``csv_path=None``
    skips the CSV. ``device`` defaults to the current CUDA device. On a CPU device ``backends`` name ``cpp``
    (the real CPU benchmark) or ``triton`` (the harness test under ``TRITON_INTERPRET=1``, whose timings mean
    nothing). The first of ``backends`` that is Triton or C++ is the one checked against eager.
    """
    if device is None:
        if not torch.cuda.is_available():
            log.warning(NEEDS_GPU)
            return []
        device = torch.device("cuda", torch.cuda.current_device())
    unknown = set(backends) - set(BACKENDS)
    fast = [b for b in backends if b in FAST_BACKENDS]
    if unknown or not fast:
        raise ValueError(f"backends {backends!r} must include one of {FAST_BACKENDS} and be among {BACKENDS}")
    env = _environment(device)
    copy_gb_per_s = _copy_gb_per_s(repeats, device)
    log.info("device copy bandwidth %.0f GB/s on %s", copy_gb_per_s, env["gpu"])
    backend_ops = _backend_ops(backends)
    rows: list[dict] = []
    for width in widths:
        cases = _cases(n, width, tokens, dtype, sinkhorn_iters, convention, device)
        for op in OPS:
            case = cases[op]
            error = _max_error(case, backend_ops[fast[0]])
            if error > 2e-2:
                log.warning(
                    "%s %s at C=%d differs from eager by %.2e (max-norm relative)", fast[0], op, width, error
                )
            for mode in MODES:
                eager_ms = math.nan
                for backend in ("torch", *[b for b in backends if b != "torch"]):
                    try:
                        ms = _median_ms(_timer(case, backend_ops[backend], mode), repeats, device)
                    except Exception as exc:  # torch.compile can fail on an unusual stack: record, go on
                        log.warning("%s %s %s at C=%d failed: %s", backend, op, mode, width, exc)
                        ms = math.nan
                    eager_ms = ms if backend == "torch" else eager_ms
                    moved = case.bytes_fwd + (case.bytes_bwd if mode == "fwd+bwd" else 0)
                    gb_per_s = moved / ms / 1e6
                    rows.append(
                        {
                            "op": op,
                            "mode": mode,
                            "backend": backend,
                            "width": width,
                            "n": n,
                            "tokens": tokens,
                            "dtype": str(dtype).removeprefix("torch."),
                            "sinkhorn_iters": sinkhorn_iters,
                            "convention": convention,
                            "median_ms": ms,
                            "bytes": moved,
                            "gb_per_s": gb_per_s,
                            "copy_gb_per_s": copy_gb_per_s,
                            "copy_fraction": gb_per_s / copy_gb_per_s,
                            "speedup_vs_eager": eager_ms / ms,
                            "max_rel_error": error,
                            **env,
                        }
                    )
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if csv_path is not None:
        append_csv(rows, csv_path)
    return rows


def describe(
    widths: tuple[int, ...],
    n: int,
    tokens: int,
    dtype: torch.dtype,
    repeats: int,
    backends: tuple[str, ...] = GPU_BACKENDS,
) -> list[str]:
    """What `run_kernel_benchmark` would time (the ``--dry-run`` text): the grid and the bytes of every op."""
    runs = len(widths) * len(OPS) * len(MODES) * len(backends)
    lines = [
        f"{runs} timings ({len(widths)} widths × {len(OPS)} ops × {len(MODES)} modes × "
        f"{len(backends)} backends), median of {repeats} runs each; n={n}, T={tokens}, "
        f"{str(dtype).removeprefix('torch.')}; backends {', '.join(backends)}",
        f"{'C':>6} {'op':>14} {'fwd MB':>10} {'bwd MB':>10}",
    ]
    for width in widths:
        for op, (fwd, bwd) in op_bytes(n, width, tokens, dtype).items():
            lines.append(f"{width:>6} {op:>14} {fwd / 1e6:>10.1f} {bwd / 1e6:>10.1f}")
    return lines


def append_csv(rows: list[dict], path: Path = DEFAULT_CSV) -> None:
    """Append rows in long format, writing the header when the file is new."""
    append_rows(rows, path)


def print_table(rows: list[dict]) -> None:
    """A table per (op, mode): ms, GB/s, fraction of copy bandwidth, speedup vs eager; rich when installed."""
    if not rows:
        print(NEEDS_GPU)
        return
    header = ["op", "mode", "C", "backend", "ms", "GB/s", "of copy BW", "× eager"]
    body = [
        [
            r["op"],
            r["mode"],
            str(r["width"]),
            r["backend"],
            f"{r['median_ms']:.3f}",
            f"{r['gb_per_s']:.0f}",
            f"{r['copy_fraction']:.0%}",
            f"{r['speedup_vs_eager']:.2f}",
        ]
        for r in rows
    ]
    first = rows[0]
    title = (
        f"mHC kernels: n={first['n']}, T={first['tokens']}, {first['dtype']}, t={first['sinkhorn_iters']} · "
        f"{first['gpu']} · copy {first['copy_gb_per_s']:.0f} GB/s · "
        f"torch {first['torch']}, triton {first['triton']}"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
        print(title)
        for row in [header, *body]:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name in ("op", "mode", "backend") else "right")
    for row in body:
        table.add_row(*row)
    Console().print(table)


# Defaults per device: the paper's widths in bf16 on a GPU; the CPU proxies' widths (P1, P4) in fp32 on CPU.
_DEVICE_DEFAULTS = {
    "cuda": {"widths": [1280, 1920, 2560], "tokens": 16384, "dtype": "bfloat16", "backends": ("triton", "torch")},
    "cpu": {"widths": [96, 160], "tokens": 4096, "dtype": "float32", "backends": ("cpp", "torch")},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--widths", type=int, nargs="+", help="default: 1280 1920 2560 (cuda), 96 160 (cpu)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, help="default: 16384 (cuda), 4096 (cpu)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 (cuda), float32 (cpu)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (cpu)")
    parser.add_argument("--sinkhorn-iters", type=int, default=20)
    parser.add_argument("--convention", choices=["paper", "deepseek-v4"], default="paper")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile backend (cuda)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="where to append rows ('-' to skip)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the grid and bytes per op, time nothing"
    )
    args = parser.parse_args(argv)
    defaults = _DEVICE_DEFAULTS[args.device]
    widths = tuple(args.widths or defaults["widths"])
    tokens = args.tokens or defaults["tokens"]
    dtype = getattr(torch, args.dtype or defaults["dtype"])
    backends = defaults["backends"] if args.device == "cpu" or args.no_compile else GPU_BACKENDS
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.dry_run:
        print("\n".join(describe(widths, args.n, tokens, dtype, args.repeats, backends)))
        return 0
    device = None
    if args.device == "cpu":
        from models.cpu_runtime import configure_cpu_runtime

        configure_cpu_runtime(args.threads)  # as training runs: its threads, freed memory kept for reuse
        device = torch.device("cpu")
    rows = run_kernel_benchmark(
        widths,
        args.n,
        tokens,
        dtype,
        args.repeats,
        sinkhorn_iters=args.sinkhorn_iters,
        convention=args.convention,
        backends=backends,
        csv_path=None if str(args.csv) == "-" else args.csv,
        device=device,
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
