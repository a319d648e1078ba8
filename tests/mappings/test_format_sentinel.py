"""The `sentinel` format: rows of the custom tables DefenderAlerts_CL / DefenderIncidents_CL.

Over a corpus of generated alerts (tests/peers/alert_factory.py), one alert per official Graph
evidence type with every property filled, Microsoft's documented samples, and incidents: every
key is a declared column with its declared type, every declared column is written by some row
(the tables hold nothing dead), no nulls, the length limit with its marker, injection characters
kept as data, deterministic bytes.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson
import pytest

from core.model.schema import Alert, Incident, TenantRef
from mappings import encoder, sentinel
from mappings.graph_alerts_v2 import normalise
from mappings.graph_incidents import normalise as normalise_incident
from mappings.plain import plain
from tests.helpers import SHARED_SAMPLES
from tests.mappings import official_alerts
from tests.peers.alert_factory import make_alerts, make_incidents

TENANT = TenantRef(id="22222222-2222-4222-8222-222222222222", label="contoso")
INGESTED = datetime(2026, 12, 7, tzinfo=UTC)
HOSTILE = "a|b\\c=d\ne\rf\x00g\u2028h<script>'\";DROP TABLE x;--${jndi:ldap://x}%n\"}{"
ONE_MB = 1024 * 1024


def _alerts_raw() -> list[dict[str, Any]]:
    return make_alerts(200, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(seconds=37), seed=3)


@cache
def generated_alerts() -> tuple[Alert, ...]:
    return tuple(normalise(raw, TENANT, INGESTED) for raw in _alerts_raw())


@cache
def official_evidence_alerts() -> tuple[Alert, ...]:
    """One alert per official evidence type, every property filled (empty without the extract)."""
    if not official_alerts.OFFICIAL.exists():
        return ()
    return tuple(normalise(raw, TENANT, INGESTED) for _, raw in official_alerts.evidence_alerts())


@cache
def sample_alerts() -> tuple[Alert, ...]:
    path = SHARED_SAMPLES / "graph_alerts_v2_list_docs.json"
    if not path.exists():
        return ()
    return tuple(normalise(raw, TENANT, INGESTED) for raw in json.loads(path.read_text())["value"])


@cache
def incidents() -> tuple[Incident, ...]:
    raws = make_incidents(_alerts_raw()[:60])
    raws += make_incidents(_alerts_raw()[60:80], status="redirected", redirectIncidentId="4242", priorityScore=87,
                           customTags=["vip", "finance"], systemTags=["Defender Experts"],
                           description="merged into 4242", alertIds=["da1", "da2"])
    found = [normalise_incident(raw, TENANT, INGESTED) for raw in raws]
    sample = SHARED_SAMPLES / "graph_incidents_list_docs.json"
    if sample.exists():
        found += [normalise_incident(raw, TENANT, INGESTED) for raw in json.loads(sample.read_text())["value"]]
    return tuple(found)


def corpus() -> list[Alert | Incident]:
    return [*generated_alerts(), *official_evidence_alerts(), *sample_alerts(), *incidents()]


def _row(event: Alert | Incident) -> dict[str, Any]:
    return json.loads(sentinel.encode(event))


_CHECK = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31,
    "datetime": lambda v: isinstance(v, str) and datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ") is not None,
    "dynamic": lambda v: isinstance(v, (list, dict)),
}


def _nulls(value: Any, path: str) -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _nulls(v, f"{path}[{i}]")]
    return []


# --------------------------------------------------------------------------- the tables


def test_the_tables_are_well_formed() -> None:
    for stream, columns in sentinel.STREAMS.items():
        names = [c.name for c in columns]
        assert len(set(names)) == len(names), stream
        assert all(c.type in sentinel.TYPES for c in columns), stream
        # Reserved in Log Analytics, or set by the DCR's transformation.
        assert not {"TenantId", "Type", "TimeGenerated", "_ResourceId"} & set(names), stream
    assert sentinel.STREAMS == {"Custom-DefenderAlerts_CL": sentinel.ALERT_COLUMNS,
                                "Custom-DefenderIncidents_CL": sentinel.INCIDENT_COLUMNS}
    assert encoder("sentinel") is sentinel.encode


def test_every_key_is_a_declared_column_of_its_type_in_table_order_and_no_nulls() -> None:
    events = corpus()
    assert len(events) >= 250
    for event in events:
        row = _row(event)
        columns = sentinel.STREAMS[sentinel.stream_of(event)]
        declared = {c.name: c.type for c in columns}
        order = [c.name for c in columns]
        assert list(row) == [name for name in order if name in row], "keys out of table order"
        for key, value in row.items():
            assert key in declared, f"{key} is no column of {sentinel.stream_of(event)}"
            assert _CHECK[declared[key]](value), (key, declared[key], value)
            assert value not in ("", [], {}), key
        top_nulls = [k for k, v in row.items() if v is None]
        assert not top_nulls
        for key in row:
            if declared[key] == "dynamic" and key not in ("Alert", "Incident"):
                assert not _nulls(row[key], key) and len(set(row[key])) == len(row[key]), key


def test_every_declared_column_is_written_by_some_row() -> None:
    seen: dict[str, set[str]] = {stream: set() for stream in sentinel.STREAMS}
    for event in corpus():
        seen[sentinel.stream_of(event)] |= set(_row(event))
    if not official_evidence_alerts():
        pytest.skip(f"the official Graph extract {official_alerts.OFFICIAL} is not here: the corpus lacks "
                    "every evidence type, so some entity columns may stay empty")
    for stream, columns in sentinel.STREAMS.items():
        dead = [c.name for c in columns if c.name not in seen[stream]]
        assert not dead, f"{stream}: columns no row writes: {dead}"


def test_values_are_the_events() -> None:
    alert = next(a for a in generated_alerts() if a.times.resolved and a.mitre_techniques)
    row = _row(alert)
    assert row["Customer"] == "contoso" and row["CustomerTenantId"] == TENANT.id and row["AlertId"] == alert.id
    assert row["VersionKey"] == alert.version_key == f"{TENANT.id}/{alert.id}/{row['Version']}"
    assert row["LastUpdateDateTime"] == row["Version"]
    assert datetime.strptime(row["ResolvedDateTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) \
        == alert.times.resolved
    assert row["Severity"] == alert.severity.name and row["SeverityId"] == int(alert.severity)
    assert row["MitreTechniques"] == alert.mitre_techniques
    # The dynamic column: the whole alert as plain JSON, without raw.
    expected = json.loads(orjson.dumps(plain(alert, skip=frozenset({"raw"})), option=orjson.OPT_UTC_Z))
    assert "raw" not in row["Alert"] and row["Alert"] == expected
    incident = next(i for i in incidents() if i.alert_ids)
    row = _row(incident)
    assert row["IncidentId"] == incident.id and row["AlertIds"] == incident.alert_ids and "raw" not in row["Incident"]


def test_entities_follow_the_evidence() -> None:
    for alert in official_evidence_alerts() or generated_alerts():
        row = _row(alert)
        devices = [e.fqdn or e.hostname or e.mde_device_id for e in alert.evidence if e.kind == "device"]
        assert row.get("Devices", []) == list(dict.fromkeys(d for d in devices if d))
        ips = [e.address for e in alert.evidence if e.kind == "ip" and e.address]
        assert row.get("IpAddresses", []) == list(dict.fromkeys(ips))
        files = [e.file for e in alert.evidence if e.kind == "file"]
        for file in files:
            if digest := file.sha256 or file.sha1 or file.md5:
                assert digest in row["FileHashes"]


def test_stream_of() -> None:
    assert sentinel.stream_of(generated_alerts()[0]) == "Custom-DefenderAlerts_CL"
    assert sentinel.stream_of(incidents()[0]) == "Custom-DefenderIncidents_CL"


# --------------------------------------------------------------------------- hostile input


def _hostile_alert(**properties: Any) -> Alert:
    raw = {**_alerts_raw()[0], **properties}
    return normalise(raw, TENANT, INGESTED)


def test_a_10_mb_description_gives_a_row_under_1_mb_with_the_marker() -> None:
    alert = _hostile_alert(description="é" * 5_000_000)  # 10 MB of UTF-8
    line = sentinel.encode(alert)
    assert len(line) < ONE_MB
    row = json.loads(line)
    assert row["Description"].endswith("…") and len(row["Description"].encode()) <= sentinel.MAX_VALUE_BYTES
    # The dynamic column, one field value too, fits as a whole: its long strings cut shorter.
    assert len(json.dumps(row["Alert"], ensure_ascii=False).encode()) <= sentinel.MAX_VALUE_BYTES
    assert row["Alert"]["description"].endswith("…") and row["Description"].startswith(row["Alert"]["description"][:-1])
    assert row["Alert"]["id"] == alert.id and row["Alert"]["evidence"]
    assert row["Description"][:-1] == "é" * len(row["Description"][:-1])  # cut on a character boundary
    incident = normalise_incident({"id": "9", "lastUpdateDateTime": "2026-12-01T10:00:00Z", "severity": "high",
                                   "description": "x" * 10_000_000}, TENANT, INGESTED)
    line = sentinel.encode(incident)
    assert len(line) < ONE_MB and json.loads(line)["Description"].endswith("…")


def test_a_value_at_the_limit_is_whole() -> None:
    text = "a" * sentinel.MAX_VALUE_BYTES
    assert sentinel.cut(text) == text
    assert sentinel.cut(text + "b") == "a" * (sentinel.MAX_VALUE_BYTES - 3) + "…"
    assert len(sentinel.cut("€" * 20_000).encode()) <= sentinel.MAX_VALUE_BYTES
    assert sentinel.cut("a\ud800b") == "a\ufffdb"


def test_injection_characters_survive_as_json_data() -> None:
    alert = _hostile_alert(title=HOSTILE, description=HOSTILE, assignedTo=HOSTILE,
                           mitreTechniques=[HOSTILE, "T1059"], category=HOSTILE)
    line = sentinel.encode(alert)
    assert b"\n" not in line and b"\r" not in line
    row = json.loads(line)
    assert row["Title"] == row["Description"] == row["AssignedTo"] == row["Category"] == HOSTILE
    assert row["MitreTechniques"] == [HOSTILE, "T1059"]
    assert row["Alert"]["title"] == HOSTILE


def test_surrogates_and_huge_integers_never_crash() -> None:
    alert = _hostile_alert(title="a\ud800b", description="x", extraThing=2**80)
    row = json.loads(sentinel.encode(alert))
    assert row["Title"] == "a\ufffdb"


def test_deterministic_bytes() -> None:
    events = corpus()[:50]
    assert [sentinel.encode(e) for e in events] == [sentinel.encode(e) for e in events]
