"""Activation recomputation: every policy gives the no-recompute loss and gradients, and keeps less memory."""

import math

import pytest
import torch

from models import get_preset
from models.measure import held_activation_bytes
from models.memory import mhc_group_size, region_cost
from models.recompute import apply_recompute
from models.transformer import build_model

VARIANTS = [("residual", 1), ("hc", 4), ("mhc", 4), ("mhc-lite", 3)]


def _batch(vocab_size: int, batch: int = 2, seq_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    return tokens, torch.randint(0, vocab_size, (batch, seq_len), generator=generator)


def _held(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> int:
    return held_activation_bytes(lambda: model(tokens, targets))[1]


def _loss_and_grads(variant: str, n: int, policy: str | None, group_size: int | None = None):
    config = get_preset("nano").with_residual(variant=variant, n=n)
    model = build_model(config, seed=0)
    if policy is not None:
        apply_recompute(model, policy, group_size=group_size)
    tokens, targets = _batch(config.vocab_size)
    loss = model(tokens, targets)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return loss.detach(), grads, [layer.expert_load() for layer in model.moe_layers()]


@pytest.mark.parametrize(("variant", "n"), VARIANTS)
@pytest.mark.parametrize(("policy", "group_size"), [("block", None), ("mhc", None), ("mhc", 2)])
def test_recomputation_gives_the_no_recompute_loss_and_gradients(variant, n, policy, group_size):
    ref_loss, ref_grads, ref_loads = _loss_and_grads(variant, n, None)
    loss, grads, loads = _loss_and_grads(variant, n, policy, group_size)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-6)
    tokens = _batch(1)[0].numel()
    for load_E, ref_load_E in zip(loads, ref_loads, strict=True):  # the rerun forward counts nothing
        assert load_E.sum().item() == ref_load_E.sum().item() == tokens * get_preset("nano").moe.top_k
        torch.testing.assert_close(load_E, ref_load_E, atol=0, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(("variant", "n"), [("residual", 1), ("mhc", 4)])
def test_block_and_mhc_recomputation_keep_less_activation_memory_than_none(variant, n):
    """Measured, not estimated: bytes the forward pass leaves allocated for backward (`held_activation_bytes`)."""
    config = get_preset("nano").with_residual(variant=variant, n=n)
    model = build_model(config, seed=0)
    tokens, targets = _batch(config.vocab_size)
    held = {}
    for policy in ("none", "mhc", "block"):
        apply_recompute(model, policy)
        held[policy] = _held(model, tokens, targets)
    # Measured on nano (B = 2, S = 64): residual 944 / 606 / 142 kB, mHC n = 4 1487 / 655 / 191 kB.
    assert held["mhc"] < 0.75 * held["none"]
    assert held["block"] < 0.25 * held["none"]
    assert held["block"] < held["mhc"]


def test_mhc_recomputation_keeps_the_n_stream_state_only_at_region_boundaries():
    """With mHC recomputation the n = 4 model holds about what the plain residual model holds: the extra
    (n − 1)·C per token and sublayer of the stream state is recomputed."""
    held = {}
    for variant, n in (("residual", 1), ("mhc", 4)):
        config = get_preset("nano").with_residual(variant=variant, n=n)
        model = build_model(config, seed=0)
        apply_recompute(model, "mhc", group_size=2)
        tokens, targets = _batch(config.vocab_size)
        held[variant] = _held(model, tokens, targets)
    assert held["mhc"] < 1.1 * held["residual"]


def test_evaluation_without_grad_runs_plainly_and_matches():
    config = get_preset("nano").with_residual(variant="mhc", n=4)
    model = build_model(config, seed=0)
    tokens, _ = _batch(config.vocab_size)
    with torch.no_grad():
        reference = model(tokens)
        apply_recompute(model, "mhc")
        assert torch.equal(model(tokens), reference)


def test_recomputation_leaves_parameter_names_and_state_dict_unchanged():
    model = build_model(get_preset("nano").with_residual(variant="mhc", n=4), seed=0)
    keys = list(model.state_dict())
    apply_recompute(model, "block")
    apply_recompute(model, "mhc")
    assert list(model.state_dict()) == keys


def test_applying_a_policy_again_replaces_the_previous_hooks():
    model = build_model(get_preset("nano"), seed=0)
    apply_recompute(model, "mhc")
    apply_recompute(model, "mhc")
    assert sum(len(block.attn._forward_pre_hooks) for block in model.blocks) == len(model.blocks)
    apply_recompute(model, "none")
    assert sum(len(block.attn._forward_pre_hooks) for block in model.blocks) == 0


def test_unknown_policy_and_oversized_group_are_rejected_naming_the_value():
    model = build_model(get_preset("nano"), seed=0)
    with pytest.raises(ValueError, match=r"recompute \('full'\)"):
        apply_recompute(model, "full")
    with pytest.raises(ValueError, match=r"group_size \(3\) must be in 1\.\.2"):
        apply_recompute(model, "mhc", group_size=3)


@pytest.mark.parametrize(("num_layers", "n", "blocks"), [(30, 4, 3), (18, 4, 2), (12, 4, 2), (2, 4, 1)])
def test_mhc_group_size_is_the_whole_block_optimum_of_the_paper_cost(num_layers, n, blocks):
    """27B (30 blocks = 60 sublayers, n = 4): L_r = 6 sublayers, the spec's integer optimum of Eq. 20."""
    assert mhc_group_size(num_layers, n) == blocks
    assert all(region_cost(num_layers, n, blocks) <= region_cost(num_layers, n, g) for g in range(1, num_layers + 1))
    continuous = math.sqrt(n * 2 * num_layers / (n + 2))  # L_r* ≈ √(nL/(n+2)), L in sublayers
    assert abs(2 * blocks - continuous) <= 2


def _fsdp_worker(rank: int, world_size: int, init_file: str, policy: str, out: str) -> None:
    """One rank: the policy first, then FSDP2 per block and at the root (as the trainer does), half the batch."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        config = get_preset("nano").with_residual(variant="mhc", n=4)
        model = build_model(config, seed=0)
        apply_recompute(model, policy, group_size=2 if policy == "mhc" else None)
        mesh = init_device_mesh("cpu", (world_size,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        tokens, targets = _batch(config.vocab_size, batch=2 * world_size)
        rows = slice(2 * rank, 2 * rank + 2)
        model(tokens[rows], targets[rows]).backward()  # FSDP averages the gradients over the ranks
        grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("policy", ["block", "mhc"])
def test_fsdp2_sharding_after_recomputation_gives_the_one_process_gradients(policy, tmp_path):
    """Two gloo ranks (forked), FSDP2 applied after the policy, vs one unsharded process without recomputation.
    Tolerance: only the fp32 order of the two-rank gradient average differs (≈ 1e-7 relative)."""
    import torch.multiprocessing as mp

    out = tmp_path / "grads.pt"
    mp.start_processes(_fsdp_worker, args=(2, str(tmp_path / "init"), policy, str(out)), nprocs=2, start_method="fork")
    config = get_preset("nano").with_residual(variant="mhc", n=4)
    model = build_model(config, seed=0)
    tokens, targets = _batch(config.vocab_size, batch=4)
    model(tokens, targets).backward()
    sharded = torch.load(out, weights_only=True)
    for name, p in model.named_parameters():
        torch.testing.assert_close(sharded[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
