"""Test alerts generated from Microsoft's own Graph v1.0 metadata (the extract in
`../shared/reference/official/graph-v1.0-security-alert.json`): every evidence type with
every property filled, nested objects included, and alerts that use every member of every
enum the alert and its evidence have. A type Microsoft adds in a later metadata update is
covered by replacing that one file.

Values are deterministic and told apart by type and property (so a test can find each one
in an output line), and shaped as a reader expects them where the name says what they are:
addresses are IP addresses, hashes are hex of their length, e-mail addresses and URLs look
like ones, ids ending in `Id` are GUIDs. `hostile=True` puts CEF and syslog specials
(`|`, `=`, `\\`, CR, LF, `"`, `]`) into every free-text value.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "reference" / "official" / "graph-v1.0-security-alert.json"
NS = "microsoft.graph.security."
ALERT_TYPE = NS + "alert"
EVIDENCE_BASE = NS + "alertEvidence"
TENANT_ID = "3adb963c-8e61-48e8-a06d-6dbb0dacea39"
HOSTILE = ' |a=b\\c\r\nd"e]f'
MAX_DEPTH = 3  # nested evidence inside evidence (pods hold containers hold images ...)

# Property names that say what their text is (lower case; checked as "ends with").
_IP_NAMES = ("ipaddress", "senderip", "ipinterfaces", "allowedipaddresses", "clusterip")
_MAC_NAMES = ("macaddress",)
_URL_NAMES = ("url", "weburl", "baseurl", "devicepagelink")
_MAIL_NAMES = ("emailaddress", "primaryaddress", "mailboxprimaryaddress", "recipientemailaddress", "sender",
               "recipient", "submitter", "senderfromaddress", "recipients", "suspiciousrecipients", "email", "upn",
               "userprincipalname", "assignedto")
_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha256ac": 64, "signaturehash": 64, "etag": 32}
_FREE_TEXT = ("description", "title", "subject", "recommendedactions", "comment", "instructions", "query",
              "processcommandline", "registryvalue", "displayname", "name", "useragent")


@dataclass(frozen=True)
class Schema:
    evidence_types: list[str]  # full names, e.g. microsoft.graph.security.deviceEvidence
    types: dict[str, Any]
    enums: dict[str, Any]

    def properties(self, type_name: str) -> dict[str, Any]:
        """Every property of a type, its base types' included (base first)."""
        spec = self.types[type_name]
        inherited = self.properties(spec["baseType"]) if spec.get("baseType") in self.types else {}
        return {**inherited, **spec["properties"]}

    def declaring(self, type_name: str, prop: str) -> str:
        """The type that declares `prop` (itself, or the base type it inherits it from)."""
        spec = self.types[type_name]
        if prop in spec["properties"] or spec.get("baseType") not in self.types:
            return type_name
        return self.declaring(spec["baseType"], prop)

    def concrete_of(self, type_name: str) -> str:
        """A type a value of `type_name` can be sent as (the abstract evidence base -> the first
        evidence type that is not abstract)."""
        if type_name == EVIDENCE_BASE:
            return NS + "azureResourceEvidence"
        return type_name


def schema() -> Schema:
    """The official extract; the calling test skips, saying why, where it is absent."""
    if not OFFICIAL.is_file():
        pytest.skip(f"{OFFICIAL} is not here (the tests read Microsoft's metadata extract from ../shared)")
    return _load()


@cache
def _load() -> Schema:
    data = json.loads(OFFICIAL.read_text(encoding="utf-8"))
    return Schema(data["evidenceTypes"], data["types"], data["enums"])


def short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


class Values:
    """Deterministic values, a new one per call, each naming where it stands."""

    def __init__(self, seed: str, hostile: bool = False) -> None:
        self.seed = seed
        self.hostile = hostile
        self.count = 0

    def _n(self) -> int:
        self.count += 1
        return self.count

    def _digest(self, where: str, n: int) -> bytes:
        return hashlib.sha256(f"{self.seed}/{where}/{n}".encode()).digest()

    def text(self, where: str, prop: str) -> str:
        n = self._n()
        low = prop.lower()
        if low.endswith(_IP_NAMES):
            return f"10.{n % 250 + 1}.{len(where) % 250}.{n % 200 + 20}" if n % 3 else f"2001:db8::{n:x}"
        if low.endswith(_MAC_NAMES):
            return "-".join(f"{b:02X}" for b in self._digest(where, n)[:6])
        if low in _HEX_LENGTHS or low == "value" and "hash" in where.lower():
            return self._digest(where, n).hex()[: _HEX_LENGTHS.get(low, 64)]
        if low.endswith(_URL_NAMES):
            return f"https://{short(where).lower()}.example.test/{prop}/{n}?q={n}"
        if low.endswith(_MAIL_NAMES):
            return f"{prop.lower()}{n}@{short(where).lower()}.example.test"
        if low.endswith("id") or low.endswith("guid"):
            return str(uuid.UUID(bytes=self._digest(where, n)[:16], version=4))
        text = f"{short(where)}.{prop}-{n}"
        if self.hostile and low.endswith(_FREE_TEXT):
            text = f"{text}{HOSTILE}{n}"
        return text

    def number(self, prop: str, integer: bool) -> int | float:
        n = self._n()
        if prop.lower().endswith("port"):
            return 1000 + n
        return 100_000 + n if integer else 47.5 + n / 8

    def time(self) -> str:
        n = self._n()
        return f"2026-11-{n % 28 + 1:02d}T{n % 24:02d}:{n % 60:02d}:{(n * 7) % 60:02d}.{n:07d}Z"


class Generator:
    def __init__(self, official: Schema, values: Values, enum_choice: dict[str, str] | None = None) -> None:
        self.schema = official
        self.values = values
        self.enum_choice = enum_choice or {}  # "type.property" -> member, for the enum alerts

    def value(self, owner: str, prop: str, spec: dict[str, Any], depth: int) -> Any:
        one = self._one(owner, prop, spec["type"], depth)
        if one is None:
            return None
        if not spec["collection"]:
            return one
        return [one, self._one(owner, prop, spec["type"], depth)]

    def _one(self, owner: str, prop: str, type_name: str, depth: int) -> Any:  # noqa: PLR0911 - one per Edm type
        if type_name == "Edm.String":
            return self.values.text(owner, prop)
        if type_name == "Edm.Guid":
            return self.values.text(owner, prop + "Guid")
        if type_name in ("Edm.Int32", "Edm.Int64"):
            return self.values.number(prop, integer=True)
        if type_name == "Edm.Double":
            return self.values.number(prop, integer=False)
        if type_name == "Edm.Boolean":
            return True
        if type_name == "Edm.DateTimeOffset":
            return self.values.time()
        if type_name in self.schema.enums:
            declared = short(self.schema.declaring(owner, prop))
            return self.enum_choice.get(f"{declared}.{prop}") or _first_known(self.schema.enums[type_name])
        if short(type_name) == "dictionary":  # an open type: any keys
            return {f"{prop}Key": self.values.text(owner, prop + "Value")}
        if type_name in self.schema.types:
            if depth >= MAX_DEPTH:
                return None
            return self.complex(self.schema.concrete_of(type_name), depth + 1)
        raise ValueError(f"{owner}.{prop}: type {type_name} is not in the extract")

    def complex(self, type_name: str, depth: int = 0) -> dict[str, Any]:
        """An object of `type_name` with every property filled; an evidence type carries its
        @odata.type, as Graph sends it."""
        item: dict[str, Any] = {}
        if self._is_evidence(type_name):
            item["@odata.type"] = "#" + type_name
        for prop, spec in self.schema.properties(type_name).items():
            value = self.value(type_name, prop, spec, depth)
            if value is not None:
                item[prop] = value
        return item

    def _is_evidence(self, type_name: str) -> bool:
        while type_name in self.schema.types:
            if type_name == EVIDENCE_BASE:
                return True
            type_name = self.schema.types[type_name].get("baseType", "")
        return False

    def alert(self, ident: str, evidence: list[dict[str, Any]]) -> dict[str, Any]:
        """An alert with every property filled (its own enums as chosen), carrying `evidence`."""
        alert = self.complex(ALERT_TYPE)
        alert |= {"id": ident, "tenantId": TENANT_ID, "providerAlertId": ident, "evidence": evidence,
                  "severity": self.enum_choice.get("alert.severity", "high"),
                  "lastUpdateDateTime": "2026-11-28T10:00:00.1234567Z"}
        return alert


def _first_known(enum: dict[str, Any]) -> str:
    return next((m for m in enum["members"] if m not in ("unknown", "none")), enum["members"][0])


def evidence_alerts(hostile: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(evidence type short name, alert): one alert per official evidence type, carrying one
    evidence of that type with every property filled."""
    official = schema()
    for type_name in official.evidence_types:
        name = short(type_name)
        generator = Generator(official, Values(name, hostile))
        yield name, generator.alert(f"da-{name}", [generator.complex(type_name)])


def every_alert() -> list[tuple[str, dict[str, Any]]]:
    """(name, alert) of the whole set: one per evidence type (plain and hostile text), one per
    enum member."""
    alerts = [(name, raw) for name, raw in evidence_alerts()]
    alerts += [(f"hostile {name}", raw) for name, raw in evidence_alerts(hostile=True)]
    alerts += [(f"{enum}={member}", raw) for enum, member, raw in enum_alerts()]
    return alerts


def enum_uses(official: Schema) -> dict[str, list[tuple[str, str]]]:
    """Enum type -> every (owner type, property) of the alert and its evidence that has it."""
    uses: dict[str, list[tuple[str, str]]] = {}
    for owner in [ALERT_TYPE, *official.evidence_types, *official.types]:
        if owner not in official.types:
            continue
        for prop, spec in official.types[owner]["properties"].items():
            if spec["type"] in official.enums:
                uses.setdefault(spec["type"], [])
                if (owner, prop) not in uses[spec["type"]]:
                    uses[spec["type"]].append((owner, prop))
    return uses


def enum_alerts() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(enum, member, alert): for every member of every enum, an alert where each property of
    that enum type holds it (an evidence property: in an evidence of its owner type)."""
    official = schema()
    for enum, owners in sorted(enum_uses(official).items()):
        for member in official.enums[enum]["members"]:
            choice = {f"{short(owner)}.{prop}": member for owner, prop in owners}
            generator = Generator(official, Values(f"{short(enum)}-{member}"), choice)
            evidence_types = sorted({owner for owner, _ in owners if owner in official.evidence_types})
            if any(owner == EVIDENCE_BASE for owner, _ in owners):
                evidence_types.append(NS + "ipEvidence")  # a base property: any evidence type has it
            complex_owners = {owner for owner, _ in owners if owner not in official.evidence_types
                              and owner not in (ALERT_TYPE, EVIDENCE_BASE)}
            # A complex type (e.g. kubernetesServicePort) travels inside the evidence that holds it.
            evidence_types += sorted(_holders(official, complex_owners))
            evidence = [generator.complex(t) for t in evidence_types]
            yield short(enum), member, generator.alert(f"enum-{short(enum)}-{member}", evidence)


def _holders(official: Schema, complex_types: set[str]) -> set[str]:
    return {t for t in official.evidence_types for spec in official.types[t]["properties"].values()
            if spec["type"] in complex_types}


def graph_values(item: Any, path: str) -> list[Any]:
    """The values at a property path (`a.b`, `a[].b`: every item of list a) of a Graph object."""
    found = [item]
    for part in path.split("."):
        many = part.endswith("[]")
        name = part[:-2] if many else part
        step: list[Any] = []
        for value in found:
            got = value.get(name) if isinstance(value, dict) else None
            if got is None:
                continue
            step.extend(got if isinstance(got, list) else [got])
        found = step
    return found
