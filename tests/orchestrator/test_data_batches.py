"""Batches: a pure function of (seed, step), contiguous windows, shifted targets, fixed validation windows."""

import time

import numpy as np
import pytest
import torch

from orchestrator.data import BatchSampler, DataConfig, DataError, load_dataset


@pytest.fixture
def ramp_dataset(tmp_path):
    """Token ids 0, 1, 2, ...: a window is contiguous exactly when its ids step by one."""
    np.save(tmp_path / "train.npy", np.arange(50_000, dtype=np.uint32))
    np.save(tmp_path / "validation.npy", np.arange(1_000_000, 1_005_000, dtype=np.uint32))
    source = {
        "train": str(tmp_path / "train.npy"),
        "validation": str(tmp_path / "validation.npy"),
        "dtype": "uint32",
    }
    return load_dataset(DataConfig(source=source, vocab_size=1_005_000))


def test_same_seed_and_step_give_the_same_batch_whatever_came_before(ramp_dataset):
    first = BatchSampler(ramp_dataset, seed=7)
    for step in range(5):
        first.train_batch(step, 8, 32)
    late = first.train_batch(5, 8, 32)
    fresh = BatchSampler(ramp_dataset, seed=7).train_batch(5, 8, 32)  # a resumed run: no history at all
    assert torch.equal(late[0], fresh[0]) and torch.equal(late[1], fresh[1])


def test_different_steps_and_seeds_give_different_batches(ramp_dataset):
    sampler = BatchSampler(ramp_dataset, seed=0)
    batches = [sampler.train_batch(step, 8, 32)[0] for step in range(20)]
    assert all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1 :])
    assert not torch.equal(batches[0], BatchSampler(ramp_dataset, seed=1).train_batch(0, 8, 32)[0])


def test_windows_are_contiguous_and_targets_are_inputs_shifted_by_one(ramp_dataset):
    sampler = BatchSampler(ramp_dataset, seed=3)
    starts = sampler.train_starts(11, 16, 64)
    inputs, targets = sampler.train_batch(11, 16, 64)
    assert inputs.shape == targets.shape == (16, 64)
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.is_contiguous() and targets.is_contiguous()
    np.testing.assert_array_equal(inputs[:, 0].numpy(), starts)
    assert torch.all(inputs[:, 1:] - inputs[:, :-1] == 1)
    assert torch.equal(targets, inputs + 1)


def test_windows_cover_the_whole_train_array_and_stay_inside_it(ramp_dataset):
    sampler = BatchSampler(ramp_dataset, seed=0)
    starts = np.concatenate([sampler.train_starts(step, 16, 128) for step in range(200)])
    assert starts.min() >= 0 and starts.max() + 128 < ramp_dataset.num_train_tokens
    assert starts.min() < 1_000 and starts.max() > ramp_dataset.num_train_tokens - 1_000


def test_validation_windows_are_fixed_evenly_spaced_and_span_the_split(ramp_dataset):
    sampler = BatchSampler(ramp_dataset, seed=0)
    batches = sampler.validation_batches(num_windows=10, seq_len=100, batch_size=4)
    assert [inputs.shape[0] for inputs, _ in batches] == [4, 4, 2]
    again = BatchSampler(ramp_dataset, seed=99).validation_batches(num_windows=10, seq_len=100, batch_size=4)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True)
    )
    firsts = torch.cat([inputs[:, 0] for inputs, _ in batches]) - 1_000_000
    assert firsts[0] == 0 and firsts[-1] == ramp_dataset.num_validation_tokens - 101
    gaps = torch.diff(firsts)
    assert int(gaps.max() - gaps.min()) <= 1
    assert all(torch.equal(targets, inputs + 1) for inputs, targets in batches)


def test_epochs_are_tokens_seen_over_train_tokens(ramp_dataset):
    sampler = BatchSampler(ramp_dataset, seed=0)
    assert sampler.epochs(125_000) == pytest.approx(2.5)


def test_a_window_longer_than_the_split_is_an_error(ramp_dataset):
    with pytest.raises(DataError, match="fewer than one window"):
        BatchSampler(ramp_dataset, seed=0).validation_batches(1, 5_000, 1)


def test_pd_literary_windows_are_slices_of_the_train_array(pd_literary_dataset):
    sampler = BatchSampler(pd_literary_dataset, seed=0)
    starts = sampler.train_starts(3, 16, 128)
    inputs, targets = sampler.train_batch(3, 16, 128)
    train = np.asarray(pd_literary_dataset.train)
    for row, start in enumerate(starts):
        np.testing.assert_array_equal(inputs[row].numpy(), train[start : start + 128])
        np.testing.assert_array_equal(targets[row].numpy(), train[start + 1 : start + 129])


def test_sampling_a_16x128_batch_takes_well_under_a_millisecond(pd_literary_dataset):
    sampler = BatchSampler(pd_literary_dataset, seed=0)
    for step in range(20):  # warm the page cache and allocator
        sampler.train_batch(step, 16, 128)
    durations = []
    for step in range(300):
        started = time.perf_counter()
        sampler.train_batch(step, 16, 128)
        durations.append(time.perf_counter() - started)
    assert np.median(durations) < 1e-3
