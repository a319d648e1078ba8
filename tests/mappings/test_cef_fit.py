"""`mappings.cef.fit`: an encoded CEF line within a byte budget (module docstring, "Fitting a
line into a budget"). Every result is checked against the strict parser of
`tests/cef_parser.py` and against a model of the rules written here on the parsed (unescaped)
values, so the byte-level code in `cef.py` is compared with an independent reading of them."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model.schema import Alert, TenantRef
from mappings import cef
from mappings.graph_alerts_v2 import normalise
from tests.cef_parser import CefEvent, parse_bytes
from tests.mappings.cef_keys import CEF_KEYS, EVIDENCE_KEYS, split_key

TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."
MARK = "\u2026"
MARK_BYTES = MARK.encode()
HEADER = ("version", "vendor", "product", "device_version", "signature_id", "name", "severity")
# What the docstring promises is never cut.
NEVER = ("rt", "start", "end", "deviceCustomDate1", "externalId", "act", "dst", "src", "c6a2", "c6a3", "fileHash",
         "cs1", "cs2", "cs3", "cs5", "cs6")
# The evidence-key groups of FIT_ORDER, by the kinds of identity rows they hold; an evidence
# key of any other kind is never cut (only dropped whole, last, from the end of the line).
GROUPS = {"ms*:command,url": ("command", "url"), "ms*:name,registry": ("name", "registry")}


def kind_of(key: str) -> str | None:
    """The identity kind of an evidence key; None for any other key."""
    split = split_key(key)
    return None if split is None else EVIDENCE_KEYS[split[0]][1].kind


# --------------------------------------------------------------------------- the model


def escape_header(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def escape_extension(text: str) -> str:
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def header_values(event: CefEvent) -> list[str]:
    return [f"CEF:{event.version}", event.vendor, event.product, event.device_version, event.signature_id,
            event.name, event.severity]


def rebuild(event: CefEvent, values: dict[str, str], drop: int = 0) -> bytes:
    """The line of `event` with `values` (unescaped; "Name" = the header Name) put in, and
    its last `drop` keys left out."""
    fields = header_values(event)
    fields[5] = values.get("Name", fields[5])
    items = list(event.extension.items())
    extension = " ".join(f"{key}={escape_extension(values.get(key, value))}"
                         for key, value in items[: len(items) - drop])
    return ("|".join(escape_header(field) for field in fields) + "|" + extension).encode()


def cuttable(event: CefEvent) -> dict[str, str]:
    """The values `fit` may cut, in the documented order, with their escaped form."""
    values = {"Name": event.name, **event.extension}
    out = {}
    for entry in cef.FIT_ORDER:
        keys = [key for key in event.extension if kind_of(key) in GROUPS[entry]] if entry in GROUPS else [entry]
        for key in keys:
            if key in values:
                out[key] = escape_header(values[key]) if key == "Name" else escape_extension(values[key])
    return out


def droppable(event: CefEvent) -> int:
    """How many keys at the end of the line are evidence keys (what `fit` may drop)."""
    keys = list(event.extension)
    count = 0
    while count < len(keys) and kind_of(keys[len(keys) - 1 - count]) is not None:
        count += 1
    return count


def shortened_to(value: str, escaped_limit: int, header: bool) -> str:
    """The longest prefix of `value` (whole characters) whose escaped UTF-8 form plus the
    marker fits in `escaped_limit` bytes, then the marker."""
    escape = escape_header if header else escape_extension
    room, size = escaped_limit - len(MARK_BYTES), 0
    for index, char in enumerate(value):
        size += len(escape(char).encode())
        if size > room:
            return value[:index] + MARK
    raise AssertionError("not shortened")


def expected_shortened(line: bytes, event: CefEvent, budget: int) -> bytes | None:
    """The documented SHORTENED line, worked out on unescaped values; None when the rules
    cannot reach the budget (CUT)."""
    excess = len(line) - budget
    values: dict[str, str] = {}
    for key, escaped in cuttable(event).items():
        length = len(escaped.encode())
        if length <= len(MARK_BYTES):
            continue
        header = key == "Name"
        original = event.name if header else event.extension[key]
        values[key] = shortened_to(original, max(len(MARK_BYTES), length - excess), header)
        new = escape_header(values[key]) if header else escape_extension(values[key])
        excess -= length - len(new.encode())
        if excess <= 0:
            return rebuild(event, values)
    # Every cuttable value is the bare marker: drop evidence keys from the end, last first.
    for drop in range(1, droppable(event) + 1):
        line = rebuild(event, values, drop)
        if len(line) <= budget:
            return line
    return None


def expected_cut(line: bytes, budget: int) -> bytes:
    """The longest prefix of at most `budget - 3` bytes that is whole UTF-8 and does not end
    inside an escape (an odd run of backslashes), then the marker."""
    for end in range(budget - len(MARK_BYTES), -1, -1):
        kept = line[:end]
        try:
            kept.decode()
        except UnicodeDecodeError:
            continue
        if (len(kept) - len(kept.rstrip(b"\\"))) % 2 == 0:
            return kept + MARK_BYTES
    raise AssertionError("unreachable")


def check_fit(line: bytes, budget: int, event: CefEvent | None = None) -> tuple[bytes, cef.Fit]:
    """`fit(line, budget)` against the documented rules; returns its result."""
    out, how = cef.fit(line, budget)
    assert isinstance(out, bytes) and isinstance(how, cef.Fit)
    assert len(out) <= budget, (len(out), budget)
    text = out.decode("utf-8")  # strict: no broken UTF-8 sequence
    assert not re.search("[\r\n\x00]", text) and len(text.splitlines()) <= 1
    if len(line) <= budget:
        assert how is cef.Fit.INTACT and out is line
        return out, how
    event = event or parse_bytes(line, known_keys=CEF_KEYS)
    assert rebuild(event, {}) == line  # (the model reads the line as `encode` wrote it)
    expected = expected_shortened(line, event, budget)
    if expected is None:
        assert how is cef.Fit.CUT
        assert out == expected_cut(line, budget)
        kept = out[: -len(MARK_BYTES)]
        assert line.startswith(kept) and out.endswith(MARK_BYTES)
        assert (len(kept) - len(kept.rstrip(b"\\"))) % 2 == 0  # no dangling escape
        assert len(kept) >= budget - len(MARK_BYTES) - 3  # at most a partial character dropped
        return out, how
    assert how is cef.Fit.SHORTENED
    assert out == expected
    check_shortened(line, out, event, budget)
    return out, how


def check_shortened(line: bytes, out: bytes, event: CefEvent, budget: int) -> None:
    """The SHORTENED promises as properties, on top of the model."""
    new = parse_bytes(out, known_keys=CEF_KEYS)
    assert [getattr(new, f) for f in HEADER if f != "name"] == [getattr(event, f) for f in HEADER if f != "name"]
    kept = list(new.extension)
    assert kept == list(event.extension)[: len(kept)]  # same keys, same order; maybe some dropped at the end
    dropped = list(event.extension)[len(kept):]
    assert all(kind_of(key) is not None for key in dropped)  # only evidence keys are dropped
    before = {"Name": event.name, **event.extension}
    after = {"Name": new.name, **new.extension}
    cut_keys = cuttable(event)
    if dropped:  # only after every value that may be cut is the bare marker
        assert all(after.get(key, MARK) == MARK for key, escaped in cut_keys.items() if len(escaped.encode()) > 3)
        return
    changed = [key for key in before if after[key] != before[key]]
    for key in changed:
        assert key in cut_keys and key not in NEVER
        assert after[key].endswith(MARK) and before[key].startswith(after[key][: -len(MARK)])
        escape = escape_header if key == "Name" else escape_extension
        assert len(escape(after[key]).encode()) < len(escape(before[key]).encode())  # (on the wire)
    # In the documented order: every value before the last one cut is the bare marker.
    eligible = [key for key, escaped in cuttable(event).items() if len(escaped.encode()) > len(MARK_BYTES)]
    changed.sort(key=list(cut_keys).index)
    assert changed == eligible[: len(changed)]
    assert all(after[key] == MARK for key in changed[:-1])
    if after[changed[-1]] != MARK:  # cut only as far as needed: less than one character to spare
        assert budget - len(out) <= 3


# --------------------------------------------------------------------------- inputs


def _alert(**properties: Any) -> Alert:
    raw = {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", **properties}
    return normalise(raw, TENANT, INGESTED)


@cache
def factory_raws() -> list[dict[str, Any]]:
    factory = pytest.importorskip("tests.peers.alert_factory")
    return factory.make_alerts(60, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3), seed=3)


def longest_raw() -> dict[str, Any]:
    """The factory alert whose line is longest (the most evidence keys)."""
    return max(factory_raws(), key=lambda raw: len(cef.encode(normalise(raw, TENANT, INGESTED))))


HOSTILE = "A \\ b=c\nd\re é — 😀 x\\=y |z| "  # every escape, 2-, 3- and 4-byte characters


# --------------------------------------------------------------------------- tests


def test_intact_returns_the_same_object() -> None:
    for raw in factory_raws()[:20]:
        line = cef.encode(normalise(raw, TENANT, INGESTED))
        for budget in (len(line), len(line) + 1, max(2048, len(line)), 65507):
            out, how = cef.fit(line, budget)
            assert out is line and how is cef.Fit.INTACT
    assert cef.fit(b"", 0) == (b"", cef.Fit.INTACT)


def test_long_description_shortens_only_msg() -> None:
    alert = normalise(dict(longest_raw(), description="Lorem ipsum dolor sit amet. " * 360), TENANT, INGESTED)
    line = cef.encode(alert)
    budget = len(line) - 500  # (msg holds 1023 bytes)
    out, how = check_fit(line, budget)
    assert how is cef.Fit.SHORTENED and budget - 3 <= len(out) <= budget
    before, after = parse_bytes(line, known_keys=CEF_KEYS), parse_bytes(out, known_keys=CEF_KEYS)
    assert after.name == before.name
    assert {k for k in before.extension if after.extension[k] != before.extension[k]} == {"msg"}
    assert after.extension["msg"].endswith(MARK)
    assert before.extension["msg"].startswith(after.extension["msg"][: -len(MARK)])


def test_hostile_description_at_every_budget() -> None:
    raw = dict(longest_raw(), description=HOSTILE * 100, title=("T|i\\tle é😀 " * 40))
    line = cef.encode(normalise(raw, TENANT, INGESTED))
    event = parse_bytes(line, known_keys=CEF_KEYS)
    seen = set()
    for budget in range(600, 2049):
        out, how = check_fit(line, budget, event)
        seen.add(how)
        kept = out[: -len(MARK_BYTES)] if how is cef.Fit.CUT else out
        assert (len(kept) - len(kept.rstrip(b"\\"))) % 2 == 0
    assert seen >= {cef.Fit.SHORTENED}


def test_every_budget_of_factory_lines() -> None:
    # From a budget that cuts the header to one past the line: every outcome and boundary.
    for raw in factory_raws()[:3]:
        line = cef.encode(normalise(raw, TENANT, INGESTED))
        event = parse_bytes(line, known_keys=CEF_KEYS)
        budgets = [*range(3, len(line), 3), len(line), len(line) + 1]
        outcomes = {check_fit(line, budget, event)[1] for budget in budgets}
        assert outcomes == set(cef.Fit)


def test_priority_order_ids_last_or_never() -> None:
    raw = dict(longest_raw(), description="d" * 900, title="Title " * 20)
    line = cef.encode(normalise(raw, TENANT, INGESTED))
    before = parse_bytes(line, known_keys=CEF_KEYS)
    # Just over what cutting msg to the bare marker gives: the next value in the order goes too.
    escaped_msg = len(("msg=" + "d" * 900).encode())
    budget = len(line) - (escaped_msg - len("msg=") - len(MARK_BYTES)) - 5
    out, how = check_fit(line, budget, before)
    after = parse_bytes(out, known_keys=CEF_KEYS)
    assert how is cef.Fit.SHORTENED and after.extension["msg"] == MARK
    present = [key for key in cuttable(before) if key != "Name"]
    second = present[1]
    assert after.extension[second] != before.extension[second] and after.extension[second].endswith(MARK)
    assert all(after.extension[key] == before.extension[key] for key in present[2:])
    assert after.name == before.name
    # As small as the rules go: every free-text value is the marker, the ids are whole.
    floor = len(line) - sum(len(v.encode()) - 3 for v in cuttable(before).values() if len(v.encode()) > 3)
    out, how = check_fit(line, floor, before)
    after = parse_bytes(out, known_keys=CEF_KEYS)
    assert how is cef.Fit.SHORTENED and len(out) == floor
    assert after.name == MARK and all(after.extension[key] == MARK for key in present)
    for key in NEVER:
        assert after.extension.get(key) == before.extension.get(key)
    for key, value in before.extension.items():  # evidence ids, addresses, hashes ...: whole
        if kind_of(key) is not None and key not in present:
            assert after.extension[key] == value
    # Below that, evidence keys are dropped whole from the end of the line, last first ...
    assert droppable(before) > 0
    out, how = check_fit(line, floor - 1, before)
    after = parse_bytes(out, known_keys=CEF_KEYS)
    assert how is cef.Fit.SHORTENED and list(after.extension) == list(before.extension)[:-1]
    # ... down to the line with every evidence key dropped; one byte less is cut.
    values = {key: MARK for key, escaped in cuttable(before).items() if len(escaped.encode()) > 3}
    bottom = rebuild(before, values, droppable(before))
    out, how = check_fit(line, len(bottom), before)
    assert how is cef.Fit.SHORTENED and out == bottom
    for key in NEVER:
        assert parse_bytes(out, known_keys=CEF_KEYS).extension.get(key) == before.extension.get(key)
    assert cef.fit(line, len(bottom) - 1)[1] is cef.Fit.CUT


def test_tiny_budget_is_cut_and_marked() -> None:
    line = cef.encode(_alert(title="x\\|" * 40, description=HOSTILE * 10))
    out, how = check_fit(line, 100)
    assert how is cef.Fit.CUT and len(out) <= 100 and out.endswith(MARK_BYTES)
    for budget in range(3, 160):  # the cut lands on every byte of the escaped title
        out, how = check_fit(line, budget)
        assert how is cef.Fit.CUT
        kept = out[: -len(MARK_BYTES)]
        assert (len(kept) - len(kept.rstrip(b"\\"))) % 2 == 0


def test_budget_without_room_for_the_marker() -> None:
    with pytest.raises(ValueError, match="marker"):
        cef.fit(b"CEF:0|a|b|c|d|e|1|msg=x", 2)
    assert cef.fit(b"CEF:0|a|b|c|d|e|1|msg=x", 3) == (MARK_BYTES, cef.Fit.CUT)


def test_a_line_not_from_encode_is_cut() -> None:
    assert cef.fit(b"x" * 100, 50) == (b"x" * 47 + MARK_BYTES, cef.Fit.CUT)
    assert cef.fit(b"CEF:0|a|b|c|d|e|1|" + b"y" * 100, 50)[1] is cef.Fit.CUT  # no key=value


def test_docstring_documents_the_order() -> None:
    section = cef.__doc__.split("Fitting a line into a budget", 1)[1]
    position = 0
    for key in cef.FIT_ORDER:  # named in this order
        position = section.index("header Name" if key == "Name" else f"`{key}`", position)
    never = section.split("never cut", 1)[1]
    assert all(f"`{key}`" in never for key in NEVER)


# --------------------------------------------------------------------------- hostile input

_SPECIAL = ["|", "=", "\\", "\r", "\n", "\x00", "\t", " ", "\u2028", "\x85", "é", "—", "😀", "\U0010fffd", " k=",
            "\\n", "\\|", "…"]
_PIECE = st.one_of(st.characters(), st.sampled_from(_SPECIAL))
_SHORT = st.lists(_PIECE, max_size=12).map("".join)
_LONG = st.builds(lambda part, times: part * times, st.lists(_PIECE, min_size=1, max_size=4).map("".join),
                  st.integers(5, 500))
TEXT = st.one_of(_SHORT, _LONG)
MAYBE = st.one_of(st.none(), TEXT)
EVIDENCE = st.one_of(
    st.fixed_dictionaries({"@odata.type": st.just(NS + "deviceEvidence")},
                          optional={"deviceDnsName": MAYBE, "lastIpAddress": st.ip_addresses().map(str)}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "userEvidence"),
                           "userAccount": st.fixed_dictionaries({}, optional={"userPrincipalName": MAYBE})}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "fileEvidence"),
                           "fileDetails": st.fixed_dictionaries({}, optional={"fileName": MAYBE, "filePath": MAYBE,
                                                                              "sha256": MAYBE})}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "urlEvidence")}, optional={"url": MAYBE}),
)


@st.composite
def hostile_alerts(draw: st.DrawFn) -> Alert:
    raw = draw(st.fixed_dictionaries(
        # any text an id may be: the mapping refuses blank ids and lone surrogates
        {"id": st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=50).filter(
            lambda text: not text.isspace())},
        optional={"title": MAYBE, "description": MAYBE, "category": MAYBE, "detectionSource": MAYBE,
                  "alertWebUrl": MAYBE, "incidentWebUrl": MAYBE, "incidentId": MAYBE,
                  "mitreTechniques": st.lists(TEXT, max_size=3), "evidence": st.lists(EVIDENCE, max_size=4)},
    ))
    raw["lastUpdateDateTime"] = "2026-11-29T10:00:00.1234567Z"
    return normalise(raw, TenantRef(id=draw(_SHORT), label=draw(_SHORT)), INGESTED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_alerts(), st.integers(64, 4096), st.floats(0.3, 1.0))
def test_hostile_text_any_budget(alert: Alert, budget: int, fraction: float) -> None:
    line = cef.encode(alert)
    event = parse_bytes(line, known_keys=CEF_KEYS)
    for size in (budget, max(64, int(len(line) * fraction))):
        out, how = check_fit(line, size, event)
        if how is not cef.Fit.CUT:
            parse_bytes(out, known_keys=CEF_KEYS)
