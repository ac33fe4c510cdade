"""Typed settings read from config nodes: one dataclass field per key, its default, help and limits.

`setting(...)` declares a field; `read(cls, node, where)` turns a YAML/Hydra mapping into the
dataclass (values converted by the field's type, absent keys left at their defaults, keys the class
does not know ignored), and `check(obj, where)` validates limits and choices, naming the key
(`judge.max_concurrency must be >= 1, got 0`). Both walk nested dataclasses (`server.kind`).
`node_values(node, cls, where)` is the strict reading every other settings class uses: the node as
plain values, a key the class has no field for refused by name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import ConfigError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, minimum: float | None = None,  # noqa: A002
            choices: tuple[str, ...] | None = None, factory: Any = None, convert: bool = True) -> Any:  # fmt: skip
    """A dataclass field with its help text, and optionally a lower limit or the allowed values.
    `convert=False`: `read` passes the value on as written, for the class to check its type."""
    metadata = {"help": help, "minimum": minimum, "choices": choices, "convert": convert}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, True) or (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _convert(where: str, hint: Any, value: Any, default: Any) -> Any:
    """`value` as the field's type: numbers parsed, lists as tuples, mappings as nested dataclasses;
    None or "" is None for an optional field, the default for text, and an error for a number."""
    inner, optional = _optional(hint)
    if dataclasses.is_dataclass(inner):
        if optional and not value:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping of {', '.join(f.name for f in dataclasses.fields(inner))}, "
                              f"got {value!r}")  # fmt: skip
        return read(inner, value, where)
    if value is None or value == "":
        if optional:
            return None
        if inner in (int, float):
            raise ConfigError(f"{where} must be set")
        return default
    if inner is bool:
        if isinstance(value, bool) or str(value).lower() in ("true", "false"):
            return value if isinstance(value, bool) else str(value).lower() == "true"
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if inner in (int, float):
        try:
            return inner(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a {inner.__name__}, got {value!r}") from None
    if typing.get_origin(inner) is tuple:
        return (str(value),) if isinstance(value, str) else tuple(str(item) for item in value)
    if typing.get_origin(inner) is dict or inner is dict:
        return dict(value)
    return str(value)


def read(cls: type, node: Mapping[str, Any], where: str, **given: Any) -> Any:
    """An instance of dataclass `cls` from `node`, with `given` values as they are. Keys the class
    does not know are ignored: Hydra rejects unknown overrides, and a role node may carry keys of its
    stage (a judge's template) or of another backend (after `judge.backend=inprocess`)."""
    hints = typing.get_type_hints(cls)
    values = dict(given)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in given or f.name not in node:
            continue
        if not f.metadata.get("convert", True):
            values[f.name] = node[f.name]
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        values[f.name] = _convert(f"{where}.{f.name}", hints[f.name], node[f.name], default)
    return cls(**values)


def check(obj: Any, where: str) -> None:
    """Raise a ConfigError for a value below its field's `minimum` or outside its `choices`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        # A flat field's own fields are keys of this node (a backend's options sit beside the role's keys).
        key = where if f.metadata.get("flat") else f"{where}.{f.name}"
        if dataclasses.is_dataclass(value):
            check(value, key)
            continue
        minimum, choices = f.metadata.get("minimum"), f.metadata.get("choices")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got '{value}'")


def defaults(cls: type) -> dict[str, Any]:
    """The dataclass's defaults as a plain mapping (a config node), as OmegaConf reads the class:
    tuples as lists, nested dataclasses as mappings, a required field as `???` (Hydra's mark for a
    value that must be set)."""
    return OmegaConf.to_container(OmegaConf.structured(cls))  # type: ignore[return-value]


def plain(node: Any) -> dict[str, Any]:
    """A config node (resolved) or a mapping as a plain dict; None as {}."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def node_values(node: Any, cls: type, where: str, known: typing.Iterable[str] = ()) -> dict[str, Any]:
    """`node` (a config node or a mapping; None for none) as plain resolved values for dataclass `cls`. A key
    that is neither a field of `cls` nor in `known` is a ConfigError naming it and the keys there are."""
    values = plain(node)
    names = {f.name for f in dataclasses.fields(cls)} | set(known)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; known: {', '.join(sorted(names))}")
    return values
