"""DataConfig accepts the three source forms and rejects bad input with the field, value and rule named."""

import numpy as np
import pytest

from models.errors import ConfigError
from orchestrator.data import BuiltinSource, DataConfig, TextSource, TokenSource
from orchestrator.data.config import DEFAULT_VOCAB_SIZE


def test_defaults_are_the_builtin_corpus_with_an_8k_vocabulary():
    config = DataConfig()
    assert config.source == BuiltinSource(name="pd-literary")
    assert config.vocab_size == DEFAULT_VOCAB_SIZE == 8192
    assert config.cache_dir == "./.ladder-cache"
    assert config.tokenizer_file is None


def test_short_forms_parse_to_typed_sources_and_dumps_parse_back(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    np.save(tmp_path / "train.npy", np.arange(10, dtype=np.uint16))
    np.save(tmp_path / "val.npy", np.arange(10, dtype=np.uint16))
    configs = [
        DataConfig(source="pd-literary"),
        DataConfig(source=[str(tmp_path / "*.txt")]),
        DataConfig(
            source={
                "train": str(tmp_path / "train.npy"),
                "validation": str(tmp_path / "val.npy"),
                "dtype": "uint16",
            }
        ),
    ]
    assert [type(c.source) for c in configs] == [BuiltinSource, TextSource, TokenSource]
    for config in configs:
        assert DataConfig(**config.model_dump()) == config


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (["missing.txt"], r"data\.source\.paths\.0 \(missing\.txt\) does not exist"),
        (["{tmp}/a.txt", "{tmp}/*.md"], r"data\.source\.paths\.1 \(.*/\*\.md\) matches no file"),
        (
            ["{tmp}/empty_dir"],
            r"data\.source\.paths\.0 \(.*empty_dir\) is a directory holding no \.txt or \.md",
        ),
        ({"paths": []}, r"data\.source\.text\.paths \(\[\]\): .*at least 1 item"),
        (
            "tiny-shakespeare",
            r"data\.source\.builtin\.name \('tiny-shakespeare'\): Input should be 'pd-literary'",
        ),
        (
            {"kind": "hub"},
            r"data\.source \(\{'kind': 'hub'\}\): must be a built-in corpus name \(pd-literary\), a list",
        ),
        (3, r"data\.source \(3\): must be a built-in corpus name"),
    ],
)
def test_bad_text_sources_name_the_field(tmp_path, source, expected):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "data.bin").write_bytes(b"\0")
    if isinstance(source, list):
        source = [s.format(tmp=tmp_path) for s in source]
    with pytest.raises(ConfigError, match=expected):
        DataConfig(source=source)


def _token_files(tmp_path, train_dtype="uint16", validation_bytes=None):
    np.save(tmp_path / "train.npy", np.arange(100, dtype=train_dtype))
    (tmp_path / "val.bin").write_bytes(validation_bytes if validation_bytes is not None else bytes(20))
    return {"train": str(tmp_path / "train.npy"), "validation": str(tmp_path / "val.bin")}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"train_dtype": "uint32"},
            r"data\.source\.train \(.*train\.npy\) holds uint32 ids, but data\.source\.dtype is uint16",
        ),
        (
            {"validation_bytes": bytes(21)},
            r"data\.source\.validation \(.*val\.bin\) has 21 bytes, not a whole number of uint16",
        ),
        ({"validation_bytes": bytes(2)}, r"data\.source\.validation \(.*\) holds 1 token\(s\)"),
    ],
)
def test_bad_token_arrays_name_the_field(tmp_path, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        DataConfig(source={**_token_files(tmp_path, **overrides), "dtype": "uint16"})


def test_missing_token_file_names_the_field(tmp_path):
    paths = _token_files(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.source\.train \(.*nope\.npy\) is not an existing file"):
        DataConfig(source={**paths, "train": str(tmp_path / "nope.npy"), "dtype": "uint16"})


def test_token_dtype_must_be_unsigned_16_or_32_bit(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data\.source\.tokens\.dtype \('int8'\): Input should be 'uint16' or 'uint32'"
    ):
        DataConfig(source={**_token_files(tmp_path), "dtype": "int8"})


def test_vocabulary_too_large_for_uint16_ids_is_rejected(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data\.vocab_size \(70000\) must be <= 65536 for data\.source\.dtype uint16"
    ):
        DataConfig(source={**_token_files(tmp_path), "dtype": "uint16"}, vocab_size=70000)


def test_tokenizer_file_with_token_arrays_is_rejected(tmp_path):
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"data\.tokenizer_file .* must be unset for pre-tokenized arrays"):
        DataConfig(
            source={**_token_files(tmp_path), "dtype": "uint16"}, tokenizer_file=str(tmp_path / "tok.json")
        )


def test_missing_tokenizer_file_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.tokenizer_file \(.*none\.json\) is not an existing file"):
        DataConfig(tokenizer_file=str(tmp_path / "none.json"))


def test_a_trained_bpe_needs_room_for_the_byte_alphabet():
    with pytest.raises(
        ConfigError, match=r"data\.vocab_size \(256\) must be >= 257 to train a byte-level BPE"
    ):
        DataConfig(vocab_size=256)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("validation_fraction", 0.0, r"data\.validation_fraction \(0\.0\): Input should be greater than 0"),
        ("validation_fraction", 1.0, r"data\.validation_fraction \(1\.0\): Input should be less than 1"),
        ("split_seed", -1, r"data\.split_seed \(-1\)"),
        ("vocab", 10, r"data\.vocab is not a known field"),
    ],
)
def test_bad_scalar_fields_name_the_field(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        DataConfig(**{field: value})


def test_a_file_listed_twice_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    config = DataConfig(source=[str(tmp_path / "b.txt"), str(tmp_path), str(tmp_path / "*.txt")])
    assert [p.name for p in config.source.files()] == ["b.txt", "a.txt"]
