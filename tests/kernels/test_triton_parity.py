"""Parity of the Triton mHC kernels with the PyTorch reference: every forward and every input gradient.

Runs on CPU under the Triton interpreter (CI has no GPU) and, unchanged, on a CUDA machine without it.
``TRITON_INTERPRET=1`` must be set before `kernels.triton_ops` is first imported in the process (`triton.jit`
reads it when it decorates a kernel), so this module sets it before importing anything else; CI also sets it
for the whole test run. If the kernels were already built for a GPU and there is none, every test fails with a
message saying so instead of crashing inside Triton.

Method. Inputs are random with odd shapes (token counts and widths that are not multiples of the block, n ∈
{1, 2, 3, 4, 8}); the kernels see them in their own dtype (fp32 or bf16 activations, fp32 coefficients), the
reference sees float64 copies of the very same values and computes in float64, so the only differences are the
kernels' fp32 arithmetic and the final rounding of outputs stored in bf16. Small blocks and two K-splits are
forced through `override_launch` so every tail mask and multi-program path runs; every buffer the launchers
allocate starts as NaN (`poison_outputs`), so an element a kernel fails to write fails the comparison.

Tolerances (max-norm relative error, ‖a − b‖∞ ≤ tol · ‖b‖∞), by the dtype of the tensor compared:
- fp32: 1e-5. fp32 accumulation over at most n·C ≤ 192 terms and up to 40 Sinkhorn steps gives ≤ 5e-7 here;
  an indexing or masking bug gives O(1) errors. On a GPU, the coefficient GEMM with bf16 x runs in TF32
  against fp32 φ (paper §4.3.1), so there every coefficient output and gradient from bf16 x gets 5e-3 (TF32
  keeps 10 mantissa bits).
- bf16: 1e-2. The kernels compute in fp32 and round once to bf16: ≤ 2⁻⁸ ≈ 3.9e-3 relative on a GPU (round to
  nearest), ≤ 2⁻⁷ ≈ 7.8e-3 under the interpreter, which truncates fp32 → bf16 (observed up to 6.7e-3).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported in this process

import inspect
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
import triton

import kernels
from kernels import benchmark, reference, triton_ops
from kernels.triton_launch import kernels_interpreted, override_launch, poison_outputs

DEVICE = torch.device("cpu" if kernels_interpreted() or not torch.cuda.is_available() else "cuda")
STREAMS = (1, 2, 3, 4, 8)
DTYPES = (torch.float32, torch.bfloat16)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
TF32_TOLERANCE = 5e-3
# Small blocks: T = 37 tokens span 3 token blocks and C = 20..40 several C / K blocks, each with a tail.
SMALL_BLOCKS = {"block_t": 16, "block_c": 16, "block_k": 16, "num_splits": 2}
NUM_TOKENS = 37


@pytest.fixture(autouse=True)
def _kernels_can_run() -> None:
    if DEVICE.type == "cpu" and not kernels_interpreted():
        pytest.fail(
            "the Triton kernels were built for a GPU (TRITON_INTERPRET was not 1 when kernels.triton_ops "
            "was first imported) and no CUDA device is visible: run the tests with TRITON_INTERPRET=1 in "
            "the environment"
        )


def _width(n: int) -> int:
    """C: not a power of two, small enough for the interpreter (K = n·C ≤ 160)."""
    return 20 if n == 8 else 40


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: unwritten (NaN-poisoned) or non-finite elements"
    scale = expected.abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * max(scale, 1e-30), (
        f"{what}: max error {error:.3e} > {tol:g} × max |ref| {scale:.3e}"
    )


def _check_parity(
    name: str,
    triton_fn: Callable[..., object],
    reference_fn: Callable[..., object],
    inputs: Sequence[torch.Tensor],
    *,
    args: tuple = (),
    min_tol: float = 0.0,
    blocks: dict[str, int] | None = SMALL_BLOCKS,
) -> None:
    """Forward outputs and the gradient of every input, against the reference on float64 copies.

    Tolerances are by dtype, at least ``min_tol``. ``blocks`` forces launch parameters (None: the GPU
    heuristics).
    """
    ours = [t.detach().clone().requires_grad_() for t in inputs]
    ref = [t.detach().double().requires_grad_() for t in inputs]
    with poison_outputs(), override_launch(**(blocks or {})):
        out = triton_fn(*ours, *args)
        out = out if isinstance(out, tuple) else (out,)
        expected = reference_fn(*ref, *args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        grads = [torch.randn(o.shape, device=DEVICE).to(o.dtype) for o in out]
        torch.autograd.backward(out, grads)
        torch.autograd.backward(expected, [g.double() for g in grads])
    for i, (o, e) in enumerate(zip(out, expected, strict=True)):
        _assert_close(o, e, max(TOLERANCE[o.dtype], min_tol), f"{name} output {i}")
    for i, (o, e) in enumerate(zip(ours, ref, strict=True)):
        assert o.grad is not None and o.grad.dtype == o.dtype, f"{name}: gradient {i} missing or wrong dtype"
        _assert_close(o.grad, e.grad, max(TOLERANCE[o.dtype], min_tol), f"{name} gradient of input {i}")


def _coefficient_inputs(n: int, dtype: torch.dtype, num_res: int | None = None) -> list[torch.Tensor]:
    K = n * _width(n)
    M = 2 * n + (n * n if num_res is None else num_res)
    x_TK = torch.randn(NUM_TOKENS, K, device=DEVICE).to(dtype)
    phi_KM = torch.randn(K, M, device=DEVICE) * 2.0 / K**0.5
    alpha_3 = torch.rand(3, device=DEVICE) + 0.5
    bias_M = torch.randn(M, device=DEVICE)
    return [x_TK, phi_KM, alpha_3, bias_M]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", STREAMS)
def test_coefficients_match_reference_forward_and_backward(n: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n)
    _check_parity(
        "coefficients",
        triton_ops.mhc_coefficients,
        reference.mhc_coefficients,
        _coefficient_inputs(n, dtype),
        args=(n, 1e-6, 1e-6 if n % 2 else 0.0),
        min_tol=TF32_TOLERANCE if DEVICE.type == "cuda" and dtype != torch.float32 else 0.0,
    )


def test_coefficients_with_mhc_lite_row_length() -> None:
    """mHC-lite's coefficient row: 2n + n! columns (32 at n = 4), not 2n + n²."""
    torch.manual_seed(5)
    inputs = _coefficient_inputs(4, torch.float32, num_res=24)
    _check_parity(
        "coefficients (lite)", triton_ops.mhc_coefficients, reference.mhc_coefficients, inputs, args=(4, 1e-6)
    )


SINKHORN_CASES = [
    *[("paper", iters, n) for iters in (0, 1, 2, 7) for n in (1, 3, 4)],
    *[("deepseek-v4", iters, n) for iters in (1, 2, 7) for n in (1, 3, 4)],
    ("paper", 20, 8),
    ("deepseek-v4", 20, 8),
    ("paper", 20, 2),
    ("deepseek-v4", 20, 2),
]


@pytest.mark.parametrize(("convention", "num_iters", "n"), SINKHORN_CASES)
def test_sinkhorn_matches_reference_forward_and_backward(convention: str, num_iters: int, n: int) -> None:
    torch.manual_seed(num_iters * 10 + n)
    logits_TNN = torch.randn(NUM_TOKENS, n, n, device=DEVICE) * 2.0
    _check_parity(
        f"sinkhorn[{convention}, t={num_iters}]",
        triton_ops.sinkhorn,
        reference.sinkhorn,
        [logits_TNN],
        args=(num_iters, convention, 1e-6),
    )


def test_sinkhorn_deepseek_with_zero_iterations_behaves_as_the_reference() -> None:
    """The reference's first row normalisation is unconditional, so t = 0 equals t = 1 in 'deepseek-v4'."""
    torch.manual_seed(0)
    logits_TNN = torch.randn(NUM_TOKENS, 4, 4, device=DEVICE)
    _check_parity(
        "sinkhorn t=0", triton_ops.sinkhorn, reference.sinkhorn, [logits_TNN], args=(0, "deepseek-v4")
    )


def test_sinkhorn_reads_strided_logits_and_keeps_leading_dims() -> None:
    """The model views a slice of the coefficient row as (T, n, n); extra leading dims pass through."""
    torch.manual_seed(1)
    row_TM = torch.randn(NUM_TOKENS, 8 + 16, device=DEVICE)
    logits_TNN = row_TM[:, 8:].view(NUM_TOKENS, 4, 4)
    for convention in ("paper", "deepseek-v4"):
        with poison_outputs():
            ours = triton_ops.sinkhorn(logits_TNN, 3, convention)
            batched = triton_ops.sinkhorn(logits_TNN[:36].reshape(4, 9, 4, 4), 3, convention)
        expected = reference.sinkhorn(logits_TNN.double(), 3, convention)
        _assert_close(ours, expected, TOLERANCE[torch.float32], f"strided sinkhorn[{convention}]")
        _assert_close(
            batched, expected[:36].reshape(4, 9, 4, 4), TOLERANCE[torch.float32], "batched sinkhorn"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", STREAMS)
def test_pre_mix_matches_reference_forward_and_backward(n: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n)
    x_TNC = torch.randn(NUM_TOKENS, n, _width(n), device=DEVICE).to(dtype)
    h_pre_TN = torch.rand(NUM_TOKENS, n, device=DEVICE)
    _check_parity("pre_mix", triton_ops.pre_mix, reference.pre_mix, [x_TNC, h_pre_TN])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", STREAMS)
def test_post_res_mix_matches_reference_forward_and_backward(n: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n)
    C = _width(n)
    x_TNC = torch.randn(NUM_TOKENS, n, C, device=DEVICE).to(dtype)
    f_TC = torch.randn(NUM_TOKENS, C, device=DEVICE).to(dtype)
    h_post_TN = 2.0 * torch.rand(NUM_TOKENS, n, device=DEVICE)
    h_res_TNN = torch.rand(NUM_TOKENS, n, n, device=DEVICE)
    _check_parity(
        "post_res_mix", triton_ops.post_res_mix, reference.post_res_mix, [x_TNC, f_TC, h_post_TN, h_res_TNN]
    )


def test_mixes_accept_expanded_streams_and_a_transposed_width() -> None:
    """Stride-0 streams (the embedding `expand`ed to n streams) are read in place; other layouts copied."""
    torch.manual_seed(2)
    n, C = 4, 24
    h_BC = torch.randn(NUM_TOKENS, C, device=DEVICE)
    x_TNC = h_BC[:, None, :].expand(NUM_TOKENS, n, C)
    x_T_CN = torch.randn(NUM_TOKENS, C, n, device=DEVICE).transpose(1, 2)  # C stride != 1
    h_pre_TN = torch.rand(NUM_TOKENS, n, device=DEVICE)
    h_res_TNN = torch.rand(NUM_TOKENS, n, n, device=DEVICE)
    for x in (x_TNC, x_T_CN):
        _check_parity("pre_mix (strided)", triton_ops.pre_mix, reference.pre_mix, [x, h_pre_TN])
        u = triton_ops.post_res_mix(x, h_BC, h_pre_TN, h_res_TNN)
        expected = reference.post_res_mix(x.double(), h_BC.double(), h_pre_TN.double(), h_res_TNN.double())
        _assert_close(u, expected, TOLERANCE[torch.float32], "post_res_mix (strided)")


def test_default_launch_heuristics_run_one_mhc_layer_like_the_reference() -> None:
    """A whole mHC sublayer (coefficients → Sinkhorn → pre-mix → F → post/res mix), GPU block sizes."""
    torch.manual_seed(3)
    n, C, T = 4, 48, 70
    x = torch.randn(T, n, C, device=DEVICE)
    phi = torch.randn(n * C, 2 * n + n * n, device=DEVICE) * 0.1
    alpha = torch.tensor([0.5, 0.7, 0.9], device=DEVICE)
    bias = torch.randn(2 * n + n * n, device=DEVICE)
    weight = torch.randn(C, C, device=DEVICE) / C**0.5

    def layer(ops: kernels.MHCOps, x_TNC, phi_KM, alpha_3, bias_M):
        h_pre, h_post, res = ops.coefficients(x_TNC.flatten(1), phi_KM, alpha_3, bias_M, n, 1e-6, 1e-6)
        h_res = ops.sinkhorn(res.view(-1, n, n), 20, "deepseek-v4", 1e-6)
        f_TC = torch.tanh(ops.pre_mix(x_TNC, h_pre) @ weight.to(x_TNC.dtype))
        return ops.post_res_mix(x_TNC, f_TC, h_post, h_res)

    _check_parity(
        "mHC layer",
        lambda *t: layer(triton_ops.TRITON_OPS, *t),
        lambda *t: layer(kernels.get_ops("torch", DEVICE), *t),
        [x, phi, alpha, bias],
        blocks=None,
    )


def test_empty_token_batches_give_empty_outputs_and_zero_gradients() -> None:
    n, C = 3, 8
    x = torch.randn(0, n, C, device=DEVICE, requires_grad=True)
    phi = torch.randn(n * C, 2 * n + n * n, device=DEVICE, requires_grad=True)
    alpha, bias = torch.ones(3, device=DEVICE), torch.zeros(2 * n + n * n, device=DEVICE)
    h_pre, h_post, res = triton_ops.mhc_coefficients(x.flatten(1), phi, alpha, bias, n, 1e-6)
    h_res = triton_ops.sinkhorn(res.view(0, n, n), 3, "deepseek-v4")
    out = triton_ops.post_res_mix(x, triton_ops.pre_mix(x, h_pre), h_post, h_res)
    assert out.shape == (0, n, C)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(phi.grad, torch.zeros_like(phi))


def test_backward_is_bitwise_reproducible() -> None:
    """No atomics: the K-split partial dφ are summed in a fixed order, so reruns agree bit for bit."""
    torch.manual_seed(4)
    inputs = _coefficient_inputs(4, torch.bfloat16)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with override_launch(**SMALL_BLOCKS):
            h_pre, h_post, res = triton_ops.mhc_coefficients(*leaves, 4, 1e-6)
            (h_pre.sum() + h_post.square().sum() + res.sin().sum()).backward()
        grads.append([t.grad for t in leaves])
    for first, second in zip(*grads, strict=True):
        assert torch.equal(first, second)


def test_dispatch_returns_the_triton_ops_with_the_reference_signatures() -> None:
    ops = kernels.get_ops("triton", torch.device("cpu"))
    assert ops is triton_ops.TRITON_OPS and ops.name == "triton"
    pairs = {
        "coefficients": reference.mhc_coefficients,
        "sinkhorn": reference.sinkhorn,
        "pre_mix": reference.pre_mix,
        "post_res_mix": reference.post_res_mix,
    }
    for field, ref_fn in pairs.items():
        ours = inspect.signature(getattr(ops, field))
        theirs = inspect.signature(ref_fn)
        assert list(ours.parameters.values()) == list(theirs.parameters.values()), field


def _t(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, device=DEVICE)


# Each call must raise ValueError matching the pattern (issue 6, "Bad input": never silent wrong results).
BAD_INPUTS: dict[str, tuple[Callable[[], object], str]] = {
    "n-out-of-range": (lambda: triton_ops.pre_mix(_t(3, 9, 8), _t(3, 9)), "n .9. must be"),
    "float64": (lambda: triton_ops.pre_mix(_t(3, 2, 8).double(), _t(3, 2)), "dtype"),
    "h-shape": (lambda: triton_ops.pre_mix(_t(3, 2, 8), _t(3, 3)), "must be .T, n."),
    "device-mismatch": (lambda: triton_ops.pre_mix(_t(3, 2, 8), _t(3, 2).to("meta")), "device"),
    "convention": (lambda: triton_ops.sinkhorn(_t(3, 4, 4), 2, "log"), "convention"),
    "negative-iters": (lambda: triton_ops.sinkhorn(_t(3, 4, 4), -1), "num_iters"),
    "not-square": (lambda: triton_ops.sinkhorn(_t(3, 4, 5), 2), r"\(\.\.\., n, n\)"),
    "phi-columns": (lambda: triton_ops.mhc_coefficients(_t(3, 8), _t(8, 4), _t(3), _t(4), 2, 0.0), "2n"),
    "f-shape": (lambda: triton_ops.post_res_mix(_t(3, 2, 8), _t(3, 7), _t(3, 2), _t(3, 2, 2)), "must be"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_a_clear_error(case: str) -> None:
    call, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_every_kernel_builds_for_sm90_without_a_gpu() -> None:
    """The interpreter accepts programs the GPU compiler rejects: build every kernel for an H100 (n = 3)."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"no ptxas in the triton wheel ({ptxas}): cannot build for sm_90 on this platform")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "kernels.triton_aot", "--n", "3"],
        env=env,
        cwd=Path(kernels.__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("\n") == 1 + 13, done.stdout  # header + 13 kernels


def test_kernel_benchmark_harness_on_cpu(tmp_path: Path) -> None:
    """Without CUDA the benchmark returns no rows; its harness (bytes, rows, CSV) runs interpreted."""
    if not torch.cuda.is_available():
        assert benchmark.run_kernel_benchmark(csv_path=tmp_path / "none.csv") == []
        assert not (tmp_path / "none.csv").exists()
    # The fused forward reads (3n+1)·C and writes (n+1)·C activations per token (MHC_SPEC §5), plus
    # the coefficients.
    n, C, T = 4, 2560, 16
    fwd, _ = benchmark.op_bytes(n, C, T, torch.bfloat16)["mhc_layer"]
    activations = T * (3 * n + 1 + n + 1) * C * 2
    assert activations <= fwd <= activations + T * 200 * 4 + n * C * (2 * n + n * n) * 4
    if DEVICE.type != "cpu":
        return
    torch.manual_seed(6)
    csv_path = tmp_path / "kernels.csv"
    rows = benchmark.run_kernel_benchmark(
        (24,), 2, 20, torch.bfloat16, 1, sinkhorn_iters=2, backends=("triton", "torch"), csv_path=csv_path,
        device=DEVICE,
    )  # fmt: skip
    # bf16 outputs of both backends, rounded differently (the interpreter truncates): up to ~1e-2 apart.
    assert len(rows) == 5 * 2 * 2 and all(r["max_rel_error"] < 2e-2 for r in rows)
    assert len(csv_path.read_text().splitlines()) == 1 + len(rows)
