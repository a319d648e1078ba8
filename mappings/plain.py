"""A model of the common schema as plain JSON data: the one helper every format that writes
(part of) the schema in its own names uses (cim's `defender`, ocsf's `unmapped` and evidence
`data`).

Fields come in the schema's order; absent ones are left out (None, an empty list, and an
empty object unless `keep_empty_objects`); the evidence `kind`, which names the model, is
always written. Times are left as datetimes for the JSON encoder, or turned by `time`.
What a field holds is read from its annotation once per model, so each field gets just the
test it needs.
"""
from __future__ import annotations

import types
from collections.abc import Callable
from datetime import datetime
from enum import Enum, auto
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

Time = Callable[[datetime], Any] | None


class _Holds(Enum):
    KIND = auto()  # a Literal: the model's tag, always written
    VALUE = auto()  # str, int, float, bool, or Any: as it is
    TIME = auto()  # a datetime
    TEXTS = auto()  # a list of strings, as it is
    LIST = auto()  # a list of models
    OBJECT = auto()  # a dict, kept verbatim
    MODEL = auto()  # a sub-model


def plain(value: Any, time: Time = None, keep_empty_objects: bool = False, skip: frozenset[str] = frozenset()) -> Any:
    """`value` (a model, a list, or plain data) as JSON data; `skip`: fields of the model
    `value` itself to leave out."""
    if isinstance(value, msgspec.Struct):
        return _model(value, time, keep_empty_objects, skip)
    if isinstance(value, list):
        return [plain(item, time, keep_empty_objects) for item in value]
    if time is not None and isinstance(value, datetime):
        return time(value)
    return value


def _model(model: msgspec.Struct, time: Time, keep_empty_objects: bool,
           skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, holds in _fields(type(model)):
        if name in skip:
            continue
        value = getattr(model, name)
        if holds is _Holds.KIND:
            out[name] = value
        elif value is None:
            continue
        elif holds is _Holds.VALUE or holds is _Holds.TEXTS:
            if value or holds is _Holds.VALUE:
                out[name] = value
        elif holds is _Holds.TIME:
            out[name] = value if time is None else time(value)
        elif holds is _Holds.OBJECT:
            if value or keep_empty_objects:
                out[name] = value
        elif holds is _Holds.LIST:
            if value:
                out[name] = [plain(item, time, keep_empty_objects) for item in value]
        else:
            out[name] = _model(value, time, keep_empty_objects)
    return out


_FIELDS: dict[type, tuple[tuple[str, _Holds], ...]] = {}


def _fields(model: type[msgspec.Struct]) -> tuple[tuple[str, _Holds], ...]:
    found = _FIELDS.get(model)
    if found is None:
        found = _FIELDS[model] = tuple((field.name, _holds(field.type)) for field in msgspec.structs.fields(model))
    return found


def _holds(annotation: Any) -> _Holds:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:  # X | None
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        origin = get_origin(annotation)
    if origin is Literal:
        return _Holds.KIND
    if origin is list:
        return _Holds.TEXTS if get_args(annotation) == (str,) else _Holds.LIST
    if origin is dict:
        return _Holds.OBJECT
    if annotation is datetime:
        return _Holds.TIME
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return _Holds.MODEL
    return _Holds.VALUE
