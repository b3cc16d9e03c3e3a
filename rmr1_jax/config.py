"""Typed run configuration: YAML files, ``key=value`` overrides, validation.

A recipe is a YAML file whose nested mappings mirror the config dataclasses (the shared
sections are in :mod:`rmr1_jax.schema`). Every key is checked: an unknown key or a value of
the wrong type is a :class:`ConfigError` naming the file and the dotted key. Overrides from the command line use the same dotted keys
(``optim.lr=2e-6``); their values are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from rmr1_jax.errors import ConfigError

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``typ``; ints are accepted where floats are."""
    origin = get_origin(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(typ)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(str(e))
        inner = [a for a in args if a is not type(None)]
        lead = f"{source}: {key}={value!r} "
        why = f" ({errors[0][len(lead):]})" if len(inner) == 1 and errors and errors[0].startswith(lead) else ""
        raise ConfigError(f"{lead}does not match {_type_name(typ)}{why}")
    if origin is Literal:
        if value not in get_args(typ):
            raise ConfigError(f"{source}: {key}={value!r} is not one of {list(get_args(typ))}")
        return value
    if _is_dataclass_type(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
        return from_dict(typ, value, source, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        (inner, *_) = get_args(typ) or (Any,)
        items = [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if typ is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 2e-6 (no dot) as a string; YAML 1.2 and users do not
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}={value!r} must be a number")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}={value!r} must be an integer")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}={value!r} must be true or false")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}={value!r} must be a string")
        return value
    raise ConfigError(f"{source}: {key}: unsupported field type {typ}")


def _type_name(typ) -> str:
    return str(typ).replace("typing.", "")


def from_dict(cls, data: dict, source: str = "config", prefix: str = ""):
    """Build dataclass ``cls`` from a (nested) mapping, checking every key and value."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{source}: unknown key {full!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            full = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], full, source)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix or 'config'}: {e}") from None
    return obj


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str], source: str = "command line") -> dict:
    """Set dotted keys in a nested mapping from ``key=value`` strings (values parsed as YAML)."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {key!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def load_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{path}: invalid YAML at {where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load(cls, path: str | None, overrides: list[str] | None = None):
    """Load dataclass ``cls`` from a YAML recipe plus ``key=value`` overrides, then validate."""
    data = load_yaml(path) if path else {}
    source = path or "config"
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with overrides)"
    cfg = from_dict(cls, data, source)
    validate(cfg, source)
    return cfg


def validate(obj, source: str) -> None:
    """Run ``validate(where)`` on every nested dataclass that defines it."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            validate(v, source)
    if hasattr(obj, "validate"):
        obj.validate(source)


def dump(obj) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


__all__ = ["load", "from_dict", "to_dict", "dump", "apply_overrides", "load_yaml", "validate"]
