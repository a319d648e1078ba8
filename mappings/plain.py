"""A model of the common schema as plain JSON data: the one helper every format that writes
(part of) the schema in its own names uses (cim's `defender`, ocsf's `unmapped` and evidence
`data`).

Fields come in the schema's order; absent ones are left out (None, an empty list, and an
empty verbatim object unless `keep_empty_objects`); a sub-model is written even when all its
fields are absent (`{}`); the verbatim objects (`extra`, `custom_details`, `additional_data`,
`raw`) are kept whole, nulls inside included. Times are left as datetimes for the JSON encoder,
or turned by `time`.

msgspec converts the whole model in C (`to_builtins`, datetimes kept as they are), and one
pass over the result leaves out what is absent: several times cheaper than reading the
models attribute by attribute.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, get_origin

import msgspec

from core.model import schema

Time = Callable[[datetime], Any] | None

# The schema's verbatim values (the fields holding JSON as it came: dicts, and `raw`); every
# other dict in what `to_builtins` gives is a model.
VERBATIM = frozenset(field.name for model in vars(schema).values()
                     if isinstance(model, type) and issubclass(model, msgspec.Struct)
                     for field in msgspec.structs.fields(model)
                     if get_origin(field.type) is dict or field.type is Any)


def plain(value: Any, time: Time = None, keep_empty_objects: bool = False, skip: frozenset[str] = frozenset()) -> Any:
    """`value` (a model, a list of them, or plain data) as JSON data; `skip`: fields of the
    model `value` itself to leave out (not even converted: `raw` costs a copy of the alert)."""
    if isinstance(value, msgspec.Struct):
        if skip:
            value = msgspec.structs.replace(value, **dict.fromkeys(skip))
        data = msgspec.to_builtins(value, builtin_types=(datetime,))
        for name in skip:
            del data[name]
        return _present(data, time, keep_empty_objects)
    if isinstance(value, list):
        converted = msgspec.to_builtins(value, builtin_types=(datetime,))
        return [_present(item, time, keep_empty_objects) if item.__class__ is dict
                else _value(item, time) for item in converted]
    return _value(value, time)


def _value(value: Any, time: Time) -> Any:
    return time(value) if time is not None and value.__class__ is datetime else value


def _present(model: dict[str, Any], time: Time, keep_empty_objects: bool) -> dict[str, Any]:
    """A model as `to_builtins` gave it, without its absent fields."""
    out: dict[str, Any] = {}
    for name, value in model.items():
        if value is None:
            continue
        cls = value.__class__
        if cls is dict:
            if name in VERBATIM:
                if value or keep_empty_objects:
                    out[name] = value
            else:
                out[name] = _present(value, time, keep_empty_objects)
        elif cls is list:
            if value:  # a list holds models, or strings
                out[name] = [_present(item, time, keep_empty_objects) for item in value] \
                    if value[0].__class__ is dict else value
        elif cls is datetime:
            out[name] = value if time is None else time(value)
        else:
            out[name] = value
    return out
