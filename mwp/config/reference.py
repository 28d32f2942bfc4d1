"""Every key of a config section as a row of the reference: its type, default, allowed values and help.

The documentation's config pages are generated from these rows (`docs/gen_reference.py`), so a help
string, a default or a range changed in the schema changes the page. A nested section is expanded
under its key (`loss.signal.scorer.device`), a list of sections under `key[i]`
(`dataset.eval_sets[i].name`); `loss.terms[i]` entries are `LossTerm` dataclass fields.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REQUIRED = "required"


@dataclass(frozen=True)
class KeyReference:
    """One config key: `type` as written in the schema, `default` as a config value (`null`, `true`,
    `[a, b]`; `required` when it has none), `allowed` its choices and ranges, `help` its help string;
    `operational` keys change how a stage runs, never what it writes (they are not in the stage cache's key)."""

    key: str
    type: str
    default: str
    allowed: str
    help: str
    operational: bool = False
    section: bool = False


def config_reference(schema: type, prefix: str = "") -> list[KeyReference]:
    """The rows of `schema` (a config `Section` or a dataclass such as `LossTerm`), nested sections
    expanded, keys prefixed by `prefix` (e.g. "loss.")."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return list(_model_rows(schema, prefix, ()))
    if dataclasses.is_dataclass(schema):
        return list(_dataclass_rows(schema, prefix))
    raise TypeError(f"{schema!r} is neither a pydantic model nor a dataclass")


def _model_rows(
    schema: type[BaseModel], prefix: str, seen: tuple[type, ...]
) -> typing.Iterator[KeyReference]:
    for name, info in schema.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        annotation = info.annotation
        nested = _section_in(annotation)
        extra = info.json_schema_extra
        yield KeyReference(
            key=key,
            type=type_name(annotation),
            default=_default(info),
            allowed=_allowed(annotation, info.metadata),
            help=info.description or "",
            operational=isinstance(extra, dict) and bool(extra.get("operational")),
            section=nested is not None,
        )
        if nested is not None and nested not in seen:
            many = typing.get_origin(_without_none(annotation)) is list
            yield from _model_rows(nested, f"{key}[i]." if many else f"{key}.", (*seen, schema))


def _dataclass_rows(schema: Any, prefix: str) -> typing.Iterator[KeyReference]:
    hints = typing.get_type_hints(schema)
    for entry in dataclasses.fields(schema):
        annotation = hints.get(entry.name, entry.type)
        if entry.default is not dataclasses.MISSING:
            default = format_value(entry.default)
        elif entry.default_factory is not dataclasses.MISSING:
            default = format_value(entry.default_factory())
        else:
            default = REQUIRED
        choices = entry.metadata.get("choices")
        yield KeyReference(
            key=f"{prefix}{entry.name}",
            type=type_name(annotation),
            default=default,
            allowed=", ".join(format_value(c) for c in choices) if choices else _allowed(annotation, []),
            help=str(entry.metadata.get("help", "")),
        )


def _without_none(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if _is_union(annotation) and len(args) == 1:
        return args[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _section_in(annotation: Any) -> type[BaseModel] | None:
    """The section a key holds (`X`, `X | None` or `list[X]`), else None; a mapping of sections
    (`logger`, `callbacks`) is one key."""
    inner = _without_none(annotation)
    if typing.get_origin(inner) is list:
        (inner,) = typing.get_args(inner) or (None,)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None


def type_name(annotation: Any) -> str:
    """The annotation as a short type: `int`, `str | null`, `list[str]`, `section`; a Literal is its
    values' type (the values themselves are the allowed ones)."""
    if annotation is None or annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        names = dict.fromkeys(type_name(a) for a in typing.get_args(annotation))
        return " | ".join(names)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(v).__name__ for v in typing.get_args(annotation)))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        key, value = typing.get_args(annotation) or (Any, Any)
        return f"dict[{type_name(key)}, {type_name(value)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [value for arg in typing.get_args(annotation) for value in _literals(arg)]


_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _allowed(annotation: Any, metadata: list[Any]) -> str:
    parts = [format_value(v) for v in _literals(annotation)]
    for constraint in metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(constraint, kind):
                parts.append(f"{sign} {format_value(getattr(constraint, attribute))}")
        if isinstance(constraint, annotated_types.MinLen) and constraint.min_length:
            parts.append(f"at least {constraint.min_length} item{'s' if constraint.min_length > 1 else ''}")
        if isinstance(constraint, annotated_types.MaxLen):
            parts.append(f"at most {constraint.max_length} items")
    return ", ".join(parts)


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return REQUIRED
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(section)"
    return format_value(value)


def format_value(value: Any) -> str:
    """A value as it is written in a config file or an override: null, true, 0.0005, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    return json.dumps(value, default=str)
