"""Load a YAML config file into the typed model of `schema`.

The loader walks PyYAML's node tree rather than plain Python objects so that
every error can name the key path and the line:column it came from. All
errors in a file are collected and reported together.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from edgeward.config.schema import (
    Config,
    ReplaySourceConfig,
    SyntheticSourceConfig,
)
from edgeward.errors import ConfigError

SOURCE_TYPES: dict[str, type[Any]] = {
    "synthetic": SyntheticSourceConfig,
    "csv": ReplaySourceConfig,
    "jsonl": ReplaySourceConfig,
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class _Builder:
    """Convert YAML nodes to dataclass instances, collecting errors as it goes."""

    def __init__(self, file_name: str, base_dir: Path) -> None:
        self.file_name = file_name
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.locations: dict[str, str] = {}
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        mark = node.start_mark
        self.errors.append(f"{self.file_name}:{mark.line + 1}:{mark.column + 1}: {path}: {message}")

    def record(self, node: yaml.Node, path: str) -> None:
        mark = node.start_mark
        self.locations[path] = f"{mark.line + 1}:{mark.column + 1}"

    def scalar(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def build(self, hint: Any, node: yaml.Node, path: str) -> Any:
        self.record(node, path)
        origin = get_origin(hint)
        args = get_args(hint)

        if hint is Any:
            return self.scalar(node)
        if dataclasses.is_dataclass(hint):
            return self.build_dataclass(hint, node, path)
        if "duration" in getattr(hint, "__metadata__", ()):
            return self.build_duration(node, path)
        if origin is Literal:
            return self.build_literal(args, node, path)
        if origin in (Union, types.UnionType):
            return self.build_union(args, node, path)
        if origin is list:
            return self.build_list(args[0], node, path)
        if origin is dict:
            return self.build_dict(args[1], node, path)
        return self.build_plain(hint, node, path)

    def build_dataclass(self, cls: Any, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path or "(top level)", "expected a mapping of keys to values")
            return cls()

        hints = get_type_hints(cls, include_extras=True)
        fields = {
            f.name for f in dataclasses.fields(cls) if f.name not in ("locations", "source_file")
        }
        values: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            key_path = f"{path}.{key}" if path else str(key)
            if key not in fields:
                hint_text = ""
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                if close:
                    hint_text = f"; did you mean '{close[0]}'?"
                allowed = ", ".join(sorted(fields))
                self.error(key_node, key_path, f"unknown key{hint_text} (allowed keys: {allowed})")
                continue
            if key in values:
                self.error(key_node, key_path, "key appears twice; keep one")
                continue
            values[key] = self.build(hints[key], value_node, key_path)
        return cls(**values)

    def build_duration(self, node: yaml.Node, path: str) -> float:
        value = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            self.error(
                node,
                path,
                f"invalid duration {value!r}; use seconds or a string like '30s', '10m', '2h'",
            )
            return 0.0
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def build_literal(self, choices: tuple[Any, ...], node: yaml.Node, path: str) -> Any:
        value = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if value not in choices and str(value) in choices:
            value = str(value)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            self.error(node, path, f"invalid value {value!r}; expected one of {allowed}")
            return choices[0]
        return value

    def build_union(self, members: tuple[Any, ...], node: yaml.Node, path: str) -> Any:
        if SyntheticSourceConfig in members:
            return self.build_source(node, path)
        if (
            isinstance(node, yaml.ScalarNode)
            and self.scalar(node) is None
            and type(None) in members
        ):
            return None
        candidates = [m for m in members if m is not type(None)]
        wants_list = isinstance(node, yaml.SequenceNode)
        for member in candidates:
            if (get_origin(member) is list) == wants_list:
                if not wants_list and len(candidates) > 1 and member in (int, str):
                    # str | int: keep the YAML type the user wrote.
                    value = self.scalar(node)
                    if type(value) in candidates:
                        return value
                    continue
                return self.build(member, node, path)
        names = " or ".join(getattr(m, "__name__", str(m)) for m in candidates)
        self.error(node, path, f"invalid value; expected {names}")
        return None

    def build_source(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, "expected a mapping with a 'type' key")
            return SyntheticSourceConfig()
        type_name = None
        for key_node, value_node in node.value:
            if self.scalar(key_node) == "type":
                type_name = self.scalar(value_node)
        if type_name not in SOURCE_TYPES:
            allowed = ", ".join(sorted(SOURCE_TYPES))
            self.error(
                node,
                f"{path}.type",
                f"invalid source type {type_name!r}; expected one of {allowed}",
            )
            return SyntheticSourceConfig()
        return self.build_dataclass(SOURCE_TYPES[type_name], node, path)

    def build_list(self, item: Any, node: yaml.Node, path: str) -> list[Any]:
        if item is Path and isinstance(node, yaml.ScalarNode):
            return [self.build(Path, node, path)]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, "expected a list")
            return []
        return [self.build(item, child, f"{path}[{i}]") for i, child in enumerate(node.value)]

    def build_dict(self, item: Any, node: yaml.Node, path: str) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, "expected a mapping")
            return {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(self.scalar(key_node))
            result[key] = self.build(item, value_node, f"{path}.{key}")
        return result

    def build_plain(self, hint: Any, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            expected = _TYPE_NAMES.get(hint, hint.__name__)
            self.error(node, path, f"expected {expected}, found a {_node_kind(node)}")
            return None
        value = self.scalar(node)

        if hint is Path:
            if not isinstance(value, str) or not value:
                self.error(node, path, f"expected a file path, found {value!r}")
                return Path()
            return (self.base_dir / value).resolve() if not value.startswith("/") else Path(value)
        if hint is bool and not isinstance(value, bool):
            self.error(node, path, f"expected true or false, found {value!r}")
            return False
        if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
            self.error(node, path, f"expected an integer, found {value!r}")
            return 0
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.error(node, path, f"expected a number, found {value!r}")
                return 0.0
            return float(value)
        if hint is str and not isinstance(value, str):
            self.error(node, path, f"expected a string, found {value!r}; put it in quotes")
            return str(value)
        return value


_TYPE_NAMES: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    Path: "a file path",
}


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def load_config_text(
    text: str, file_name: str = "<config>", base_dir: Path | None = None
) -> Config:
    """Parse and type-check a YAML config. Raises ConfigError listing every problem found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{file_name}:{mark.line + 1}:{mark.column + 1}" if mark else file_name
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from error

    if root is None:
        raise ConfigError(f"{file_name}: the file is empty; start from the packaged edgeward.yaml")

    builder = _Builder(file_name, base_dir or Path.cwd())
    config: Config = builder.build_dataclass(Config, root, "")
    if builder.errors:
        raise ConfigError("\n".join(builder.errors))
    config.locations = builder.locations
    return config


def load_config(path: Path) -> Config:
    """Read, parse and type-check a config file (no checks that touch other files)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ConfigError(
            f"config file {path} not found; pass an existing file with --config"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} could not be read: {error}") from error
    config = load_config_text(text, str(path), path.parent.resolve())
    config.source_file = path
    return config
