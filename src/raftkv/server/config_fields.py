"""The machinery behind the declared config schema: validate a YAML document against msgspec
Structs, and describe the schema as Markdown (the README's configuration tables).

Rules:
- The schema (`raftkv.server.config_schema`) is plain msgspec Structs; what a field accepts is
  read from its type and `msgspec.Meta` via `msgspec.inspect`: `int` with `ge`/`gt`/`le`,
  `str` with `min_length`, `Literal[...]`, optional (`X | None`). `Meta(description=...)` is the
  text of the README's row; `Meta(extra=...)` holds our own options:
    "custom": True      the value is checked where it is resolved (config.py), not here;
    "required": True    documented as required (a custom field checks it itself);
    "aliases": {a: b}   accepted spellings (case-insensitive) of a Literal's values;
    "default_doc": text what the default is, when it is computed rather than a constant.
- Error messages are ours and name the field: `raft.heartbeat_timeout_ms: must be a positive
  integer (got 0)`. No message text of msgspec or PyYAML is ever what a test asserts; a type
  this module does not check itself goes through `msgspec.convert` and its error follows our
  field name.
- A key written with no value (`level:`) means "use the default".
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


def _unwrap(t: mi.Type) -> tuple[mi.Type, str, Mapping[str, Any]]:
    """(inner type, description, extra options) of a field's type."""
    description, extra = "", {}
    if isinstance(t, mi.Metadata):
        description = str((t.extra_json_schema or {}).get("description", ""))
        extra = t.extra or {}
        t = t.type
    return t, description, extra


def fields_of(cls: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info.fields


def field_info(cls: type[msgspec.Struct], name: str) -> mi.Field:
    for f in fields_of(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def check_value(cls: type[msgspec.Struct], name: str, value: object, label: str) -> object:
    """`value` checked (and normalized) for field `name` of `cls`; errors start with `label`."""
    t, _, extra = _unwrap(field_info(cls, name).type)
    if extra.get("custom"):
        return value
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if value is None:
            return None
        if len(options) == 1:
            t = options[0]
    match t:
        case mi.IntType():
            return _check_int(t, value, label)
        case mi.StrType():
            if not isinstance(value, str) or len(value) < (t.min_length or 0):
                what = "a non-empty string" if t.min_length else "a string"
                raise ConfigError(f"{label}: must be {what} (got {value!r})")
            return value
        case mi.LiteralType():
            return _check_literal(_literal_values(cls, name), extra, value, label)
        case mi.BoolType():
            if not isinstance(value, bool):
                raise ConfigError(f"{label}: must be true or false (got {value!r})")
            return value
    try:
        return msgspec.convert(value, _py_type(cls, name), strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _check_int(t: mi.IntType, value: object, label: str) -> int:
    # bool is an int subclass; `true` is never a sensible count of milliseconds.
    low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        if low == 1:
            raise ConfigError(f"{label}: must be a positive integer (got {value!r})")
        bound = f" >= {low}" if low is not None else ""
        raise ConfigError(f"{label}: must be an integer{bound} (got {value!r})")
    high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
    if high is not None and value > high:
        raise ConfigError(f"{label}: must be at most {high}")
    return value


def _py_type(cls: type[msgspec.Struct], name: str) -> Any:
    """The annotation of field `name`, as written in the schema."""
    for f in msgspec.structs.fields(cls):
        if f.name == name:
            return f.type
    raise KeyError(name)


def _literal_values(cls: type[msgspec.Struct], name: str) -> tuple[object, ...]:
    """A Literal field's values in declared order (msgspec.inspect sorts them)."""
    t = _py_type(cls, name)
    while typing.get_origin(t) is typing.Annotated:
        t = typing.get_args(t)[0]
    return typing.get_args(t)


def _check_literal(
    values: tuple[object, ...], extra: Mapping[str, Any], value: object, label: str
) -> object:
    aliases: Mapping[str, str] = extra.get("aliases", {})
    candidate = value
    if aliases and isinstance(value, str):
        candidate = value.lower()
        candidate = aliases.get(candidate, candidate)
    if candidate in values and not isinstance(value, bool):
        return candidate
    names = [str(v) for v in values]
    allowed = f"{names[0]} or {names[1]}" if len(names) == 2 else "one of " + ", ".join(names)
    raise ConfigError(f"{label}: must be {allowed} (got {value!r})")


def check_keys(cls: type[msgspec.Struct], raw: object, name: str) -> None:
    """`raw` is a mapping whose keys are all fields of section `cls`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping")
    known = [f.name for f in fields_of(cls)]
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{name}.{key}: unknown key (expected one of {', '.join(sorted(known))})"
            )


def parse_struct(cls: type[S], raw: object, name: str) -> S:
    """Build section `cls` (named `name` in messages) from the YAML mapping `raw`."""
    check_keys(cls, raw, name)
    assert isinstance(raw, dict)
    values = {
        key: check_value(cls, key, value, f"{name}.{key}")
        for key, value in raw.items()
        if value is not None
    }
    section = cls(**values)
    validate = getattr(section, "validate", None)
    if validate is not None:
        validate()  # the section's cross-field rules
    return section


# -- documentation -------------------------------------------------------------------------------
def _type_words(t: mi.Type, values: tuple[object, ...]) -> str:
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)]
        t = options[0] if len(options) == 1 else t
    match t:
        case mi.IntType():
            low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
            words = "integer"
            if low is not None:
                words += f" ≥ {low}"
            if t.le is not None:
                words += f", ≤ {t.le}"
            return words
        case mi.StrType():
            return "non-empty string" if t.min_length else "string"
        case mi.LiteralType():
            return " \\| ".join(f"`{v}`" for v in values)
        case mi.BoolType():
            return "true \\| false"
        case mi.DictType():
            return "mapping"
    return "see meaning"


def _default_words(f: mi.Field, extra: Mapping[str, Any]) -> str:
    if "default_doc" in extra:
        return str(extra["default_doc"])
    if extra.get("required"):
        return "required"
    if f.default is msgspec.NODEFAULT or f.default is None:
        return "—"
    if isinstance(f.default, bool):
        return f"`{str(f.default).lower()}`"  # as written in YAML
    return f"`{f.default}`"


def markdown_rows(cls: type[msgspec.Struct], section: str) -> list[str]:
    """One table row per field of section `cls`: key | type | default | meaning."""
    rows = []
    for f in fields_of(cls):
        t, description, extra = _unwrap(f.type)
        values = _literal_values(cls, f.name) if isinstance(t, mi.LiteralType) else ()
        rows.append(
            f"| `{section}.{f.name}` | {_type_words(t, values)} | {_default_words(f, extra)} "
            f"| {description} |"
        )
    return rows
