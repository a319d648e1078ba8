"""Microsoft Graph `security/alerts_v2` alert -> `core.model.schema.Alert`.

The mapping is data: every table below is a list of rows (Graph property, Alert field,
converter). What no row knows is kept verbatim in an `extra` dict (the evidence's own, or
the alert's), so a new Graph property is carried along instead of lost.

Rules (they are what a README documents):
- null or a missing property means "absent": the Alert field keeps its default.
- Types are checked strictly, against the JSON types Graph documents; a wrong one raises
  `MappingError` naming the property path (`evidence[3].fileDetails: expected an object,
  got str`), and the pipeline dead-letters the alert with that reason. A null inside a
  list is a wrong type too. The one coercion: an integer where Graph documents a string
  id (`incidentId`, which MDE sends as a number; cloud application `appId`, an Int)
  becomes its decimal string.
- Enumerations compare case-insensitively and are stored in Graph's lowerCamelCase
  spelling; a value Graph does not (yet) define is stored verbatim.
- Timestamps are ISO 8601; Graph's 7th fractional digit (100 ns) is truncated to
  microseconds, an offset is converted to UTC, and a value without offset is taken as UTC
  (Graph documents every DateTimeOffset as UTC).
- Evidence dispatches on `@odata.type` (any case). A sub-object only partly typed keeps
  its untyped members in `extra` under its own name; a list of sub-objects with untyped
  members is kept whole there. Evidence of any other type (or none) is `OtherEvidence`
  with the whole object in `extra`; nested evidence (malwareEvidence.files, ...) stays
  inside its parent's `extra`, not flattened.

How it runs: each table is compiled once, at import, into a plain Python function (see
`_Compiler`) that reads the object's properties, checks and converts them, and builds the
model instance directly. The checks are the ones pydantic's strict mode would make (str,
int but not bool, int or float stored as float, list of str, object), done by the tables
themselves so that the models can be built without a second validation pass: this path
is the forwarder's hot loop. `Alert.model_validate` remains the way in for everything
else.
"""
from __future__ import annotations

import linecache
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from core.model.schema import (
    Alert,
    AlertTimes,
    CloudApplicationEvidence,
    Comment,
    DeviceEvidence,
    FileEvidence,
    FileInfo,
    IpEvidence,
    MailboxEvidence,
    MailMessageEvidence,
    OtherEvidence,
    ProcessEvidence,
    RegistryEvidence,
    Severity,
    TenantRef,
    UrlEvidence,
    UserEvidence,
    UserInfo,
    version_key,
)

SOURCE = "graph_alerts"
UTC = timezone.utc


class MappingError(ValueError):
    """The alert cannot be normalised; the message names the property and the reason."""


class _Invalid(Exception):
    """One converter's complaint; the table walk prepends the property path on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []  # innermost first, as the exception unwinds

    def where(self) -> str:
        text = ""
        for part in reversed(self.path):
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text or "alert"


def _at(part: str | int, error: _Invalid) -> _Invalid:
    """`error`, one level further out (property name or list index)."""
    error.path.append(part)
    return error


# --------------------------------------------------------------------------- converters

Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class Checked:
    """A row whose value is copied (lists and objects: shallow copies) once its JSON type is
    checked, strictly: a bool is not an integer, a string is not a number. `what` names the
    JSON type, for readers. A `collection` target has a list/dict default: a null is not
    copied onto it."""

    what: str
    collection: bool = False


TEXT = Checked("a string")
INTEGER = Checked("an integer")
NUMBER = Checked("a number")  # an integer is accepted and stored as a float
TEXT_LIST = Checked("a list of strings", collection=True)
OBJECT = Checked("an object", collection=True)


def _preview(value: Any) -> str:
    """A short rendering of a bad value for an error message (a description may be 10 MB)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(what: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {what}, got {type(value).__name__}")


# The slow paths of the checks the compiled tables make inline: each either accepts an
# unusual but valid value (a str subclass, say) or raises, naming `source`.

def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _expected("an object", value)


def _object_at(source: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _at(source, _expected("an object", value))


def _object_copy(source: str, value: Any) -> dict[str, Any]:
    return dict(_object_at(source, value))


def _bad_text(source: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _at(source, _expected("a string", value))


def _bad_texts(sources: tuple[str, ...], values: tuple[Any, ...]) -> None:
    for source, value in zip(sources, values):
        if value is not None:
            _bad_text(source, value)


def _integer(source: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _at(source, _expected("an integer", value))


def _number(source: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _at(source, _expected("a number", value))
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        raise _at(source, _expected("a number", value)) from None


def _text_list(source: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _at(source, _expected("a list", value))
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _at(source, _at(index, _expected("a string", item)))
    return list(value)


def _id_text(value: Any) -> str:
    """A string id; an integer is accepted and written in decimal (MDE-style ids are numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # beyond Python's int->str digit limit: no real id is
            raise _Invalid("expected a string, got an integer of over 4300 digits") from None
    raise _expected("a string", value)


# The timestamps parsed lately: an alert's evidence mostly share one createdDateTime, and
# datetimes are immutable, so equal strings may share one. Emptied when full.
_TIMES: dict[str, datetime] = {}
_TIMES_MAX = 1024


def _timestamp(value: Any) -> datetime:
    return _timestamp_at(None, value)


def _timestamp_at(source: str | None, value: Any) -> datetime:
    """`_timestamp`, naming `source` in a complaint (the compiled tables look `_TIMES` up
    themselves and call this on a miss)."""
    if value.__class__ is not str and not isinstance(value, str):
        raise _located(source, _expected("an ISO 8601 date-time string", value))
    parsed = _TIMES.get(value)
    if parsed is not None:
        return parsed
    try:
        parsed = datetime.fromisoformat(value)  # 3.11+: 'Z', any number of fraction digits
    except ValueError:
        raise _located(source, _Invalid(f"not an ISO 8601 date-time: {_preview(value)}")) from None
    if parsed.tzinfo is not UTC:  # what Graph sends, 'Z' (or +00:00), gives the UTC singleton
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        else:
            try:
                parsed = parsed.astimezone(UTC)
            except OverflowError:
                raise _located(source, _Invalid(f"out of range once converted to UTC: {_preview(value)}")) from None
    if len(_TIMES) >= _TIMES_MAX:
        _TIMES.clear()
    _TIMES[value] = parsed
    return parsed


def _located(source: str | None, error: _Invalid) -> _Invalid:
    return error if source is None else _at(source, error)


class _Enum:
    """Case-insensitive match on Graph's members; unknown values are kept verbatim.
    (The compiled tables inline the lookup: `exact` first, which spares the lower-casing
    of values Graph already spells canonically.)"""

    def __init__(self, members: Iterable[str], aliases: Mapping[str, str] | None = None) -> None:
        folded = {member.lower(): member for member in members}
        folded.update({alias.lower(): member for alias, member in (aliases or {}).items()})
        self.folded = folded
        self.exact = {name: folded[name.lower()] for name in (*folded.values(), *(aliases or {}))}

    def __call__(self, value: Any) -> str:
        if isinstance(value, str):
            return self.exact.get(value) or self.folded.get(value.lower(), value)
        raise _expected("a string", value)


def _enum(members: Iterable[str], aliases: Mapping[str, str] | None = None) -> _Enum:
    return _Enum(members, aliases)


def _enum_at(enum: _Enum, source: str, value: Any) -> str:
    try:
        return enum(value)
    except _Invalid as error:
        error.path.append(source)
        raise


class _ListOf:
    """Converter for a list whose every item goes through `item`."""

    def __init__(self, item: Convert) -> None:
        self.item = item
        self.exact = item.exact if isinstance(item, _Enum) else None
        self.folded = item.folded if isinstance(item, _Enum) else None

    def __call__(self, value: Any) -> list[Any]:
        if value.__class__ is not list and not isinstance(value, list):
            raise _expected("a list", value)
        if not value:  # the usual case for roles
            return []
        exact = self.exact
        if exact is not None and _STR_ONLY.issuperset(map(type, value)):
            folded = self.folded
            return [exact.get(item) or folded.get(item.lower(), item) for item in value]
        out = []
        item = self.item
        try:
            for element in value:
                out.append(item(element))
        except _Invalid as error:
            error.path.append(len(out))  # the index of the item that failed
            raise
        return out


def _list_of(item: Convert) -> _ListOf:
    return _ListOf(item)


_STR_ONLY = frozenset({str})
_STR_OR_NONE = frozenset({str, type(None)})


# Graph's enumerations (defender-source.md §1.3, Appendix A), in metadata order.
ALERT_STATUS = _enum(("unknown", "new", "inProgress", "resolved", "unknownFutureValue"))
ALERT_CLASSIFICATION = _enum(
    ("unknown", "falsePositive", "truePositive", "informationalExpectedActivity", "unknownFutureValue",
     "benignPositive"),  # benignPositive: an older revision of the v1.0 docs still lists it
)
ALERT_DETERMINATION = _enum(
    ("unknown", "apt", "malware", "securityPersonnel", "securityTesting", "unwantedSoftware", "other",
     "multiStagedAttack", "compromisedAccount", "phishing", "maliciousUserActivity", "notMalicious",
     "notEnoughDataToValidate", "confirmedActivity", "lineOfBusinessApplication", "unknownFutureValue"),
    # The docs page's prose uses other names than the metadata for four members; the
    # metadata (SDK) spelling is the wire truth, so the prose names fold onto it.
    aliases={"compromisedUser": "compromisedAccount", "clean": "notMalicious",
             "insufficientData": "notEnoughDataToValidate", "confirmedUserActivity": "confirmedActivity"},
)
SERVICE_SOURCE = _enum(
    ("unknown", "microsoftDefenderForEndpoint", "microsoftDefenderForIdentity", "microsoftDefenderForCloudApps",
     "microsoftDefenderForOffice365", "microsoft365Defender", "azureAdIdentityProtection", "microsoftAppGovernance",
     "dataLossPrevention", "unknownFutureValue", "microsoftDefenderForCloud", "microsoftSentinel",
     "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftSecurityForAI"),
)
DETECTION_SOURCE = _enum(
    ("unknown", "microsoftDefenderForEndpoint", "antivirus", "smartScreen", "customTi",
     "microsoftDefenderForOffice365", "automatedInvestigation", "microsoftThreatExperts", "customDetection",
     "microsoftDefenderForIdentity", "cloudAppSecurity", "microsoft365Defender", "azureAdIdentityProtection",
     "manual", "microsoftDataLossPrevention", "appGovernancePolicy", "appGovernanceDetection",
     "unknownFutureValue", "microsoftDefenderForCloud", "microsoftDefenderForIoT", "microsoftDefenderForServers",
     "microsoftDefenderForStorage", "microsoftDefenderForDNS", "microsoftDefenderForDatabases",
     "microsoftDefenderForContainers", "microsoftDefenderForNetwork", "microsoftDefenderForAppService",
     "microsoftDefenderForKeyVault", "microsoftDefenderForResourceManager", "microsoftDefenderForApiManagement",
     "nrtAlerts", "scheduledAlerts", "microsoftDefenderThreatIntelligenceAnalytics", "builtInMl",
     "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftDefenderForAIServices",
     "securityCopilot", "microsoftSentinel"),
)
INVESTIGATION_STATE = _enum(
    ("unknown", "terminated", "successfullyRemediated", "benign", "failed", "partiallyRemediated", "running",
     "pendingApproval", "pendingResource", "queued", "innerFailure", "preexistingAlert", "unsupportedOs",
     "unsupportedAlertType", "suppressedAlert", "partiallyInvestigated", "terminatedByUser",
     "terminatedBySystem", "unknownFutureValue"),
)
EVIDENCE_VERDICT = _enum(("unknown", "suspicious", "malicious", "noThreatsFound", "unknownFutureValue"))
EVIDENCE_REMEDIATION_STATUS = _enum(
    ("none", "remediated", "prevented", "blocked", "notFound", "unknownFutureValue", "active", "pendingApproval",
     "declined", "unremediated", "running", "partiallyRemediated"),
)
EVIDENCE_ROLE = _enum(
    ("unknown", "contextual", "scanned", "source", "destination", "created", "added", "compromised", "edited",
     "attacked", "attacker", "commandAndControl", "loaded", "suspicious", "policyViolator", "unknownFutureValue"),
)
DETECTION_STATUS = _enum(("detected", "blocked", "prevented", "unknownFutureValue"))


# Graph's alertSeverity (lower-cased) -> Severity, which `normalise` derives; an unknown
# value (or none) is Severity.unknown. The string as sent is kept in `severity_original`.
_SEVERITIES = {
    "unknown": Severity.unknown,
    "informational": Severity.informational,
    "low": Severity.low,
    "medium": Severity.medium,
    "high": Severity.high,
    "unknownfuturevalue": Severity.unknown,
}


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Nested:
    """Converter for a sub-object: its members go through `table` into `table.model`.
    Members the table does not know stay in the parent's leftovers under the property
    name, as a sub-object. A sub-object the parent model requires is built empty when
    Graph sends none."""

    table: _Table


@dataclass(frozen=True)
class NestedList:
    """Converter for a list of sub-objects. If any item has members the table does not
    know, the whole list stays in the parent's leftovers under the property name."""

    table: _Table


@dataclass(frozen=True)
class Flattened:
    """Converter for a sub-object whose members map onto the parent itself (the row's
    target name is unused). Unknown members stay in the leftovers as for `Nested`."""

    table: _Table


Row = tuple[str, str, Checked | Convert | Nested | NestedList | Flattened]
# A compiled table: (the JSON object, then `params`) -> (model instance, leftovers).
Build = Callable[..., tuple[BaseModel, dict[str, Any] | None]]


class _Table:
    """The rows for one JSON object shape, and the model they fill (`model`; a table only
    ever used `Flattened` needs none). `groups` are rows of the same JSON object that fill a
    nested model of the target (the alert's `times`). A table runs compiled (`build`...)."""

    def __init__(self, *rows: Row, model: type[BaseModel] | None = None,
                 groups: Mapping[str, _Table] | None = None) -> None:
        self.rows = rows
        self.model = model
        self.groups = dict(groups or {})

    @cached_property
    def build(self) -> Build:
        """obj -> (model instance, leftovers). `obj` is any value: not an object raises."""
        return _Compiler(self).function()

    @cached_property
    def build_model(self) -> Callable[[Any], BaseModel]:
        """obj -> model instance (its leftovers are in its `extra`)."""
        return _Compiler(self, pair=False).function()

    @cached_property
    def build_whole(self) -> Callable[[Any], BaseModel]:
        """obj -> model instance, with a copy of the whole object in the model's `extra`."""
        return _Compiler(self, whole=True, pair=False).function()


# --------------------------------------------------------------------------- compiler


# What `BaseModel.model_construct` sets on a new instance, called through the slots'
# descriptors directly (half the cost of `object.__setattr__`, which looks them up).
_SLOT_SETTERS = {
    "_set_dict": BaseModel.__dict__["__dict__"].__set__,
    "_set_fields_set": BaseModel.__dict__["__pydantic_fields_set__"].__set__,
    "_set_extra": BaseModel.__dict__["__pydantic_extra__"].__set__,
    "_set_private": BaseModel.__dict__["__pydantic_private__"].__set__,
}


def _every_field(model: type[BaseModel]) -> set[str]:
    """The `model_fields_set` of every instance the tables build: all the fields, as for a
    model read back from its JSON (the outbox). One set per model class, shared: copying a
    set of 40 names per instance cost 5% of the mapping. Sharing is safe as pydantic only
    ever adds a field's name to it (on assignment: a no-op here) and copies it for
    `model_copy`; nothing may remove names from it."""
    every = _EVERY_FIELD.get(model)
    if every is None:
        every = _EVERY_FIELD[model] = set(model.model_fields)
    return every


_EVERY_FIELD: dict[type[BaseModel], set[str]] = {}


class _Compiler:
    """Writes one table as the straight-line Python function one would write by hand for
    speed: pop every property the table knows in one C-level pass, check all the plain
    strings in another, convert the rest one by one, then build the model's `__dict__` as
    one dict display in field order (pydantic serialises in `__dict__` order) and set it on
    a new instance, as `BaseModel.model_construct` does, minus its per-field loop (every
    field counts as set: see `_every_field`).

    Every field the rows do not fill gets the model's default (a fresh list or dict for a
    `default_factory`), `fixed` a constant, `params` a parameter of the function, `later`
    a None placeholder the caller fills before anyone sees the model. A row whose target is
    not a field of the model, or a required field nobody fills, fails at import.

    `pair`: return (model, leftovers) rather than the model alone (a sub-object's leftovers
    go to its parent's). `whole`: the model's `extra` is a copy of the whole object and
    nothing is popped (OtherEvidence keeps the evidence as sent).
    """

    def __init__(self, table: _Table, *, pair: bool = True, whole: bool = False,
                 fixed: Mapping[str, Any] | None = None, params: tuple[str, ...] = (),
                 later: tuple[str, ...] = ()) -> None:
        if table.model is None:
            raise TypeError("only a table with a model compiles to a function")
        self.table = table
        self.pair = pair
        self.whole = whole
        self.fixed = dict(fixed or {})
        self.params = params
        self.later = later
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "_Invalid": _Invalid, "_STR_ONLY": _STR_ONLY, "_STR_OR_NONE": _STR_OR_NONE, "_TIMES": _TIMES,
            "_bad_texts": _bad_texts, "_integer": _integer, "_number": _number, "_text_list": _text_list,
            "_object": _object, "_object_at": _object_at, "_object_copy": _object_copy, "_enum_at": _enum_at,
            "_timestamp_at": _timestamp_at, "_fromisoformat": datetime.fromisoformat, "_UTC": UTC,
            "_TIMES_MAX": _TIMES_MAX, "_sub_list": _sub_list, "_new": object.__new__, **_SLOT_SETTERS,
        }
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, value: Any, hint: str = "_k") -> str:
        name = self.name(hint)
        self.namespace[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def function(self) -> Callable[..., Any]:
        table, model = self.table, self.table.model
        fname = f"build_{model.__name__}_{id(table):x}" + ("_whole" if self.whole else "")
        self.emit(0, f"def {fname}(obj{''.join(', ' + p for p in self.params)}):")
        self.emit(1, "if obj.__class__ is not dict:")
        self.emit(2, "_object(obj)  # raises unless a dict subclass (the caller names the property)")
        if self.whole:
            if any(isinstance(c, (Nested, NestedList, Flattened)) for _, _, c in table.rows):
                raise TypeError("a `whole` table has no sub-objects")
            pop, rest = "obj.get", "None"
        else:
            self.emit(1, "rest = dict(obj)")
            pop, rest = "rest.pop", "rest"
        slots: dict[str, str] = {}  # target field -> local variable
        requires: dict[str, str] = {}  # target field -> builder of its empty sub-model
        rows = list(table.rows)
        for group_table in table.groups.values():
            rows += group_table.rows  # rows of the same object: popped in the same pass
        group_slots: dict[str, dict[str, str]] = {group: {} for group in table.groups}
        owner = {id(row): group for group, group_table in table.groups.items() for row in group_table.rows}
        self.rows(rows, pop, rest, lambda row: group_slots[owner[id(row)]] if id(row) in owner else slots,
                  requires, 1)
        groups = {group: self.instance(table.groups[group].model, group_slots[group], {}, {}, None, 1)
                  for group in table.groups}
        extra = "dict(obj)" if self.whole else "rest"
        result = self.instance(model, slots, requires, groups, extra, 1)
        self.emit(1, f"return {result}, {rest}" if self.pair else f"return {result}")
        source = "\n".join(self.lines) + "\n"
        filename = f"<mapping {fname}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # readable tracebacks
        exec(compile(source, filename, "exec"), self.namespace)  # noqa: S102 - source written above from the tables
        function = self.namespace[fname]
        function.source = source
        return function

    # ---- rows -> local variables

    def rows(self, rows: list[Row], pop: str, rest: str, slots_of: Callable[[Row], dict[str, str]],
             requires: dict[str, str], depth: int) -> None:
        """Pop every row's property in one pass (plain strings first, checked together: a
        wrong type takes the slow path, which names it), then convert the others."""
        rows = sorted(rows, key=lambda row: row[2] != TEXT)  # stable: aliases keep their order
        texts = sum(1 for row in rows if row[2] == TEXT)
        values = [self.name("v") for _ in rows]
        popped = self.name("popped")
        sources = self.const(tuple(source for source, _, _ in rows), "_sources")
        nulls = self.const((None,) * len(rows), "_nulls")
        self.emit(depth, f"{popped} = tuple(map({pop}, {sources}, {nulls}))")
        if texts:
            checked = popped if texts == len(rows) else f"{popped}[:{texts}]"
            text_sources = self.const(tuple(source for source, _, _ in rows[:texts]), "_texts")
            self.emit(depth, f"if not _STR_OR_NONE.issuperset(map(type, {checked})): "
                             f"_bad_texts({text_sources}, {checked})")
        self.emit(depth, f"{', '.join(values)}, = {popped}")
        for row, value in zip(rows, values):
            source, target, convert = row
            slots = slots_of(row)
            if isinstance(convert, Flattened):
                self.flattened(source, convert.table, value, rest, slots, requires, depth)
                continue
            self.row(source, convert, value, rest, requires, target, depth)
            if target not in slots:
                slots[target] = value
            else:  # an alias: a null must not overwrite what another property filled
                self.emit(depth, f"if {value} is not None: {slots[target]} = {value}")

    def row(self, source: str, convert: Any, value: str, rest: str, requires: dict[str, str],
            target: str, depth: int) -> None:
        """Code that turns `value`, the property as sent, into the field's value (None: absent)."""
        src = repr(source)
        if convert == TEXT:
            pass  # checked with the other strings
        elif convert == INTEGER:
            self.emit(depth, f"if {value}.__class__ is not int and {value} is not None: _integer({src}, {value})")
        elif convert == NUMBER:
            self.emit(depth, f"if {value}.__class__ is not float and {value} is not None: "
                             f"{value} = _number({src}, {value})")
        elif convert == TEXT_LIST:
            self.emit(depth, f"if {value} is not None: {value} = {value}[:] if {value}.__class__ is list and "
                             f"(not {value} or _STR_ONLY.issuperset(map(type, {value}))) "
                             f"else _text_list({src}, {value})")
        elif convert == OBJECT:
            self.emit(depth, f"if {value} is not None: {value} = {value}.copy() if {value}.__class__ is dict "
                             f"else _object_copy({src}, {value})")
        elif isinstance(convert, _Enum):
            exact, folded = self.const(convert.exact, "_exact"), self.const(convert.folded, "_folded")
            enum = self.const(convert, "_enum")
            self.emit(depth, f"if {value} is not None: {value} = ({exact}.get({value}) or "
                             f"{folded}.get({value}.lower(), {value})) if {value}.__class__ is str "
                             f"else _enum_at({enum}, {src}, {value})")
        elif convert is _timestamp:
            # A miss parses inline (a call to `_timestamp_at` cost twice the parse); any
            # value that is not a UTC ISO string takes `_timestamp_at`, which converts or names it.
            self.emit(depth, f"if {value} is not None:")
            self.emit(depth + 1, f"if {value}.__class__ is str:")
            self.emit(depth + 2, f"parsed = _TIMES.get({value})")
            self.emit(depth + 2, "if parsed is None:")
            self.emit(depth + 3, "try:")
            self.emit(depth + 4, f"parsed = _fromisoformat({value})")
            self.emit(depth + 3, "except ValueError:")
            self.emit(depth + 4, "pass")
            self.emit(depth + 3, "if parsed is None or parsed.tzinfo is not _UTC:")
            self.emit(depth + 4, f"parsed = _timestamp_at({src}, {value})")
            self.emit(depth + 3, "else:")
            self.emit(depth + 4, "if len(_TIMES) >= _TIMES_MAX: _TIMES.clear()")
            self.emit(depth + 4, f"_TIMES[{value}] = parsed")
            self.emit(depth + 2, f"{value} = parsed")
            self.emit(depth + 1, f"else: {value} = _timestamp_at({src}, {value})")
        elif isinstance(convert, _ListOf):
            function = self.const(convert, "_convert")
            self.emit(depth, f"if {value} is not None:")
            self.emit(depth + 1, f"if {value}.__class__ is list and not {value}: {value} = []")
            if convert.exact is not None:  # a list of enumeration strings: `_ListOf`'s fast path, inline
                exact, folded = self.const(convert.exact, "_exact"), self.const(convert.folded, "_folded")
                self.emit(depth + 1, f"elif {value}.__class__ is list and _STR_ONLY.issuperset(map(type, {value})): "
                                     f"{value} = [{exact}.get(item) or {folded}.get(item.lower(), item) "
                                     f"for item in {value}]")
            self.emit(depth + 1, "else:")
            self.guarded(depth + 2, source, f"{value} = {function}({value})")
        elif isinstance(convert, Nested):
            sub = self.const(convert.table.build, "_build")
            left = self.name("left")
            self.emit(depth, f"if {value} is not None:")
            self.guarded(depth + 1, source, f"{value}, {left} = {sub}({value})")
            self.emit(depth + 1, f"if {left}: {rest}[{src}] = {left}")
            requires[target] = sub
        elif isinstance(convert, NestedList):
            sub = self.const(convert.table.build, "_build")
            items, kept = self.name("items"), self.name("kept")
            self.emit(depth, f"if {value} is not None:")
            self.emit(depth + 1, f"if {value}.__class__ is list and not {value}: {value} = []  # the usual comments")
            self.emit(depth + 1, "else:")
            self.guarded(depth + 2, source, f"{items}, {kept} = _sub_list({sub}, {value})")
            self.emit(depth + 2, f"if {kept}: {rest}[{src}] = {value}  # kept whole")
            self.emit(depth + 2, f"{value} = {items}")
        elif callable(convert):
            function = self.const(convert, "_convert")
            self.emit(depth, f"if {value} is not None:")
            self.guarded(depth + 1, source, f"{value} = {function}({value})")
        else:
            raise TypeError(f"row {source!r}: no converter {convert!r}")

    def guarded(self, depth: int, source: str, statement: str) -> None:
        """`statement`, with `source` added to the path of any complaint it raises."""
        self.emit(depth, "try:")
        self.emit(depth + 1, statement)
        self.emit(depth, "except _Invalid as error:")
        self.emit(depth + 1, f"error.path.append({source!r})")
        self.emit(depth + 1, "raise")

    def flattened(self, source: str, table: _Table, value: str, rest: str, slots: dict[str, str],
                  requires: dict[str, str], depth: int) -> None:
        """A sub-object's members as fields of the parent: its rows, inline."""
        src = repr(source)
        sub_rest = self.name("rest")
        before = set(slots)
        if before & {target for _, target, _ in table.rows}:
            raise TypeError(f"flattened {source!r} fills a field of its parent twice")
        self.emit(depth, f"if {value} is not None:")
        self.emit(depth + 1, f"if {value}.__class__ is not dict: _object_at({src}, {value})")
        self.emit(depth + 1, f"{sub_rest} = dict({value})")
        self.emit(depth + 1, "try:")
        self.rows(list(table.rows), f"{sub_rest}.pop", sub_rest, lambda row: slots, requires, depth + 2)
        self.emit(depth + 1, "except _Invalid as error:")
        self.emit(depth + 2, f"error.path.append({src})")
        self.emit(depth + 2, "raise")
        self.emit(depth + 1, f"if {sub_rest}: {rest}[{src}] = {sub_rest}")
        filled = [slot for target, slot in slots.items() if target not in before]
        if filled:
            self.emit(depth, "else:")
            self.emit(depth + 1, f"{' = '.join(filled)} = None")

    # ---- local variables -> model instance

    def instance(self, model: type[BaseModel], slots: dict[str, str], requires: dict[str, str],
                 groups: dict[str, str], extra: str | None, depth: int) -> str:
        fields = model.model_fields
        unknown = set(slots) - set(fields)
        if unknown:
            raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
        items = []
        for name, info in fields.items():
            if name in slots:
                slot = slots[name]
                if info.default_factory is not None:
                    expr = f"{slot} if {slot} is not None else {self.default(info)}"
                elif info.is_required() and name in requires:
                    expr = f"{slot} if {slot} is not None else {requires[name]}({{}})[0]"
                else:
                    expr = slot
            elif name in self.fixed:
                expr = self.const(self.fixed[name], "_fixed")
            elif name in self.params:
                expr = name
            elif name in groups:
                expr = groups[name]
            elif name == "extra" and extra is not None:
                expr = extra
            elif not info.is_required():
                expr = self.default(info)
            elif name in self.later:
                expr = "None"
            else:
                raise TypeError(f"{model.__name__}.{name} is required and nothing fills it")
            items.append(f"{name!r}: {expr}")
        instance = self.name("m")
        cls = self.const(model, "_" + model.__name__)
        every = self.const(_every_field(model), "_fields")
        self.emit(depth, f"{instance} = _new({cls})")
        self.emit(depth, f"_set_dict({instance}, {{{', '.join(items)}}})")
        self.emit(depth, f"_set_fields_set({instance}, {every})")
        self.emit(depth, f"_set_extra({instance}, None)")
        self.emit(depth, f"_set_private({instance}, None)")
        return instance

    def default(self, info: Any) -> str:
        factory = info.default_factory
        if factory is list:
            return "[]"
        if factory is dict:
            return "{}"
        if factory is not None:
            return f"{self.const(factory, '_factory')}()"
        if info.default is None or isinstance(info.default, (str, int, float, bool)):
            return repr(info.default)
        return self.const(info.default, "_default")


def _sub_list(build: Build, value: Any) -> tuple[list[BaseModel], bool]:
    """A list of sub-objects -> (their models, whether any had members the table does not know)."""
    if value.__class__ is not list and not isinstance(value, list):
        raise _expected("a list", value)
    items = []
    kept = False
    try:
        for element in value:
            item, left = build(element)
            items.append(item)
            kept = kept or bool(left)
    except _Invalid as error:
        error.path.append(len(items))  # the index of the item that failed
        raise
    return items, kept


# Complex types shared by several evidence types (Appendix A).
FILE_DETAILS = _Table(
    ("fileName", "name", TEXT),
    ("filePath", "path", TEXT),
    ("fileSize", "size", INTEGER),
    ("sha1", "sha1", TEXT),
    ("sha256", "sha256", TEXT),
    ("md5", "md5", TEXT),
    ("filePublisher", "publisher", TEXT),
    ("signer", "signer", TEXT),
    ("issuer", "issuer", TEXT),
    # sha256Ac has no typed field: kept in the evidence's extra under the parent property.
    model=FileInfo,
)
USER_ACCOUNT = _Table(
    ("accountName", "account_name", TEXT),
    ("domainName", "domain", TEXT),
    ("userPrincipalName", "upn", TEXT),
    ("userSid", "sid", TEXT),
    ("azureAdUserId", "aad_user_id", TEXT),
    ("displayName", "display_name", TEXT),
    # activeDirectoryObjectGuid, tenantId, resourceAccessEvents: kept in extra.
    model=UserInfo,
)
LOGGED_ON_USER = _Table(
    ("accountName", "account_name", TEXT),
    ("domainName", "domain", TEXT),
    model=UserInfo,
)
GEO_LOCATION = _Table(
    ("city", "city", TEXT),
    ("state", "state", TEXT),
    ("countryName", "country_name", TEXT),
    ("latitude", "latitude", NUMBER),
    ("longitude", "longitude", NUMBER),
)
EMAIL_SENDER = _Table(
    ("emailAddress", "sender", TEXT),
    ("displayName", "sender_display_name", TEXT),
    # domainName: kept in extra (it is the domain part of emailAddress).
)

# alertEvidence base properties (§1.4); remediationStatusDetails has no typed field.
# On its own, the table of an evidence type with no typed model (OtherEvidence).
EVIDENCE_BASE = _Table(
    ("@odata.type", "odata_type", TEXT),
    ("createdDateTime", "created", _timestamp),
    ("verdict", "verdict", EVIDENCE_VERDICT),
    ("remediationStatus", "remediation_status", EVIDENCE_REMEDIATION_STATUS),
    ("roles", "roles", _list_of(EVIDENCE_ROLE)),
    ("detailedRoles", "detailed_roles", TEXT_LIST),
    ("tags", "tags", TEXT_LIST),
    model=OtherEvidence,
)

DEVICE = _Table(
    *EVIDENCE_BASE.rows,
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("azureAdDeviceId", "aad_device_id", TEXT),
    ("deviceDnsName", "fqdn", TEXT),
    ("hostName", "hostname", TEXT),
    ("dnsDomain", "dns_domain", TEXT),
    ("ntDomain", "nt_domain", TEXT),
    ("osPlatform", "os_platform", TEXT),
    ("osBuild", "os_build", INTEGER),
    ("version", "os_version", TEXT),
    ("ipInterfaces", "ip_addresses", TEXT_LIST),
    ("lastIpAddress", "last_ip", TEXT),
    ("lastExternalIpAddress", "last_external_ip", TEXT),
    ("loggedOnUsers", "logged_on_users", NestedList(LOGGED_ON_USER)),
    ("healthStatus", "health_status", TEXT),
    ("riskScore", "risk_score", TEXT),
    ("rbacGroupName", "rbac_group", TEXT),
    # firstSeenDateTime, onboardingStatus, defenderAvStatus, rbacGroupId, vmMetadata,
    # resourceAccessEvents: kept in extra.
    model=DeviceEvidence,
)
USER = _Table(
    *EVIDENCE_BASE.rows,
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    # stream: kept in extra.
    model=UserEvidence,
)
FILE = _Table(
    *EVIDENCE_BASE.rows,
    ("fileDetails", "file", Nested(FILE_DETAILS)),
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("detectionStatus", "detection_status", DETECTION_STATUS),
    model=FileEvidence,
)
PROCESS = _Table(
    *EVIDENCE_BASE.rows,  # createdDateTime -> created, as on every evidence
    ("processId", "pid", INTEGER),
    ("parentProcessId", "parent_pid", INTEGER),
    ("processCommandLine", "command_line", TEXT),
    ("processCreationDateTime", "process_created", _timestamp),
    ("parentProcessCreationDateTime", "parent_created", _timestamp),
    ("imageFile", "image", Nested(FILE_DETAILS)),
    ("parentProcessImageFile", "parent_image", Nested(FILE_DETAILS)),
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("detectionStatus", "detection_status", DETECTION_STATUS),
    model=ProcessEvidence,
)
IP = _Table(
    *EVIDENCE_BASE.rows,
    ("ipAddress", "address", TEXT),
    ("countryLetterCode", "country_code", TEXT),
    ("location", "", Flattened(GEO_LOCATION)),  # city, state, country_name, latitude, longitude
    # stream: kept in extra.
    model=IpEvidence,
)
URL = _Table(
    *EVIDENCE_BASE.rows,
    ("url", "url", TEXT),
    model=UrlEvidence,
)
MAILBOX = _Table(
    *EVIDENCE_BASE.rows,
    ("primaryAddress", "primary_address", TEXT),
    ("upn", "upn", TEXT),
    ("displayName", "display_name", TEXT),
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    model=MailboxEvidence,
)
ANALYZED_MESSAGE = _Table(
    *EVIDENCE_BASE.rows,
    ("networkMessageId", "network_message_id", TEXT),
    ("internetMessageId", "internet_message_id", TEXT),
    ("subject", "subject", TEXT),
    # p1Sender is the envelope (MAIL FROM) sender, the one senderIp belongs to;
    # p2Sender (the From: header) is kept whole in extra.
    ("p1Sender", "", Flattened(EMAIL_SENDER)),  # sender, sender_display_name
    ("recipientEmailAddress", "recipient", TEXT),
    ("senderIp", "sender_ip", TEXT),
    ("receivedDateTime", "received", _timestamp),
    ("deliveryAction", "delivery_action", TEXT),
    ("deliveryLocation", "delivery_location", TEXT),
    ("antiSpamDirection", "direction", TEXT),
    ("urls", "urls", TEXT_LIST),
    ("threats", "threats", TEXT_LIST),
    # p2Sender, attachmentsCount, urlCount, threatDetectionMethods, language, urn: kept in extra.
    model=MailMessageEvidence,
)
CLOUD_APPLICATION = _Table(
    *EVIDENCE_BASE.rows,
    # cloudApplicationEvidence.appId is an Int, oauthApplicationEvidence.appId a String:
    # both land in the one string field.
    ("appId", "app_id", _id_text),
    ("displayName", "display_name", TEXT),
    ("instanceName", "instance_name", TEXT),
    ("publisher", "publisher", TEXT),  # oauthApplicationEvidence only
    # instanceId, saasAppId, stream (cloud app), objectId (OAuth app): kept in extra.
    model=CloudApplicationEvidence,
)
REGISTRY = _Table(
    *EVIDENCE_BASE.rows,
    ("registryHive", "hive", TEXT),
    ("registryKey", "key", TEXT),
    ("registryValueName", "value_name", TEXT),
    ("registryValue", "value_data", TEXT),
    ("registryValueType", "value_type", TEXT),
    ("mdeDeviceId", "mde_device_id", TEXT),
    model=RegistryEvidence,
)


_NAMESPACE = "#microsoft.graph.security."

# Dispatch on @odata.type. Every type not listed here, including the 36 other types of
# Appendix A and types Graph adds later, becomes OtherEvidence (EVIDENCE_BASE).
EVIDENCE_TABLES: Mapping[str, _Table] = {
    f"{_NAMESPACE}{name}": table
    for name, table in (
        ("deviceEvidence", DEVICE),
        ("userEvidence", USER),
        ("fileEvidence", FILE),
        ("processEvidence", PROCESS),
        ("ipEvidence", IP),
        ("urlEvidence", URL),
        ("mailboxEvidence", MAILBOX),
        ("analyzedMessageEvidence", ANALYZED_MESSAGE),
        ("cloudApplicationEvidence", CLOUD_APPLICATION),
        ("oauthApplicationEvidence", CLOUD_APPLICATION),
        ("registryKeyEvidence", REGISTRY),
        ("registryValueEvidence", REGISTRY),
    )
}
# The compiled tables, by @odata.type as Graph spells it, and lower-cased (any case matches).
_BUILD_EXACT: Mapping[str, Callable[[Any], BaseModel]] = {
    name: table.build_model for name, table in EVIDENCE_TABLES.items()}
_BUILD_FOLDED: Mapping[str, Callable[[Any], BaseModel]] = {name.lower(): build for name, build in _BUILD_EXACT.items()}


def _other_evidence(item: dict[str, Any]) -> BaseModel:
    """OtherEvidence keeps the whole object, base properties included, as the schema says."""
    evidence = EVIDENCE_BASE.build_whole(item)
    if evidence.odata_type is None:
        evidence.__dict__["odata_type"] = ""  # no @odata.type at all: an untyped evidence
    return evidence


def _evidences(value: Any) -> list[BaseModel]:
    """The alert's evidence list -> a typed model per item (OtherEvidence when there is none)."""
    if value.__class__ is not list and not isinstance(value, list):
        raise _expected("a list", value)
    out: list[BaseModel] = []
    try:
        for item in value:
            if item.__class__ is not dict:
                _object(item)
            odata_type = item.get("@odata.type")
            build = _BUILD_EXACT.get(odata_type) if odata_type.__class__ is str else None
            if build is None:
                build = _BUILD_FOLDED.get(odata_type.lower(), _other_evidence) if isinstance(
                    odata_type, str) else _other_evidence
            out.append(build(item))
    except _Invalid as error:
        error.path.append(len(out))  # the index of the evidence that failed
        raise
    return out


COMMENT = _Table(
    # The metadata names win over the names in the incidents docs example (§1.2), so
    # they come last; both are known, so neither lands in extra.
    ("createdBy", "author", TEXT),
    ("createdTime", "created", _timestamp),
    ("comment", "text", TEXT),
    ("createdByDisplayName", "author", TEXT),
    ("createdDateTime", "created", _timestamp),
    model=Comment,
)

TIMES = _Table(
    ("createdDateTime", "created", _timestamp),
    ("lastUpdateDateTime", "last_updated", _timestamp),
    ("firstActivityDateTime", "first_activity", _timestamp),
    ("lastActivityDateTime", "last_activity", _timestamp),
    ("resolvedDateTime", "resolved", _timestamp),
    model=AlertTimes,  # and `ingested`, the time the forwarder read the alert
)

# Every alert property of §1.2 except tenantId: the alert is filed under the tenant that
# was polled (`tenant`), and Graph's own tenantId is kept in `extra` with anything else
# this table does not know (`@odata.type`, properties Graph adds later).
ALERT = _Table(
    ("id", "id", TEXT),
    ("providerAlertId", "provider_alert_id", TEXT),
    ("incidentId", "incident_id", _id_text),  # a number in MDE's API, a string in Graph
    ("status", "status", ALERT_STATUS),
    ("severity", "severity_original", TEXT),  # `severity` itself is derived from it, below
    ("classification", "classification", ALERT_CLASSIFICATION),
    ("determination", "determination", ALERT_DETERMINATION),
    ("title", "title", TEXT),
    ("description", "description", TEXT),
    ("recommendedActions", "recommended_actions", TEXT),
    ("category", "category", TEXT),
    ("categories", "categories", TEXT_LIST),
    ("mitreTechniques", "mitre_techniques", TEXT_LIST),
    ("serviceSource", "service_source", SERVICE_SOURCE),
    ("detectionSource", "detection_source", DETECTION_SOURCE),
    ("productName", "product_name", TEXT),
    ("detectorId", "detector_id", TEXT),
    ("alertPolicyId", "alert_policy_id", TEXT),
    ("alertWebUrl", "alert_web_url", TEXT),
    ("incidentWebUrl", "incident_web_url", TEXT),
    ("assignedTo", "assigned_to", TEXT),
    ("actorDisplayName", "actor_display_name", TEXT),
    ("threatDisplayName", "threat_display_name", TEXT),
    ("threatFamilyName", "threat_family_name", TEXT),
    ("investigationState", "investigation_state", INVESTIGATION_STATE),
    ("systemTags", "system_tags", TEXT_LIST),
    ("comments", "comments", NestedList(COMMENT)),
    ("customDetails", "custom_details", OBJECT),
    ("additionalData", "additional_data", OBJECT),
    ("evidence", "evidence", _evidences),
    model=Alert,
    groups={"times": TIMES},
)
# (raw, raw, tenant, ingested) -> Alert; `severity` and `version_key` are
# placeholders `normalise` fills once it has checked the id and lastUpdateDateTime.
_BUILD_ALERT = _Compiler(ALERT, pair=False, fixed={"source": SOURCE}, params=("raw", "tenant", "ingested"),
                         later=("severity", "version_key")).function()


# --------------------------------------------------------------------------- entry point


def _check_id(alert_id: str) -> None:
    """The id keys the dedupe state (UTF-8 text) and names the alert in every format."""
    if alert_id.isspace():
        raise MappingError("id: blank")
    if not alert_id.isascii():
        try:
            alert_id.encode()
        except UnicodeEncodeError:
            raise MappingError("id: not valid Unicode (a lone surrogate)") from None


def normalise(raw: dict, tenant: TenantRef, ingested: datetime) -> Alert:
    """One alerts_v2 alert of `tenant`, read at `ingested` -> Alert (with `raw` = `raw`).

    Raises MappingError, and only MappingError, when the alert cannot be normalised.
    """
    if not isinstance(raw, dict):
        raise MappingError(f"alert: expected an object, got {type(raw).__name__}")
    try:
        alert = _BUILD_ALERT(raw, raw, tenant, ingested)
    except _Invalid as error:
        raise MappingError(f"{error.where()}: {error.reason}") from None
    fields = alert.__dict__
    alert_id = fields["id"]
    if not alert_id:
        raise MappingError("id: missing" if alert_id is None else "id: empty")
    _check_id(alert_id)
    last_updated = fields["times"].__dict__["last_updated"]
    if last_updated is None:
        raise MappingError("lastUpdateDateTime: missing")
    original = fields["severity_original"]
    fields["severity"] = _SEVERITIES.get(original.lower(), Severity.unknown) if original else Severity.unknown
    sent = raw["lastUpdateDateTime"]
    if (len(sent) == 28 and sent[27] == "Z" and sent[19] == "." and sent[10] == "T" and sent[7] == "-"
            and sent[4] == "-" and sent[0] != "0"):
        # Graph's own spelling, 'YYYY-MM-DDTHH:MM:SS.fffffffZ' (year 1000 on), parsed above:
        # its first 26 characters are what `version_key` formats (µs truncated), at a fifth
        # of the cost.
        fields["version_key"] = f"{tenant.id}/{alert_id}/{sent[:26]}Z"
    else:
        fields["version_key"] = version_key(tenant.id, alert_id, last_updated)
    return alert


def version_of(raw: Any) -> tuple[str, datetime] | None:
    """An alert's (id, lastUpdateDateTime) read straight from Graph's JSON, as `normalise` reads
    them, at a small part of its cost; None when only `normalise` can tell what is wrong."""
    if raw.__class__ is not dict:
        return None
    alert_id, sent = raw.get("id"), raw.get("lastUpdateDateTime")
    if alert_id.__class__ is not str or not alert_id or sent is None:
        return None
    try:
        _check_id(alert_id)
        return alert_id, _timestamp(sent)
    except (MappingError, _Invalid):
        return None
