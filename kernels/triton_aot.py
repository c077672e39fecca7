"""Ahead-of-time build of every mHC kernel for a GPU target, on a machine without a GPU.

The Triton interpreter (CPU tests) accepts programs the GPU compiler rejects (a `tl.dot` tile under 16,
branches that yield different types, ...), and says nothing about registers. This module runs the real
compiler pipeline (TTIR → TTGIR → LLVM → PTX → cubin, with the ptxas that ships in the triton wheel) for
``sm_90`` at the launch parameters `kernels.triton_launch.launch_config` picks for a 16k-token, C = 2560
sublayer, mimicking the JIT's specialisation (16-byte-aligned pointers, integers divisible by 16, integers
equal to 1 folded), and reports registers and spill bytes per kernel from the cubin.

    python -m kernels.triton_aot --n 1 2 3 4 8      # table of registers / spills; exit 1 if a build fails

`TRITON_INTERPRET` must be unset (the kernels must be built as `JITFunction`s); the parity tests run this in a
subprocess. Building needs no GPU and no driver.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import triton

from kernels import triton_coefficients, triton_mix, triton_sinkhorn
from kernels.triton_launch import dot_precision, kernels_interpreted, launch_config

__all__ = ["KernelBuild", "build_all"]


@dataclass(frozen=True, slots=True)
class KernelBuild:
    """One kernel built for one configuration."""

    name: str
    num_warps: int
    registers: int
    spill_bytes: int


def _build(
    fn, name: str, num_warps: int, num_stages: int, constexprs: dict, args: dict, arch: int
) -> KernelBuild:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for index, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        value = args[arg]
        if isinstance(value, str):  # a pointer type such as "*bf16"
            signature[arg], attrs[(index,)] = value, [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[arg] = "fp32"
        elif value == 1:  # the JIT folds integer arguments equal to 1 into constants
            signature[arg], constexprs[arg] = "constexpr", 1
        else:
            signature[arg] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs, attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", cubin.name], capture_output=True, text=True, check=True
        ).stdout
    registers = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return KernelBuild(
        name, num_warps, int(registers.group(1)) if registers else -1, int(stack.group(1)) if stack else -1
    )


def _jobs(n: int, width: int, tokens: int) -> Iterator[tuple]:
    """(kernel, name, launch config, constexprs, example arguments) for every kernel at one n."""
    T, C, K, M = tokens, width, n * width, 2 * n + n * n
    np_ = triton.next_power_of_2(n)
    for dtype, ptr in (("bf16", "*bf16"), ("fp32", "*fp32")):
        precision = dot_precision(
            {"bf16": __import__("torch").bfloat16, "fp32": __import__("torch").float32}[dtype]
        )
        cfg = launch_config("coefficients_fwd", num_tokens=T, n=n, width=K, num_cols=M)
        yield (
            triton_coefficients._fwd_kernel, f"coefficients_fwd[{dtype}]", cfg,
            {"N": n, "BLOCK_T": cfg.block_t, "BLOCK_K": cfg.block_k, "BLOCK_M": cfg.block_m,
             "DOT_PRECISION": precision},
            {"x_ptr": ptr, "phi_ptr": "*fp32", "alpha_ptr": "*fp32", "bias_ptr": "*fp32", "pre_ptr": "*fp32",
             "post_ptr": "*fp32", "res_ptr": "*fp32", "mixes_ptr": "*fp32", "inv_rms_ptr": "*fp32",
             "num_tokens": T, "K": K, "M": M, "stride_xt": K, "stride_pk": M, "stride_pm": 1, "eps": 1e-6,
             "pre_eps": 1e-6},
        )  # fmt: skip
        cfg = launch_config("coefficients_bwd", num_tokens=T, n=n, width=K, num_cols=M)
        yield (
            triton_coefficients._bwd_kernel, f"coefficients_bwd[{dtype}]", cfg,
            {"BLOCK_T": cfg.block_t, "BLOCK_K": cfg.block_k, "BLOCK_M": cfg.block_m,
             "DOT_PRECISION": precision},
            {"x_ptr": ptr, "phi_ptr": "*fp32", "g_mixes_ptr": "*fp32", "g_sumsq_ptr": "*fp32", "g_x_ptr": ptr,
             "part_phi_ptr": "*fp32", "num_tokens": T, "K": K, "M": M, "tokens_per_split": T // 2,
             "stride_xt": K, "stride_pk": M, "stride_pm": 1},
        )  # fmt: skip
    cfg = launch_config("coefficients_prep", num_tokens=T, n=n, width=K, num_cols=M)
    yield (
        triton_coefficients._bwd_prep_kernel, "coefficients_bwd_prep", cfg,
        {"N": n, "BLOCK_T": cfg.block_t, "BLOCK_M": cfg.block_m},
        {**dict.fromkeys(("mixes_ptr", "inv_rms_ptr", "alpha_ptr", "bias_ptr", "g_pre_ptr", "g_post_ptr",
                          "g_res_ptr", "g_mixes_ptr", "g_sumsq_ptr", "part_bias_ptr", "part_gate_ptr"),
                         "*fp32"),
         "num_tokens": T, "K": K, "M": M},
    )  # fmt: skip
    strides = {"num_tokens": T, "C": C, "stride_xt": n * C, "stride_xn": C}
    coef_strides = {
        "stride_ft": C,
        "stride_pt": n,
        "stride_pn": 1,
        "stride_rt": n * n,
        "stride_ri": n,
        "stride_rj": 1,
    }
    for mode in ("fwd", "bwd"):
        cfg = launch_config(f"mix_{mode}", num_tokens=T, n=n, width=C)
        consts = {"N": n, "NP": np_, "BLOCK_T": cfg.block_t, "BLOCK_C": cfg.block_c}
        pre_args = {"x_ptr": "*bf16", "h_ptr": "*fp32", "stride_ht": n, "stride_hn": 1, **strides}
        post_args = {"x_ptr": "*bf16", "f_ptr": "*bf16", "h_post_ptr": "*fp32", "h_res_ptr": "*fp32",
                     **strides, **coef_strides}  # fmt: skip
        if mode == "fwd":
            yield triton_mix._pre_mix_fwd_kernel, "pre_mix_fwd", cfg, consts, {**pre_args, "u_ptr": "*bf16"}
            yield (
                triton_mix._post_res_mix_fwd_kernel,
                "post_res_mix_fwd",
                cfg,
                consts,
                {**post_args, "out_ptr": "*bf16"},
            )
        else:
            grads = {"g_u_ptr": "*bf16", "g_x_ptr": "*bf16", "g_h_ptr": "*fp32"}
            yield triton_mix._pre_mix_bwd_kernel, "pre_mix_bwd", cfg, consts, {**pre_args, **grads}
            grads = {"g_out_ptr": "*bf16", "g_x_ptr": "*bf16", "g_f_ptr": "*bf16", "g_post_ptr": "*fp32",
                     "g_res_ptr": "*fp32"}  # fmt: skip
            yield triton_mix._post_res_mix_bwd_kernel, "post_res_mix_bwd", cfg, consts, {**post_args, **grads}
    for deepseek in (False, True):
        convention = "deepseek-v4" if deepseek else "paper"
        ij = (1, n) if deepseek else (n, 1)
        common = {"num_tokens": T, "stride_t": n * n, "stride_i": ij[0], "stride_j": ij[1], "num_steps": 40,
                  "eps": 1e-6}  # fmt: skip
        cfg = launch_config("sinkhorn_fwd", num_tokens=T, n=n)
        consts = {"N": n, "NP": np_, "BLOCK_T": cfg.block_t, "DEEPSEEK": deepseek}
        yield (
            triton_sinkhorn._fwd_kernel, f"sinkhorn_fwd[{convention}]", cfg, consts,
            {"logits_ptr": "*fp32", "out_ptr": "*fp32", **common},
        )  # fmt: skip
        cfg = launch_config("sinkhorn_bwd", num_tokens=T, n=n)
        consts = {"N": n, "NP": np_, "BLOCK_T": cfg.block_t, "DEEPSEEK": deepseek}
        yield (
            triton_sinkhorn._bwd_kernel, f"sinkhorn_bwd[{convention}]", cfg, consts,
            {"logits_ptr": "*fp32", "g_out_ptr": "*fp32", "g_logits_ptr": "*fp32", "g_stride_i": ij[0],
             "g_stride_j": ij[1], "seg_len": 7, **common},
        )  # fmt: skip


def build_all(
    ns: tuple[int, ...] = (1, 2, 3, 4, 8), arch: int = 90, width: int = 2560, tokens: int = 16384
) -> list[tuple[int, KernelBuild]]:
    """Build every kernel for each n; raises the compiler's error on the first kernel that fails."""
    if kernels_interpreted():
        raise RuntimeError(
            "unset TRITON_INTERPRET: the kernels were built for the interpreter, not for a GPU"
        )
    builds = []
    for n in ns:
        for fn, name, cfg, consts, args in _jobs(n, width, tokens):
            builds.append((n, _build(fn, name, cfg.num_warps, cfg.num_stages, consts, args, arch)))
    return builds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability × 10 (90 = H100/H200)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET to build for a GPU", file=sys.stderr)
        return 2
    print(f"{'n':>2} {'kernel':<30} {'warps':>5} {'regs':>5} {'spill B':>8}")
    for n, build in build_all(tuple(args.n), args.arch):
        print(f"{n:>2} {build.name:<30} {build.num_warps:>5} {build.registers:>5} {build.spill_bytes:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
