"""Typed YAML loading: a mapping becomes a dataclass, every value checked against the field's type, every error
naming the field's path (``stage2.lr``). The config sections themselves live beside this module, by concern."""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value is missing or inconsistent; the message names the field."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def deep_merge(base: dict[str, Any], override: dict[str, Any], path: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {where.removeprefix('model.')!r}; known keys here: {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            merged[key] = deep_merge(base[key], value, path=f"{where}.")
        else:
            merged[key] = value
    return merged


MAX_CONFIG_BYTES = 1 << 20  # a config is settings, not data: far below this, and never minutes to parse
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict = 3, 6, 6, 6
_SHOWN.maxstring = _SHOWN.maxother = 80


def shown(value: Any) -> str:
    """``repr(value)``, cut short: an error message never prints a huge value (nor walks one)."""
    return _SHOWN.repr(value)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (DVC rejects such a file; PyYAML keeps the last)
    and any alias (``*name``): an alias shares a value, so a few KB of them can stand for billions of items."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in lines:
                raise ConfigError(f"{key_node.start_mark.name}: key {shown(key)} is written twice in one "
                                  f"section (lines {lines[key]} and {line}): keep one")
            if isinstance(key, typing.Hashable):
                lines[key] = line
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"{mark.name} line {mark.line + 1}: YAML aliases (*name) are not accepted in a "
                              "config; write the value out")
        return super().compose_node(parent, index)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size:,} bytes, more than a config may be ({MAX_CONFIG_BYTES:,}): data "
                          "belongs in files the config names, not in the config")
    try:
        with path.open(encoding="utf-8") as stream:  # marks then name the file
            data = yaml.load(stream, Loader=_StrictLoader) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_mapping(cls: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from a (YAML) mapping on top of ``base`` (an instance; default: the field
    defaults). A dataclass-typed field's mapping overrides that field's own default (``stage2`` starts from
    the stage-2 recipe, ``model`` from its preset), so a partial section keeps the rest of its recipe.
    Unknown keys, values of the wrong type and non-finite numbers fail with the field's path."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {shown(sorted(unknown))}; known: {sorted(names)}")
    hints = get_type_hints(cls)
    kwargs = {f.name: copy.deepcopy(getattr(base, f.name)) for f in dataclasses.fields(cls)} if base else {}
    for key, value in values.items():
        kind, path = hints[key], f"{where}.{key}"
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            default = getattr(base, key) if base is not None else _field_default(cls, key)
            value = (kind.from_dict(value, base=default, where=path) if hasattr(kind, "from_dict")
                     else from_mapping(kind, value, path, base=default))
        kwargs[key] = checked_value(value, kind, path)
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as error:  # a range check of the section, or a value it cannot take
        raise ConfigError(f"{where}: {error}") from None


def _field_default(cls: type, name: str) -> Any:
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def checked_value(value: Any, kind: Any, where: str) -> Any:
    """``value`` if it has type ``kind`` (ints are ints, floats finite numbers, lists lists, ...), converted
    where YAML gives another spelling (an int for a float, a list for a tuple); else a ConfigError naming
    ``where`` and the value."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return checked_value(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {shown(value)} is none of {options}")
    if kind is Any or dataclasses.is_dataclass(kind) and isinstance(value, kind):
        return value
    if dataclasses.is_dataclass(kind):
        if isinstance(value, dict):
            return from_mapping(kind, value, where)
        raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {shown(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {shown(value)}")
        return float(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {shown(value)}")
        items = [checked_value(v, args[0] if origin is list or args[-1] is Ellipsis else args[i], f"{where}[{i}]")
                 for i, v in enumerate(value)] if args else list(value)
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return value
    return value
