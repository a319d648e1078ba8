"""Issue 16, CEF: every evidence type keeps its identity. For the alerts generated from
Microsoft's Graph v1.0 metadata (one per evidence type, every property filled; plain and
with CEF/syslog specials in every free-text value), every identifying value (each row of
`mappings.evidence.IDENTITIES`, read from the raw Graph alert) is a whole value of the key the
documented rule names for it (`tests/mappings/cef_keys.py`), in a line the strict parser
reads."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from core.model.schema import TenantRef
from mappings import cef
from mappings.evidence import IDENTITIES
from mappings.graph_alerts_v2 import normalise
from tests.cef_parser import KNOWN_KEYS, parse_bytes
from tests.mappings.cef_keys import CEF_KEYS, EVIDENCE_KEYS, evidence_key, numbered, split_key
from tests.mappings.official_alerts import TENANT_ID, evidence_alerts, graph_values

TENANT = TenantRef(id=TENANT_ID, label="contoso")
INGESTED = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MIN_COVERED = 44  # of the 48 types of the v1.0 metadata (issue 16, point 3)


def _text(value: Any) -> str:
    return str(value)


def _missing(evidence_type: str, alert: dict[str, Any]) -> list[str]:
    """The identifying values of the alert's evidence that its CEF line does not hold whole
    under their key; [] when the type is fully covered."""
    line = cef.encode(normalise(alert, TENANT, INGESTED))
    extension = parse_bytes(line, known_keys=CEF_KEYS).extension
    (evidence,) = alert["evidence"]
    missing = []
    for row in IDENTITIES[evidence_type]:
        key = evidence_key(evidence_type, row)
        held = [extension[k] for n in range(1, 65) if (k := numbered(key, n)) in extension]
        sent = [_text(value) for value in graph_values(evidence, row.graph)]
        assert sent, f"{evidence_type}.{row.graph}: the generated alert has no value there"
        missing += [f"{row.graph}={value!r} (key {key})" for value in sent if value not in held]
    return missing


@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile"])
def test_every_evidence_type_keeps_its_identifying_values(hostile: bool) -> None:
    covered, gaps = [], {}
    for evidence_type, alert in evidence_alerts(hostile):
        missing = _missing(evidence_type, alert)
        if missing:
            gaps[evidence_type] = missing
        else:
            covered.append(evidence_type)
    print(f"CEF keeps every identifying value of {len(covered)} of {len(IDENTITIES)} evidence types; not covered:",
          gaps or "none")
    assert len(covered) >= MIN_COVERED, gaps
    assert not gaps, gaps  # (all 48 today: keep it so)


def test_hostile_identity_values_are_escaped_not_split() -> None:
    """A value holding `|`, `=`, `\\`, CR, LF, `"`, `]` stays one value of one key: the line is
    one line, and parsing it back gives the value (CR/LF included) whole."""
    seen = 0
    for evidence_type, alert in evidence_alerts(hostile=True):
        line = cef.encode(normalise(alert, TENANT, INGESTED))
        assert b"\n" not in line and b"\r" not in line and len(line.decode().splitlines()) == 1
        extension = parse_bytes(line, known_keys=CEF_KEYS).extension
        for key, value in extension.items():
            if split_key(key) and "\r\n" in value:
                assert "|a=b\\c\r\nd\"e]f" in value, (evidence_type, key, value)
                seen += 1
    assert seen > 20  # the hostile corpus did put specials into identity values


def test_keys_are_from_the_table_unique_and_valid() -> None:
    entries = cef.EVIDENCE_KEYS
    assert [(e.evidence_type, e.row) for e in entries] == [
        (name, row) for name, rows in IDENTITIES.items() for row in rows]
    keys = [e.key for e in entries]
    assert keys == list(EVIDENCE_KEYS)  # the documented rule
    assert len(set(keys)) == len(keys)  # collision-free
    for key in keys:
        assert key.isascii() and key.isalnum() and key[0].isalpha(), key
        assert key not in KNOWN_KEYS
        assert split_key(key) == (key, 1)
        assert key.count("Evidence") == 1, key  # where the type ends: what makes the names collision-free
        # no base key looks like a numbered one, so `key` + N<n> never names another key
        assert not any(numbered(other, n) == key for other in keys if other != key for n in range(2, 65))


def test_several_values_of_one_key_are_numbered() -> None:
    devices = [{"@odata.type": "#microsoft.graph.security.deviceEvidence", "mdeDeviceId": mde,
                "ipInterfaces": ips} for mde, ips in (("d1", ["10.0.0.1", "10.0.0.2"]), ("d2", ["10.0.0.2", "::1"]),
                                                      ("d1", []))]
    raw = {"id": "da1", "lastUpdateDateTime": "2026-11-29T10:00:00Z", "evidence": devices}
    first = cef.encode(normalise(raw, TENANT, INGESTED))
    assert cef.encode(normalise(raw, TENANT, INGESTED)) == first  # (again: from the remembered values)
    extension = parse_bytes(first, known_keys=CEF_KEYS).extension
    evidence = {k: v for k, v in extension.items() if split_key(k)}
    assert evidence == {
        "msDeviceEvidenceMdeDeviceId": "d1",
        "msDeviceEvidenceIpInterfaces": "10.0.0.1",
        "msDeviceEvidenceIpInterfacesN2": "10.0.0.2",
        "msDeviceEvidenceMdeDeviceIdN2": "d2",
        "msDeviceEvidenceIpInterfacesN3": "::1",
    }
    assert extension["dst"] == "10.0.0.1"  # the standard keys as before


def test_an_alert_without_evidence_has_no_evidence_keys() -> None:
    raw = {"id": "da1", "lastUpdateDateTime": "2026-11-29T10:00:00Z"}
    extension = parse_bytes(cef.encode(normalise(raw, TENANT, INGESTED)), known_keys=CEF_KEYS).extension
    assert not any(split_key(key) for key in extension)


def test_a_type_the_table_does_not_know_adds_nothing() -> None:
    raw = {"id": "da1", "lastUpdateDateTime": "2026-11-29T10:00:00Z",
           "evidence": [{"@odata.type": "#microsoft.graph.security.futureEvidence", "futureId": "x"}]}
    extension = parse_bytes(cef.encode(normalise(raw, TENANT, INGESTED)), known_keys=CEF_KEYS).extension
    assert not any(split_key(key) for key in extension)


def test_type_names_in_any_case() -> None:
    raw = {"id": "da1", "lastUpdateDateTime": "2026-11-29T10:00:00Z",
           "evidence": [{"@odata.type": "#Microsoft.Graph.Security.AzureResourceEvidence", "resourceId": "/sub/x"}]}
    extension = parse_bytes(cef.encode(normalise(raw, TENANT, INGESTED)), known_keys=CEF_KEYS).extension
    assert extension["msAzureResourceEvidenceResourceId"] == "/sub/x"
