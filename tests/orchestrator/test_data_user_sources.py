"""The user's own data: text files (built, tokenized and cached like the built-in corpus) and token arrays."""

import json
import pickle
import random
import shutil

import numpy as np
import pytest

from models.errors import ConfigError
from orchestrator.data import DataConfig, dataset_key, load_dataset
from orchestrator.data.tokenizer import unigram_entropy

WORDS = (
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "was",
    "he",
    "that",
    "it",
    "his",
    "her",
    "with",
    "as",
    "had",
    "for",
)
NAMES = ("Elinor", "Marianne", "Willoughby", "Brandon", "Edward", "Lucy", "Barton", "Norland", "Delaford")


def _write_corpus(root, num_files=4, seed=0):
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for index in range(num_files):
        paragraphs = []
        for _ in range(60):
            words = [rng.choice(NAMES if rng.random() < 0.1 else WORDS) for _ in range(rng.randint(8, 60))]
            paragraphs.append(" ".join(words).capitalize() + ".")
        (root / f"book{index}.txt").write_text("\n\n".join(paragraphs) + "\n")
    return sorted(root.iterdir())


def _text_config(tmp_path, **overrides):
    fields = {"source": [str(tmp_path / "corpus")], "vocab_size": 320, "cache_dir": str(tmp_path / "cache")}
    return DataConfig(**{**fields, **overrides})


def _snapshot(directory):
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*"))}


def _segments(text_dir, split):
    with open(text_dir / f"{split}.jsonl") as handle:
        return ["\n\n".join(json.loads(line)["paragraphs"]) for line in handle]


def test_text_files_become_tokens_that_decode_back_to_the_cleaned_text(tmp_path):
    _write_corpus(tmp_path / "corpus")
    dataset = load_dataset(_text_config(tmp_path))
    assert not dataset.from_cache
    assert dataset.metadata.source == "text"
    assert dataset.train.dtype == np.uint16 and dataset.vocab_size == 320
    assert int(dataset.train.max()) < 320
    (text_dir,) = (tmp_path / "cache" / "text").iterdir()
    tokenizer = dataset.tokenizer()
    eot = dataset.metadata.eot_token_id
    for split, tokens in (("train", dataset.train), ("validation", dataset.validation)):
        assert tokens[-1] == eot
        pieces = np.split(np.asarray(tokens), np.flatnonzero(tokens == eot) + 1)[:-1]
        decoded = [tokenizer.decode(piece[:-1].tolist(), skip_special_tokens=False) for piece in pieces]
        assert decoded == _segments(text_dir, split)
    assert dataset.metadata.unigram_entropy_nats == pytest.approx(unigram_entropy(dataset.validation))


def test_second_load_hits_the_cache_and_a_new_vocabulary_reuses_the_cleaned_text(tmp_path):
    _write_corpus(tmp_path / "corpus")
    first = load_dataset(_text_config(tmp_path))
    before = _snapshot(tmp_path / "cache")
    second = load_dataset(_text_config(tmp_path))
    assert second.from_cache
    assert _snapshot(tmp_path / "cache") == before  # nothing rewritten, nothing added
    np.testing.assert_array_equal(second.train, first.train)
    bigger = load_dataset(_text_config(tmp_path, vocab_size=400))
    assert not bigger.from_cache
    assert len(list((tmp_path / "cache" / "text").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 2


def test_a_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path):
    _write_corpus(tmp_path / "corpus")
    first = load_dataset(_text_config(tmp_path))
    expected = np.array(first.train)
    (first.directory / "train.npy").write_bytes((first.directory / "train.npy").read_bytes()[:200])
    (text_dir,) = (tmp_path / "cache" / "text").iterdir()
    with open(text_dir / "train.jsonl", "a") as handle:
        handle.write('{"document": "intruder", "paragraphs": ["not from the corpus"]}\n')
    again = load_dataset(_text_config(tmp_path))
    assert not again.from_cache
    np.testing.assert_array_equal(again.train, expected)
    assert "intruder" not in (text_dir / "train.jsonl").read_text()


def test_editing_a_file_changes_the_key_and_rebuilds(tmp_path):
    files = _write_corpus(tmp_path / "corpus")
    config = _text_config(tmp_path)
    key = dataset_key(config)
    load_dataset(config)
    files[0].write_text(files[0].read_text() + "\n\nA brand new closing paragraph about Norland.\n")
    assert dataset_key(config) != key
    assert not load_dataset(config).from_cache


def test_key_follows_file_content_not_file_location(tmp_path):
    _write_corpus(tmp_path / "corpus")
    shutil.copytree(tmp_path / "corpus", tmp_path / "moved")
    moved = _text_config(tmp_path, source=[str(tmp_path / "moved")], cache_dir=str(tmp_path / "elsewhere"))
    assert dataset_key(moved) == dataset_key(_text_config(tmp_path))


def test_a_user_tokenizer_file_is_used_as_given(tmp_path):
    _write_corpus(tmp_path / "corpus")
    trained = load_dataset(_text_config(tmp_path))
    tokenizer_file = tmp_path / "my-tokenizer.json"
    shutil.copy(trained.directory / "tokenizer.json", tokenizer_file)
    given = load_dataset(_text_config(tmp_path, tokenizer_file=str(tokenizer_file), vocab_size=512))
    assert given.metadata.tokenizer["kind"] == "file"
    assert given.vocab_size == 512
    np.testing.assert_array_equal(given.train, trained.train)
    np.testing.assert_array_equal(given.validation, trained.validation)


def test_a_tokenizer_file_larger_than_the_vocabulary_names_the_fields_and_caches_nothing(tmp_path):
    _write_corpus(tmp_path / "corpus")
    trained = load_dataset(_text_config(tmp_path))
    tokenizer_file = tmp_path / "my-tokenizer.json"
    shutil.copy(trained.directory / "tokenizer.json", tokenizer_file)
    config = _text_config(tmp_path, tokenizer_file=str(tokenizer_file), vocab_size=300)
    with pytest.raises(
        ConfigError, match=r"data\.vocab_size \(300\) must be >= the vocabulary size of data\.tokenizer_file"
    ):
        load_dataset(config)
    assert not (tmp_path / "cache" / "tokens" / dataset_key(config)).exists()
    assert [p.name for p in (tmp_path / "cache" / "tokens").iterdir()] == [trained.directory.name]


def _token_source(tmp_path, dtype="uint16", high=1000, size=5000):
    rng = np.random.default_rng(0)
    train = rng.integers(0, high, size, dtype=dtype)
    validation = rng.integers(0, high, size // 10, dtype=dtype)
    np.save(tmp_path / "train.npy", train)
    validation.tofile(tmp_path / "validation.bin")
    source = {
        "train": str(tmp_path / "train.npy"),
        "validation": str(tmp_path / "validation.bin"),
        "dtype": dtype,
    }
    return source, train, validation


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_pretokenized_npy_and_raw_arrays_are_mapped_in_place(tmp_path, dtype):
    source, train, validation = _token_source(tmp_path, dtype)
    dataset = load_dataset(DataConfig(source=source, vocab_size=1000, cache_dir=str(tmp_path / "cache")))
    assert isinstance(dataset.train, np.memmap) and isinstance(dataset.validation, np.memmap)
    assert str(dataset.train.filename) == str(tmp_path / "train.npy")
    assert str(dataset.validation.filename) == str(tmp_path / "validation.bin")
    np.testing.assert_array_equal(dataset.train, train)
    np.testing.assert_array_equal(dataset.validation, validation)
    assert dataset.train.dtype == dataset.validation.dtype == np.dtype(dtype)
    assert (dataset.num_train_tokens, dataset.num_validation_tokens) == (5000, 500)
    assert dataset.directory is None and dataset.metadata.source == "tokens"
    assert dataset.metadata.unigram_entropy_nats == pytest.approx(unigram_entropy(validation))
    assert not (tmp_path / "cache").exists()  # pre-tokenized arrays are not copied


def test_token_ids_beyond_the_vocabulary_name_the_field(tmp_path):
    source, train, _ = _token_source(tmp_path)
    expected = (
        rf"data\.vocab_size \(500\) must be > every token id, but data\.source\.train .* id {train.max()}"
    )
    with pytest.raises(ConfigError, match=expected):
        load_dataset(DataConfig(source=source, vocab_size=500))


def test_a_pickled_dataset_reopens_its_memory_maps_instead_of_copying(tmp_path):
    source, train, _ = _token_source(tmp_path, size=200_000)
    dataset = load_dataset(DataConfig(source=source, vocab_size=1000))
    payload = pickle.dumps(dataset)
    assert len(payload) < 10_000 < train.nbytes
    restored = pickle.loads(payload)
    assert isinstance(restored.train, np.memmap)
    np.testing.assert_array_equal(restored.train, train)
    assert restored.metadata == dataset.metadata
