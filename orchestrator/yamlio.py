"""YAML loading that remembers where every key came from, so config errors point at a file and line.

Parsing is `yaml.SafeLoader` (no arbitrary object construction); mappings and sequences are built as `dict`/`list`
subclasses carrying the 1-based line of each key or item. `load_config_file` validates the data into a config
class and rewrites any `ConfigError` so that each problem reads ``file:line: field.path (value) rule``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from models.config import ConfigModel, parse_config
from models.errors import ConfigError

__all__ = ["ConfigFileError", "line_of", "load_config_file", "load_yaml"]


class ConfigFileError(ConfigError):
    """A config file is unreadable, is not YAML, or holds values that break a rule (with file and line)."""


class _LineDict(dict):
    lines: dict[Any, int]


class _LineList(list):
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember the line of each key / item."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _LineDict:
        mapping = _LineDict(super().construct_mapping(node, deep=True))
        mapping.lines = {self.construct_object(key, deep=True): key.start_mark.line + 1 for key, _ in node.value}
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> _LineList:
        sequence = _LineList(super().construct_sequence(node, deep=True))
        sequence.lines = [item.start_mark.line + 1 for item in node.value]
        return sequence


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse ``path`` safely; containers carry line numbers for `line_of`."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read ({error.strerror})") from None
    try:
        loader = _LineLoader(text)  # a SafeLoader: no arbitrary Python objects
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigFileError(f"{where}: not valid YAML ({getattr(error, 'problem', error)})") from None


def line_of(data: Any, loc: tuple[str, ...]) -> int | None:
    """The line of the deepest key along ``loc`` that exists in ``data`` (None if not even the first does)."""
    line = None
    node = data
    for part in loc:
        if isinstance(node, _LineDict) and part in node.lines:
            line, node = node.lines[part], node[part]
        elif isinstance(node, _LineList) and part.isdigit() and int(part) < len(node):
            line, node = node.lines[int(part)], node[int(part)]
        else:
            break
    return line


ConfigT = TypeVar("ConfigT", bound=ConfigModel)


def load_config_file(path: Path, cls: type[ConfigT], root: str) -> ConfigT:
    """Load a YAML file into ``cls``; errors name ``file:line`` and the field path rooted at ``root``."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of {root} fields")
    try:
        return parse_config(cls, data, path=root)
    except ConfigError as error:
        root_loc = tuple(root.split("."))
        lines = []
        for loc, detail in error.problems:
            line = line_of(data, loc[len(root_loc) :])
            lines.append(f"{path}:{line if line is not None else 1}: {'.'.join(loc)} {detail}")
        raise ConfigFileError("\n".join(lines), error.problems) from None
