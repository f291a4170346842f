"""Turn pydantic's validation errors into ``(field path, message)`` pairs that say how to fix them."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from api_orchestration.errors import did_you_mean

Problem = tuple[str, str]
UNION_TAGS = frozenset({"one window", "windows"})  # the tags of tagged unions (not part of a field path)

_TYPES = {
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string (quote it)",
    "list_type": "must be a list",
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
}


def field_path(loc: Sequence[Any]) -> str:
    """``("steps", 2, "retry", "max_attempts")`` -> ``steps[2].retry.max_attempts``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.replace("_", "a").replace("-", "a").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def from_validation_error(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc, kind, value = tuple(p for p in err["loc"] if p not in UNION_TAGS), err["type"], err.get("input")
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), known)
            msg = f"unknown field {loc[-1]!r}{hint}; allowed here: {', '.join(sorted(known))}"
            msg += _EXTRA_HINTS.get(str(loc[-1]), "") or _defaults_hint(model, loc)
        elif kind == "missing":
            msg = "is required"
        elif kind in _TYPES:
            msg = f"{_TYPES[kind]}, got {shown(value)}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[
                kind
            ]
            limit = next(iter(ctx.values()), "?")
            msg = f"must be {op} {limit}, got {shown(value)}"
        elif kind == "too_short":
            msg = f"must hold at least {ctx.get('min_length', 1)} item(s)"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            if value is not None and "got" not in msg:
                msg += f", got {shown(value)}"
        problems.append((field_path(loc), msg))
    return problems


_EXTRA_HINTS = {
    "params": " (query-string parameters go in 'query'; DAG params are top-level 'params')",
    "data": " (send a JSON body with 'json')",
    "schedule_interval": " (Airflow 3 uses 'schedule')",
    "retries": " (in-task retries are 'retry: {max_attempts: N}')",
}


def _defaults_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """A top-level key that is a workflow-wide default (``conn_id: x``) belongs under ``defaults``."""
    if len(loc) == 1 and "defaults" in model.model_fields and str(loc[0]) in _fields_at(model, ("defaults",)):
        return f" (workflow-wide settings go under 'defaults': defaults.{loc[0]})"
    return ""


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names (aliases) of the model found by walking ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        current = _model_in(current)
        if current is None:
            return []
        field = next(
            (f for name, f in current.model_fields.items() if (f.alias or name) == part),
            None,
        )
        if field is None:
            return []
        current = field.annotation
    current = _model_in(current)
    return [f.alias or name for name, f in current.model_fields.items()] if current else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            if found := _model_in(arg):
                return found
    return None
