"""The fused C++ CPU kernels (``cpp`` backend) against the PyTorch reference, the float64 ground truth.

The kernels are built for real by torch's JIT extension builder (the first test in a fresh environment pays
the ≈ 45 s compile; later ones load the cached library). Shapes are odd on purpose: token counts that are
not multiples of the kernels' 8-token lanes, and large enough (> 128 tokens) that the work splits over
threads. Tolerances: float64 results agree to 1e-12 (different summation order only); float32 to 2e-6
relative to the float64 reference.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.autograd import gradcheck

from kernels import reference
from kernels.cpu_ops import CPP_OPS, mhc_read, post_res_mix, pre_mix, sinkhorn
from kernels.dispatch import TORCH_OPS, get_ops, resolve_backend
from models import build_model
from models.presets import get_preset

STREAMS = [1, 2, 3, 4, 5, 8]


def _rand(*shape, seed, scale=1.0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype).requires_grad_()


def _grads(output, inputs, seed):
    generator = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(output.shape, generator=generator, dtype=torch.float64).to(output.dtype)
    return torch.autograd.grad(output, inputs, cotangent, retain_graph=True)


def _assert_close(actual, expected, rtol, atol):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("n", STREAMS)
@pytest.mark.parametrize(
    ("convention", "iters"), [("paper", 20), ("paper", 1), ("deepseek-v4", 20), ("deepseek-v4", 0)]
)
def test_sinkhorn_matches_reference_in_float64(convention, iters, n):
    logits = _rand(301, n, n, seed=n, scale=3.0)  # logits of a trained model span a few units
    expected = reference.sinkhorn(logits, iters, convention, 1e-6)
    actual = sinkhorn(logits, iters, convention, 1e-6)
    _assert_close([actual], [expected], rtol=1e-12, atol=1e-12)
    _assert_close(_grads(actual, logits, seed=1), _grads(expected, logits, seed=1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("convention", ["paper", "deepseek-v4"])
def test_sinkhorn_float32_stays_close_to_float64(convention):
    logits64 = _rand(203, 4, 4, seed=3, scale=3.0)
    logits32 = logits64.detach().float().requires_grad_()
    expected = reference.sinkhorn(logits64, 20, convention, 1e-6)
    actual = sinkhorn(logits32, 20, convention, 1e-6)
    assert actual.dtype == torch.float32
    _assert_close([actual], [expected], rtol=2e-6, atol=2e-6)
    _assert_close(_grads(actual, logits32, seed=2), _grads(expected, logits64, seed=2), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("n", STREAMS)
def test_mixes_match_reference_in_float64(n):
    tokens, width = 257, 29
    x = _rand(tokens, n, width, seed=10)
    f = _rand(tokens, width, seed=11)
    h_pre, h_post = _rand(tokens, n, seed=12), _rand(tokens, n, seed=13)
    h_res = _rand(tokens, n, n, seed=14)
    for ours, theirs, inputs in [
        (pre_mix, reference.pre_mix, (x, h_pre)),
        (post_res_mix, reference.post_res_mix, (x, f, h_post, h_res)),
    ]:
        actual, expected = ours(*inputs), theirs(*inputs)
        _assert_close([actual], [expected], rtol=1e-12, atol=1e-12)
        _assert_close(_grads(actual, inputs, seed=n), _grads(expected, inputs, seed=n), rtol=1e-10, atol=1e-12)


def _read_inputs(tokens, n, width, seed):
    columns = 2 * n + n * n
    return (
        _rand(tokens, n, width, seed=seed),
        _rand(n * width, columns, seed=seed + 1, scale=0.3),
        _rand(3, seed=seed + 2),
        _rand(columns, seed=seed + 3),
    )


@pytest.mark.parametrize("n", STREAMS)
@pytest.mark.parametrize(("convention", "iters"), [("paper", 20), ("deepseek-v4", 20), ("deepseek-v4", 1)])
def test_fused_read_matches_the_composed_reference_in_float64(convention, iters, n):
    """One kernel for coefficients + Sinkhorn + pre-mix against the reference ops one after another."""
    inputs = _read_inputs(203, n, 21, seed=40)
    pre_eps = 1e-6 if convention == "deepseek-v4" else 0.0
    expected = TORCH_OPS.mhc_read(*inputs, 1e-6, pre_eps, iters, convention)
    actual = mhc_read(*inputs, 1e-6, pre_eps, iters, convention)
    _assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    for seed in range(3):  # each output alone, the others' gradients absent (None), then all together
        pick = [index == seed for index in range(3)]
        subset = [t for t, keep in zip(actual, pick, strict=True) if keep]
        reference_subset = [t for t, keep in zip(expected, pick, strict=True) if keep]
        _assert_close(_grads(subset[0], inputs, seed), _grads(reference_subset[0], inputs, seed), 1e-10, 1e-12)
    total = sum((t * (index + 1)).sum() for index, t in enumerate(actual))
    reference_total = sum((t * (index + 1)).sum() for index, t in enumerate(expected))
    _assert_close(
        torch.autograd.grad(total, inputs), torch.autograd.grad(reference_total, inputs), rtol=1e-10, atol=1e-12
    )


def test_fused_read_passes_finite_difference_gradchecks():
    inputs = _read_inputs(11, 3, 5, seed=50)
    for convention, pre_eps in (("paper", 0.0), ("deepseek-v4", 1e-6)):
        assert gradcheck(lambda *t, c=convention, e=pre_eps: mhc_read(*t, 1e-6, e, 6, c), inputs, eps=1e-6, atol=1e-6)


def test_ops_pass_finite_difference_gradchecks():
    x, f = _rand(11, 3, 5, seed=20), _rand(11, 5, seed=21)
    h_pre, h_post, h_res = _rand(11, 3, seed=22), _rand(11, 3, seed=23), _rand(11, 3, 3, seed=24)
    assert gradcheck(pre_mix, (x, h_pre), eps=1e-6, atol=1e-6)
    assert gradcheck(post_res_mix, (x, f, h_post, h_res), eps=1e-6, atol=1e-6)
    for convention in ("paper", "deepseek-v4"):
        logits = _rand(9, 3, 3, seed=25)
        assert gradcheck(lambda t, c=convention: sinkhorn(t, 7, c, 1e-6), (logits,), eps=1e-6, atol=1e-6)


def test_low_precision_inputs_accumulate_in_fp32_and_keep_their_dtype():
    x = _rand(40, 4, 16, seed=30, dtype=torch.bfloat16)
    f = _rand(40, 16, seed=31, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(32)
    h_post = torch.rand(40, 4, generator=generator)
    h_res = torch.softmax(torch.randn(40, 4, 4, generator=generator), dim=-1)
    actual, expected = post_res_mix(x, f, h_post, h_res), reference.post_res_mix(x, f, h_post, h_res)
    assert actual.dtype == expected.dtype == torch.bfloat16
    # fp32 sums in another order, then one rounding to bf16: at most one bf16 ulp (≤ 2⁻⁷ relative) apart.
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2**-7, atol=1e-6)
    gx, gf = _grads(actual, (x, f), seed=3)
    assert gx.dtype == gf.dtype == torch.bfloat16


def test_model_trains_the_same_on_cpp_and_torch_backends():
    config = get_preset("nano").with_residual(variant="mhc", n=4)
    tokens = torch.randint(0, config.vocab_size, (3, 33), generator=torch.Generator().manual_seed(0))
    losses, grads = {}, {}
    for backend in ("torch", "cpp"):
        model = build_model(config.model_copy(update={"kernel_backend": backend}), seed=0)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        losses[backend] = loss.detach()
        grads[backend] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(losses["cpp"], losses["torch"], rtol=1e-6, atol=1e-6)
    assert grads["cpp"].keys() == grads["torch"].keys()
    for name, grad in grads["torch"].items():
        torch.testing.assert_close(grads["cpp"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torch_compile_traces_the_kernels_in_one_graph():
    """Fake-tensor shapes are registered for every op: dynamo traces a connection without a graph break
    (``fullgraph``) and AOT autograd runs the kernels' own backward."""
    x, phi, alpha, bias = (t.detach().float().requires_grad_() for t in _read_inputs(37, 4, 8, seed=60))
    f = torch.randn(37, 8, generator=torch.Generator().manual_seed(61), requires_grad=True)

    def connection(ops, x, f, phi, alpha, bias):
        u_TC, h_post, h_res = ops.mhc_read(x, phi, alpha, bias, 1e-6, 0.0, 20, "paper")
        return ops.post_res_mix(x, u_TC * f, h_post, h_res).square().sum()

    compiled = torch.compile(lambda *t: connection(CPP_OPS, *t), backend="aot_eager", fullgraph=True)
    inputs = (x, f, phi, alpha, bias)
    actual, expected = compiled(*inputs), connection(TORCH_OPS, *inputs)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for a, e in zip(torch.autograd.grad(actual, inputs), torch.autograd.grad(expected, inputs), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_auto_picks_the_cpp_kernels_on_cpu_and_refuses_other_devices():
    assert resolve_backend("auto", torch.device("cpu")) == "cpp"
    assert get_ops("auto", torch.device("cpu")) is CPP_OPS
    with pytest.raises(ValueError, match="kernel_backend 'cpp' runs on CPU tensors only"):
        get_ops("cpp", torch.device("meta"))


def test_kernels_reject_bad_inputs_with_the_argument_named():
    ops = torch.ops.mhc_cpu
    with pytest.raises(RuntimeError, match="h_res has shape"):
        ops.post_res_mix_fwd(torch.zeros(4, 2, 3), torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 3, 3))
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        ops.pre_mix_fwd(torch.zeros(4, 2, 3, dtype=torch.int32), torch.zeros(4, 2, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"n \(9\) must be from 1 to 8"):
        ops.sinkhorn_fwd(torch.zeros(2, 9, 9), 20, False, 1e-6)


def test_without_a_compiler_auto_falls_back_to_torch_and_cpp_names_the_cause(tmp_path):
    """A real failed build: a fresh extension cache and a C++ compiler that does not exist (CXX)."""
    script = textwrap.dedent(
        """
        import torch
        from kernels.dispatch import get_ops, resolve_backend
        print("auto ->", resolve_backend("auto", torch.device("cpu")))
        try:
            get_ops("cpp", torch.device("cpu"))
        except RuntimeError as error:
            print("cpp ->", str(error).splitlines()[0][:80])
        """
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-c++")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "auto -> torch" in done.stdout
    assert "cpp -> kernel_backend 'cpp' is unavailable: building mhc_cpu.cpp failed" in done.stdout
    assert "could not be built" in done.stderr  # the logged warning behind the fallback
