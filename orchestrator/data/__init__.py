"""Data for training runs: the built-in ``pd-literary`` corpus, the user's text or token arrays, a byte-level
BPE, on-disk caching, and deterministic batches.

    config = DataConfig(source="pd-literary", vocab_size=8192)
    dataset = load_dataset(config)              # first call builds and caches; later calls map the cache
    sampler = BatchSampler(dataset, seed=0)
    inputs_BS, targets_BS = sampler.train_batch(step, batch_size=16, seq_len=128)
"""

from orchestrator.data.cleaning import CLEANING_VERSION
from orchestrator.data.config import BuiltinSource, DataConfig, TextSource, TokenSource
from orchestrator.data.corpus import BUILTIN_CORPORA, PD_LITERARY, CorpusRecipe, CorpusSource
from orchestrator.data.dataset import DatasetMetadata, TokenDataset, dataset_key, load_dataset
from orchestrator.data.errors import ChecksumMismatchError, DataError, MissingClientError
from orchestrator.data.fetch import PinnedPackage
from orchestrator.data.text import TextCorpus, prepare_text_corpus


def __getattr__(name: str) -> object:
    """`BatchSampler` needs torch: it loads on first use, so configs and the ledger stay fast to import."""
    if name == "BatchSampler":
        from orchestrator.data.batches import BatchSampler

        return BatchSampler
    raise AttributeError(f"module 'orchestrator.data' has no attribute {name!r}")

__all__ = [
    "BUILTIN_CORPORA",
    "CLEANING_VERSION",
    "PD_LITERARY",
    "BatchSampler",
    "BuiltinSource",
    "ChecksumMismatchError",
    "CorpusRecipe",
    "CorpusSource",
    "DataConfig",
    "DataError",
    "DatasetMetadata",
    "MissingClientError",
    "PinnedPackage",
    "TextCorpus",
    "TextSource",
    "TokenDataset",
    "TokenSource",
    "dataset_key",
    "load_dataset",
    "prepare_text_corpus",
]
