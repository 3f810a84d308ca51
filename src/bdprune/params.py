"""Declared hyperparameters: one description of what an attack, defense or objective takes.

Attacks declare their hyperparameters as dataclass fields with a type and, through `param`, their bounds
(nanoGPT's typed config, pydantic's `Field(ge=...)`); defenses declare them in their `__init__` signature.
From that one declaration come the list of parameters and defaults (`parameters`, what `bdprune attacks`
prints), the check of given values (`check_fields`: type, finiteness, bounds, choices) and the parsing of
command-line strings (`parse_option`, for `--attack-arg KEY=VALUE`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InvalidInput, UnknownName

REQUIRED = inspect.Parameter.empty
_BOUNDS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def param(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field with bounds (for numbers, and for every element of a sequence) or allowed choices."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)) if v is not None}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Parameter:
    """One declared hyperparameter: its name, default (`REQUIRED` if none) and type."""

    name: str
    default: Any
    annotation: Any
    bounds: dict[str, Any] = field(default_factory=dict)  # `param`'s ge, gt, le, lt, choices


def parameters(cls: Any, skip: Sequence[str] = ()) -> dict[str, Parameter]:
    """The hyperparameters `cls(...)` (a class or a factory function) accepts, in declaration order, without
    those in `skip`."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        meta = {f.name: dict(f.metadata) for f in dataclasses.fields(cls)}
    else:
        hints, meta = typing.get_type_hints(cls.__init__ if isinstance(cls, type) else cls), {}
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[name] = Parameter(name, p.default, hints.get(name, Any), meta.get(name, {}))
    return out


def check_known(owner: str, given: Sequence[str], known: Sequence[str]) -> None:
    """Refuse names that are not declared parameters, listing the known ones."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UnknownName(f"{owner} has no parameter {', '.join(unknown)}; its parameters: {', '.join(known)}")


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def describe(annotation: Any) -> str:
    names = []
    for t in _members(annotation):
        origin = typing.get_origin(t)
        if t is type(None):
            names.append("None")
        elif origin in (tuple, list) or origin is typing.get_origin(Sequence[int]):
            names.append("a list of " + describe(typing.get_args(t)[0]) + " values")
        else:
            names.append(
                {
                    bool: "true or false",
                    int: "an integer",
                    float: "a finite number",
                    str: "a string",
                    torch.Tensor: "a tensor",
                }.get(t, getattr(t, "__name__", str(t)))
            )
    return " or ".join(names)


def _coerce(value: Any, t: Any) -> tuple[bool, Any]:
    """(True, value as type `t`) or (False, None)."""
    origin = typing.get_origin(t)
    if t is Any:
        return True, value
    if t is type(None):
        return value is None, None
    if t is bool:
        return isinstance(value, bool), value
    if origin is dict or t is dict:
        return isinstance(value, dict), value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None
        return (True, int(value)) if float(value).is_integer() else (False, None)
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False, None
        return True, float(value)
    if origin in (tuple, list) or origin is typing.get_origin(Sequence[int]):
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)):
            return False, None
        element_types = args if origin is tuple and Ellipsis not in args else (args[0],) * len(value) if args else ()
        if origin is tuple and Ellipsis not in args and len(args) != len(value):
            return False, None
        out = []
        for v, et in zip(value, element_types or value):
            ok, cv = _coerce(v, et) if element_types else (True, v)
            if not ok:
                return False, None
            out.append(cv)
        return True, tuple(out) if origin is tuple else out
    if isinstance(t, type):
        return isinstance(value, t), value
    return True, value


def check_value(where: str, value: Any, annotation: Any, meta: dict[str, Any] | None = None) -> Any:
    """`value` converted to its declared type; `InvalidInput` naming `where` if it does not fit."""
    for t in _members(annotation):
        ok, converted = _coerce(value, t)
        if ok:
            break
    else:
        raise InvalidInput(f"{where} must be {describe(annotation)}, got {value!r}")
    meta = meta or {}
    if meta.get("choices") is not None and converted not in meta["choices"]:
        raise InvalidInput(f"{where} must be one of {', '.join(map(repr, meta['choices']))}, got {value!r}")
    numbers = converted if isinstance(converted, (list, tuple)) else [converted]
    for key, (sign, test) in _BOUNDS.items():
        if key in meta:
            for v in numbers:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not test(v, meta[key]):
                    raise InvalidInput(f"{where} must be {sign} {meta[key]:g}, got {value!r}")
    return converted


def check_fields(obj: Any, owner: str, skip: Sequence[str] = ()) -> None:
    """Check (and convert in place) every dataclass field of `obj` against its declared type and bounds."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = check_value(f"{owner}: {f.name}", getattr(obj, f.name), hints[f.name], dict(f.metadata))
        object.__setattr__(obj, f.name, value)


def parse_option(text: str, annotation: Any) -> Any:
    """A command-line string as a value of the declared type: 'none' for None, 'true'/'false', numbers,
    comma-separated (or JSON) lists; the type check itself is `check_value`'s."""
    members = _members(annotation)
    if type(None) in members and text.strip().lower() in ("none", "null"):
        return None
    for t in sorted(members, key=lambda m: m is str):  # a string is the last resort
        origin = typing.get_origin(t)
        if t is bool and text.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return text.strip().lower() in ("true", "yes", "1")
        if t in (int, float):
            try:
                return t(text)
            except ValueError:
                continue
        if origin in (tuple, list) or origin is typing.get_origin(Sequence[int]):
            try:
                items = json.loads(text) if text.strip().startswith("[") else [x for x in text.split(",") if x.strip()]
            except json.JSONDecodeError:
                continue
            element = (typing.get_args(t) or (str,))[0]
            return [parse_option(str(x), element) if isinstance(x, str) else x for x in items]
        if t is str or t is Any:
            return text
    return text


def convert(owner: str, declared: dict[str, Parameter], given: dict[str, Any]) -> dict[str, Any]:
    """Given values as the declared parameters' types; strings (KEY=VALUE of the command line) are parsed
    first. Unknown keys and values that do not fit are an error."""
    check_known(owner, list(given), list(declared))
    out = {}
    for key, value in given.items():
        annotation = declared[key].annotation
        out[key] = check_value(
            f"{owner}: {key}",
            parse_option(value, annotation) if isinstance(value, str) else value,
            annotation,
            declared[key].bounds,
        )
    return out


def from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """`cls(**values)` for a config dataclass, refusing unknown keys by name (nanoGPT's strict overrides)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidInput(f"unknown {what} {unknown}; known: {sorted(known)}")
    return cls(**values)


# -- the command line's side of declared parameters ----------------------------------------------------------
def key_values(items: Sequence[str] | None) -> dict[str, str]:
    """KEY=VALUE options as strings (the declared types parse them later, in `convert`)."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"expected KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def add_options(group: Any, cls: type, defaults: bool = False) -> None:
    """One argparse option per documented field of a config dataclass (--batch-size for batch_size, help and
    choices from the field's metadata), typed by its annotation; unset options are None (the field's
    default applies later) unless `defaults`."""
    hints = typing.get_type_hints(cls)
    for f in (f for f in dataclasses.fields(cls) if "help" in f.metadata):
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        flag, default, meta = f"--{f.name.replace('_', '-')}", f.default if defaults else None, f.metadata
        if kind is bool:
            group.add_argument(flag, action="store_true", default=default, help=meta["help"])
        else:
            group.add_argument(flag, type=kind, choices=meta.get("choices"), default=default, help=meta["help"])
