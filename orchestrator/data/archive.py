"""Read text members out of a tar or zip archive without writing anything to disk.

Extraction never creates files from member names, so a crafted name cannot write outside the cache. Names are
still checked: an archive holding an absolute path or a ``..`` component is refused outright, as it is not
what a pinned package looks like. Links and other special members are skipped, never followed.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from orchestrator.data.errors import DataError

__all__ = ["read_members"]


def read_members(
    archive: Path, include: Sequence[str], exclude: Sequence[str] = ()
) -> list[tuple[str, bytes]]:
    """(path, bytes) of the regular-file members matching an ``include`` pattern and no ``exclude`` pattern.

    Patterns follow `PurePosixPath.match` (``*`` stays within one path component); results are sorted by
    path so the order never depends on how the archive was packed.
    """
    if tarfile.is_tarfile(archive):
        members = _tar_members(archive)
    elif zipfile.is_zipfile(archive):
        members = _zip_members(archive)
    else:
        raise DataError(f"{archive} is neither a tar nor a zip archive")
    selected = [
        (name, data)
        for name, data in members
        if any(PurePosixPath(name).match(p) for p in include)
        and not any(PurePosixPath(name).match(p) for p in exclude)
    ]
    return sorted(selected)


def _checked_name(archive: Path, name: str) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DataError(
            f"{archive} holds an unsafe member path {name!r} (absolute or '..'); refusing to read it"
        )
    return str(path)


def _tar_members(archive: Path) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(archive, mode="r:*") as tar:
        for info in tar.getmembers():
            name = _checked_name(archive, info.name)
            if not info.isreg():
                continue
            handle = tar.extractfile(info)
            assert handle is not None  # a regular member always has a file object
            out.append((name, handle.read()))
    return out


def _zip_members(archive: Path) -> list[tuple[str, bytes]]:
    out = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = _checked_name(archive, info.filename)
            if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                continue
            out.append((name, zf.read(info)))
    return out
