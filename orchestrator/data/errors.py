"""Errors the data pipeline raises on purpose, under the project's root `LadderError`.

Bad configuration stays `ConfigError` (models.errors); these are failures while obtaining or building data.
"""

from __future__ import annotations

from models.errors import LadderError

__all__ = ["ChecksumMismatchError", "DataError", "MissingClientError"]


class DataError(LadderError):
    """Obtaining, extracting or building a data set failed."""


class MissingClientError(DataError):
    """A registry client (npm, pip) or a tool it needs (setuptools, wheel) is not installed."""


class ChecksumMismatchError(DataError):
    """A downloaded package's sha256 is not the pinned one: the package changed, or the download is bad."""
