"""A small model of Splunk's search-time field pipeline, enough to check the add-on's props.conf
against our events without a Splunk: `SearchTime(stanza, transforms, lookups).fields(event)`.

Splunk's search-time order (props.conf spec, "search-time operations order"): KV_MODE, REPORT,
FIELDALIAS, EVAL, LOOKUP. Modelled here:
- KV_MODE = json (`kv_json`): nested keys joined with `.`, an array's elements named `key{}`
  (nested: `a{}.b`, `a{}{}`), every value of one name gathered into a multivalue field in
  document order; JSON null extracted as the text "null", booleans as "true"/"false", numbers
  as their JSON text; empty arrays and objects give no field.
- FIELDALIAS (`a AS b`, `a ASNEW b`, case-insensitive, several pairs per line): all aliases
  read the KV fields (no alias sees another's result); AS sets the destination to the
  source's value and, since Splunk 7.2.4, removes a destination the event has when the source
  has no value; ASNEW only sets a destination the event lacks.
- EVAL: every EVAL of the stanza reads the fields as the aliases left them, in parallel (one
  EVAL never sees another's output); a null result removes the field.
- LOOKUP: `table in [AS field] OUTPUT|OUTPUTNEW out [AS field] ...` on a CSV lookup of
  transforms.conf (`filename`, `case_sensitive_match`).
REPORT is not modelled: a stanza that uses it is refused (`Unsupported`).

The EVAL language is the subset the add-on uses: "string" literals, numbers, bare and
'quoted' field names, ==, =, !=, AND, OR, NOT, parentheses, and the functions of `FUNCTIONS`.
Anything else (another function, `.` concatenation, arithmetic) raises `Unsupported`, so a
test cannot pass on an expression this model does not understand.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Fields = dict[str, list[str]]
# An eval value: None (null), a list of strings (one item: a single value; more: multivalue),
# or a bool (a condition).
Value = list[str] | bool | None


class Unsupported(ValueError):
    """An expression, function or setting this model does not implement."""


# --------------------------------------------------------------------------- KV_MODE = json


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def kv_json(doc: Any) -> Fields:
    """The fields Splunk's KV_MODE = json extracts from one JSON object."""
    found: Fields = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else key)
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{name}{{}}")
        else:
            found.setdefault(name, []).append(_text(value))

    walk(doc, "")
    return found


# --------------------------------------------------------------------------- EVAL expressions

_TOKEN = re.compile(r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<quoted>'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|[=(),<>.+\-*/%])
)""", re.VERBOSE)


def tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    text = text.rstrip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise Unsupported(f"cannot read {text[at:at + 30]!r} in {text!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        at = match.end()
    return out


@dataclass
class Node:
    kind: str  # literal, field, call, compare, and, or, not
    value: Any = None
    args: list[Node] = field(default_factory=list)

    def fields(self) -> set[str]:
        """The field names this expression reads."""
        own = {self.value} if self.kind == "field" else set()
        return own.union(*(arg.fields() for arg in self.args))


class Parser:
    """Recursive descent: or := and (OR and)*; and := not (AND not)*; not := NOT not | compare;
    compare := primary ((==|=|!=) primary)?; primary := literal | field | call | ( or )."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.items = tokens(text)
        self.at = 0

    def parse(self) -> Node:
        node = self.disjunction()
        if self.at != len(self.items):
            raise Unsupported(f"unexpected {self.items[self.at][1]!r} in {self.text!r}")
        return node

    def peek(self) -> tuple[str, str] | None:
        return self.items[self.at] if self.at < len(self.items) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        item = self.peek()
        if item is None or (value is not None and item[1] != value):
            raise Unsupported(f"expected {value or 'more'} in {self.text!r}")
        self.at += 1
        return item

    def keyword(self, word: str) -> bool:
        item = self.peek()
        if item is not None and item == ("name", word):
            self.at += 1
            return True
        return False

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.keyword("OR"):
            node = Node("or", args=[node, self.conjunction()])
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.keyword("AND"):
            node = Node("and", args=[node, self.negation()])
        return node

    def negation(self) -> Node:
        if self.keyword("NOT"):
            return Node("not", args=[self.negation()])
        return self.comparison()

    def comparison(self) -> Node:
        node = self.primary()
        item = self.peek()
        if item is not None and item[0] == "op" and item[1] in ("==", "=", "!="):
            self.at += 1
            node = Node("compare", "!=" if item[1] == "!=" else "==", [node, self.primary()])
        elif item is not None and item[0] == "op" and item[1] not in (",", ")"):
            raise Unsupported(f"operator {item[1]!r} in {self.text!r}")
        return node

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "string":
            return Node("literal", [re.sub(r"\\(.)", r"\1", text[1:-1])])
        if kind == "number":
            return Node("literal", [text])
        if kind == "quoted":
            return Node("field", re.sub(r"\\(.)", r"\1", text[1:-1]))
        if kind == "name":
            if self.peek() == ("op", "("):
                self.take("(")
                args: list[Node] = []
                if self.peek() != ("op", ")"):
                    args.append(self.disjunction())
                    while self.peek() == ("op", ","):
                        self.take(",")
                        args.append(self.disjunction())
                self.take(")")
                if text not in FUNCTIONS:
                    raise Unsupported(f"eval function {text}() in {self.text!r}")
                return Node("call", text, args)
            if text in ("AND", "OR", "NOT"):
                raise Unsupported(f"misplaced {text} in {self.text!r}")
            return Node("field", text)
        if (kind, text) == ("op", "("):
            node = self.disjunction()
            self.take(")")
            return node
        raise Unsupported(f"{text!r} in {self.text!r}")


def _single(value: Value, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise Unsupported(f"{what}: a condition where a value is expected")
    if len(value) != 1:
        raise Unsupported(f"{what}: a multivalue field where this model only knows single values")
    return value[0]


def _truth(value: Value, what: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise Unsupported(f"{what}: a value where a condition is expected")


def _equal(left: str, right: str) -> bool:
    try:
        return float(left) == float(right)
    except ValueError:
        return left == right


class Evaluator:
    def __init__(self, fields: Fields) -> None:
        self.fields = fields

    def eval(self, node: Node) -> Value:
        kind = node.kind
        if kind == "literal":
            return list(node.value)
        if kind == "field":
            found = self.fields.get(node.value)
            return list(found) if found else None
        if kind == "and":
            return all(_truth(self.eval(arg), "AND") for arg in node.args)
        if kind == "or":
            return any(_truth(self.eval(arg), "OR") for arg in node.args)
        if kind == "not":
            return not _truth(self.eval(node.args[0]), "NOT")
        if kind == "compare":
            left = _single(self.eval(node.args[0]), "comparison")
            right = _single(self.eval(node.args[1]), "comparison")
            if left is None or right is None:
                return None  # Splunk: a comparison with null is null (false in if/case/mvfilter)
            same = _equal(left, right)
            return same if node.value == "==" else not same
        if kind == "call":
            return FUNCTIONS[node.value](self, node.args)
        raise Unsupported(kind)


def _arity(args: list[Node], low: int, high: int | None, name: str) -> None:
    if len(args) < low or (high is not None and len(args) > high):
        raise Unsupported(f"{name}() with {len(args)} arguments")


def _case_change(change: Callable[[str], str], name: str) -> Callable[[Evaluator, list[Node]], Value]:
    def call(ev: Evaluator, args: list[Node]) -> Value:
        _arity(args, 1, 1, name)
        value = _single(ev.eval(args[0]), f"{name}()")
        return None if value is None else [change(value)]
    return call


def _coalesce(ev: Evaluator, args: list[Node]) -> Value:
    _arity(args, 1, None, "coalesce")
    for arg in args:
        value = ev.eval(arg)
        if isinstance(value, bool):
            raise Unsupported("coalesce() of a condition")
        if value is not None:
            return value
    return None


def _if(ev: Evaluator, args: list[Node]) -> Value:
    _arity(args, 3, 3, "if")
    return ev.eval(args[1]) if _truth(ev.eval(args[0]), "if()") else ev.eval(args[2])


def _case(ev: Evaluator, args: list[Node]) -> Value:
    if len(args) % 2:
        raise Unsupported("case() with an odd number of arguments")
    for condition, value in zip(args[::2], args[1::2], strict=True):
        if _truth(ev.eval(condition), "case()"):
            return ev.eval(value)
    return None


def _isnotnull(ev: Evaluator, args: list[Node]) -> Value:
    _arity(args, 1, 1, "isnotnull")
    return ev.eval(args[0]) is not None


def _isnull(ev: Evaluator, args: list[Node]) -> Value:
    _arity(args, 1, 1, "isnull")
    return ev.eval(args[0]) is None


def _constant(value: Value, name: str) -> Callable[[Evaluator, list[Node]], Value]:
    def call(ev: Evaluator, args: list[Node]) -> Value:
        _arity(args, 0, 0, name)
        return value
    return call


def _mvfilter(ev: Evaluator, args: list[Node]) -> Value:
    """Splunk: the expression may read exactly one field, and is evaluated per value of it."""
    _arity(args, 1, 1, "mvfilter")
    names = args[0].fields()
    if len(names) != 1:
        raise Unsupported(f"mvfilter() reading {len(names)} fields (Splunk allows one)")
    (name,) = names
    kept = [value for value in ev.fields.get(name, [])
            if _truth(Evaluator({**ev.fields, name: [value]}).eval(args[0]), "mvfilter()")]
    return kept or None


def _mvappend(ev: Evaluator, args: list[Node]) -> Value:
    _arity(args, 1, None, "mvappend")
    out: list[str] = []
    for arg in args:
        value = ev.eval(arg)
        if isinstance(value, bool):
            raise Unsupported("mvappend() of a condition")
        out.extend(value or ())
    return out or None


def _mvdedup(ev: Evaluator, args: list[Node]) -> Value:
    _arity(args, 1, 1, "mvdedup")
    value = ev.eval(args[0])
    if isinstance(value, bool):
        raise Unsupported("mvdedup() of a condition")
    return None if value is None else list(dict.fromkeys(value))


FUNCTIONS: dict[str, Callable[[Evaluator, list[Node]], Value]] = {
    "lower": _case_change(str.lower, "lower"),
    "upper": _case_change(str.upper, "upper"),
    "coalesce": _coalesce,
    "if": _if,
    "case": _case,
    "isnotnull": _isnotnull,
    "isnull": _isnull,
    "null": _constant(None, "null"),
    "true": _constant(True, "true"),
    "mvfilter": _mvfilter,
    "mvappend": _mvappend,
    "mvdedup": _mvdedup,
}


def parse_eval(text: str) -> Node:
    return Parser(text).parse()


# --------------------------------------------------------------------------- FIELDALIAS, LOOKUP


def parse_aliases(text: str) -> list[tuple[str, str, bool]]:
    """`a AS b c ASNEW d` -> [(a, b, False), (c, d, True)] (True: ASNEW)."""
    words = text.split()
    if not words or len(words) % 3:
        raise Unsupported(f"FIELDALIAS {text!r}")
    out = []
    for source, how, target in zip(words[::3], words[1::3], words[2::3], strict=True):
        if how.upper() not in ("AS", "ASNEW"):
            raise Unsupported(f"FIELDALIAS {text!r}: {how!r} is neither AS nor ASNEW")
        out.append((source, target, how.upper() == "ASNEW"))
    return out


@dataclass
class Lookup:
    table: str
    inputs: list[tuple[str, str]]  # (lookup column, event field)
    outputs: list[tuple[str, str]]
    new_only: bool  # OUTPUTNEW


def _pairs(words: list[str], text: str) -> list[tuple[str, str]]:
    """`col [AS field] ...` -> [(col, field)]."""
    pairs = []
    at = 0
    while at < len(words):
        if at + 1 < len(words) and words[at + 1].upper() == "AS":
            if at + 2 >= len(words):
                raise Unsupported(f"LOOKUP {text!r}")
            pairs.append((words[at], words[at + 2]))
            at += 3
        else:
            pairs.append((words[at], words[at]))
            at += 1
    return pairs


def parse_lookup(text: str) -> Lookup:
    words = text.replace(",", " ").split()
    upper = [w.upper() for w in words]
    where = next((i for i, w in enumerate(upper) if w in ("OUTPUT", "OUTPUTNEW")), None)
    if len(words) < 2 or where is None or where < 2 or where == len(words) - 1:
        raise Unsupported(f"LOOKUP {text!r} (this model needs an explicit OUTPUT/OUTPUTNEW list)")
    return Lookup(words[0], _pairs(words[1:where], text), _pairs(words[where + 1:], text), upper[where] == "OUTPUTNEW")


# --------------------------------------------------------------------------- a stanza at search time

_MODELLED = ("KV_MODE", "SHOULD_LINEMERGE", "LINE_BREAKER", "TRUNCATE", "TIME_PREFIX", "TIME_FORMAT",
             "MAX_TIMESTAMP_LOOKAHEAD")


class SearchTime:
    """The search-time fields of one props.conf stanza's events."""

    def __init__(self, stanza: dict[str, str], transforms: dict[str, dict[str, str]], lookups: Path) -> None:
        self.aliases: list[tuple[str, str, bool]] = []
        self.evals: dict[str, Node] = {}
        self.lookups: list[Lookup] = []
        for key, value in stanza.items():
            kind, _, _name = key.partition("-")
            if kind == "FIELDALIAS":
                self.aliases.extend(parse_aliases(value))
            elif kind == "EVAL":
                self.evals[key.partition("-")[2]] = parse_eval(value)
            elif kind == "LOOKUP":
                self.lookups.append(parse_lookup(value))
            elif key not in _MODELLED:
                raise Unsupported(f"props.conf setting {key} is not modelled")
        if stanza.get("KV_MODE") != "json":
            raise Unsupported("only KV_MODE = json is modelled")
        self.tables = {lookup.table: self._table(lookup.table, transforms, lookups) for lookup in self.lookups}

    @staticmethod
    def _table(name: str, transforms: dict[str, dict[str, str]], lookups: Path) -> tuple[list[dict[str, str]], bool]:
        spec = transforms.get(name)
        if spec is None or "filename" not in spec:
            raise Unsupported(f"lookup {name}: no transforms.conf stanza with a filename")
        with (lookups / spec["filename"]).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return rows, spec.get("case_sensitive_match", "true").lower() not in ("false", "0")

    def read_fields(self) -> set[str]:
        """Every field name the stanza's aliases, EVALs and lookups read."""
        names = {source for source, _, _ in self.aliases}
        names.update(*(node.fields() for node in self.evals.values()))
        for lookup in self.lookups:
            names.update(event_field for _, event_field in lookup.inputs)
        return names

    def fields(self, doc: Any) -> Fields:
        """KV_MODE = json, then FIELDALIAS, then EVAL, then LOOKUP."""
        extracted = kv_json(doc)
        aliased = dict(extracted)
        for source, target, new_only in self.aliases:
            value = extracted.get(source)
            if new_only:
                if value and target not in extracted:
                    aliased[target] = list(value)
            elif value:
                aliased[target] = list(value)
            else:
                aliased.pop(target, None)
        results = {name: Evaluator(aliased).eval(node) for name, node in self.evals.items()}
        out = dict(aliased)
        for name, value in results.items():
            if isinstance(value, bool):
                raise Unsupported(f"EVAL-{name} yields a condition, not a value")
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        for lookup in self.lookups:
            self._apply(lookup, out)
        return out

    def _apply(self, lookup: Lookup, out: Fields) -> None:
        rows, case_sensitive = self.tables[lookup.table]
        wanted = []
        for column, event_field in lookup.inputs:
            value = out.get(event_field)
            if value is None:
                return
            if len(value) != 1:
                raise Unsupported(f"lookup {lookup.table} on multivalue {event_field}")
            wanted.append((column, value[0] if case_sensitive else value[0].lower()))
        for row in rows:
            if all((row[c] if case_sensitive else row[c].lower()) == v for c, v in wanted):
                for column, event_field in lookup.outputs:
                    if not (lookup.new_only and event_field in out):
                        out[event_field] = [row[column]]
                return


# --------------------------------------------------------------------------- timestamps

# TIME_FORMAT variables the add-on uses -> a regex group (Splunk's strptime flavour: %N is the
# subsecond digits, up to 9 by default; %3N exactly milliseconds; %s epoch seconds).
_TIME_PARTS = {"%Y": r"(?P<Y>\d{4})", "%m": r"(?P<m>\d{2})", "%d": r"(?P<d>\d{2})", "%H": r"(?P<H>\d{2})",
               "%M": r"(?P<M>\d{2})", "%S": r"(?P<S>\d{2})", "%N": r"(?P<N>\d{1,9})", "%3N": r"(?P<N>\d{3})",
               "%Z": r"(?P<Z>Z|UTC)", "%s": r"(?P<s>\d{10})"}


def event_time(line: str, stanza: dict[str, str]) -> float | None:
    """The time Splunk takes from one event's text: TIME_PREFIX, then at most
    MAX_TIMESTAMP_LOOKAHEAD characters read with TIME_FORMAT (without one: RFC 3339 text)."""
    from datetime import UTC, datetime

    prefix = re.search(stanza["TIME_PREFIX"], line)
    if prefix is None:
        return None
    text = line[prefix.end():prefix.end() + int(stanza["MAX_TIMESTAMP_LOOKAHEAD"])]
    time_format = stanza.get("TIME_FORMAT")
    if time_format is None:
        found = re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", text)
        return None if found is None else datetime.fromisoformat(found.group().replace("Z", "+00:00")).timestamp()
    pattern = ""
    for part in re.split(r"(%3N|%[A-Za-z])", time_format):
        if part.startswith("%"):
            if part not in _TIME_PARTS:
                raise Unsupported(f"TIME_FORMAT variable {part}")
            pattern += _TIME_PARTS[part]
        else:
            pattern += re.escape(part)
    match = re.match(pattern, text)
    if match is None:
        return None
    got = match.groupdict()
    fraction = float("0." + got["N"]) if got.get("N") else 0.0
    if got.get("s"):
        return int(got["s"]) + fraction
    moment = datetime(int(got["Y"]), int(got["m"]), int(got["d"]), int(got["H"]), int(got["M"]), int(got["S"]),
                      tzinfo=UTC)
    return moment.timestamp() + fraction
