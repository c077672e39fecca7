"""The train/validation split: deterministic, a partition of the paragraphs, close to the requested share."""

import random

import pytest

from orchestrator.data.cleaning import Document
from orchestrator.data.errors import DataError
from orchestrator.data.split import split_documents


def _corpus(num_documents=40, seed=0):
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return [
        Document(
            f"doc{d}",
            tuple(
                f"{d}.{p} " + " ".join(rng.choices(words, k=rng.randint(5, 80)))
                for p in range(rng.randint(5, 60))
            ),
        )
        for d in range(num_documents)
    ]


def _paragraphs_by_document(segments):
    out = {}
    for segment in segments:
        out.setdefault(segment.document, []).extend(segment.paragraphs)
    return out


def test_split_is_a_partition_that_keeps_paragraph_order():
    documents = _corpus()
    train, validation = split_documents(documents, validation_fraction=0.1, seed=3)
    train_by_doc, validation_by_doc = _paragraphs_by_document(train), _paragraphs_by_document(validation)
    for document in documents:
        mine = set(train_by_doc.get(document.name, [])) | set(validation_by_doc.get(document.name, []))
        assert mine == set(document.paragraphs)
        for by_doc in (train_by_doc, validation_by_doc):
            order = [document.paragraphs.index(p) for p in by_doc.get(document.name, [])]
            assert order == sorted(order)
    assert not set(p for s in train for p in s.paragraphs) & set(p for s in validation for p in s.paragraphs)


def test_validation_share_is_close_to_the_requested_fraction():
    documents = _corpus()
    total = sum(d.num_chars for d in documents)
    for fraction in (0.05, 0.2):
        _, validation = split_documents(documents, validation_fraction=fraction, seed=0)
        share = sum(len(s.text) for s in validation) / total
        assert fraction <= share < fraction + 0.03


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one():
    documents = _corpus()
    first = split_documents(documents, validation_fraction=0.1, seed=1)
    assert split_documents(documents, validation_fraction=0.1, seed=1) == first
    assert split_documents(documents, validation_fraction=0.1, seed=2)[1] != first[1]


def test_split_does_not_depend_on_document_order():
    documents = _corpus()
    _, validation = split_documents(documents, validation_fraction=0.1, seed=0)
    _, reordered = split_documents(documents[::-1], validation_fraction=0.1, seed=0)
    assert {p for s in validation for p in s.paragraphs} == {p for s in reordered for p in s.paragraphs}


def test_a_single_paragraph_cannot_be_split():
    with pytest.raises(DataError, match="cannot split"):
        split_documents([Document("one", ("only paragraph",))], validation_fraction=0.1, seed=0)
