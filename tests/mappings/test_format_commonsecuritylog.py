"""The `commonsecuritylog` format: a CommonSecurityLog row made of the `cef` line's fields.

Every column it may emit exists in Microsoft's table reference with the same type
(tests/mappings/commonsecuritylog_reference.py); every value equals what the strict CEF parser
(tests/cef_parser.py, written from the spec) reads from the `cef` line of the same event; the
evidence keys land in AdditionalExtensions; the alert id text never reaches the int ExternalID.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest

from core.model.schema import Alert, Incident
from mappings import cef, commonsecuritylog, encoder
from tests.cef_parser import parse_bytes
from tests.mappings import official_alerts
from tests.mappings.commonsecuritylog_reference import COLUMNS as OFFICIAL
from tests.mappings.test_format_sentinel import HOSTILE, INGESTED, TENANT, _hostile_alert, incidents
from tests.peers.alert_factory import make_alerts

_HEADER = {"DeviceVendor": "vendor", "DeviceProduct": "product", "DeviceVersion": "device_version",
           "DeviceEventClassID": "signature_id", "Activity": "name", "LogSeverity": "severity"}


@cache
def alerts() -> tuple[Alert, ...]:
    from mappings.graph_alerts_v2 import normalise

    raws = make_alerts(150, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(seconds=41), seed=5)
    found = [normalise(raw, TENANT, INGESTED) for raw in raws]
    if official_alerts.OFFICIAL.exists():
        found += [normalise(raw, TENANT, INGESTED) for _, raw in official_alerts.evidence_alerts()]
    return tuple(found)


def corpus() -> list[Alert | Incident]:
    return [*alerts(), *incidents()[:40]]


def _time(value: str) -> int:
    """RFC 3339 text -> ms since the epoch."""
    moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def test_every_column_exists_in_the_official_table_with_its_type() -> None:
    assert commonsecuritylog.COLUMNS, "no columns"
    for name, kind in commonsecuritylog.COLUMNS:
        assert name in OFFICIAL, f"{name} is no CommonSecurityLog column"
        assert OFFICIAL[name] == kind, f"{name}: {kind}, the table says {OFFICIAL[name]}"
    names = [name for name, _ in commonsecuritylog.COLUMNS]
    assert len(set(names)) == len(names)
    assert "ExternalID" not in names and "TimeGenerated" not in names
    assert encoder("commonsecuritylog") is commonsecuritylog.encode


def test_rows_hold_only_declared_columns_of_their_types() -> None:
    declared = dict(commonsecuritylog.COLUMNS)
    checks = {"string": lambda v: isinstance(v, str) and v != "",
              "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "datetime": lambda v: isinstance(v, str) and _time(v) is not None}
    for event in corpus():
        row = json.loads(commonsecuritylog.encode(event))
        assert list(row) == [name for name, _ in commonsecuritylog.COLUMNS if name in row]
        for key, value in row.items():
            assert checks[declared[key]](value), (key, value)


def test_values_are_the_cef_lines() -> None:
    """Every header field and extension key of the CEF line is in the row, with the same value
    (times: the same instant), in the column the table names, or in AdditionalExtensions."""
    by_key = {c.cef: c for c in commonsecuritylog.EXTENSION}
    for event in corpus():
        parsed = parse_bytes(cef.encode(event), labels=True)
        row = json.loads(commonsecuritylog.encode(event))
        for column, attribute in _HEADER.items():
            assert row[column] == getattr(parsed, attribute), column
        # The keys without a column, in line order, as `key=value` joined by `;`.
        other = ";".join(f"{key}={value}" for key, value in parsed.extension.items() if key not in by_key)
        assert row.get("AdditionalExtensions", "") == other
        for key, value in parsed.extension.items():
            column = by_key.get(key)
            if column is None:
                continue
            elif column.convert is commonsecuritylog._time:
                assert _time(row[column.column]) == int(value), key
            elif column.type == "int":
                assert row[column.column] == int(value), key
            else:
                assert row[column.column] == value, key
        # Nothing else: every column comes from the line (OriginalLogSeverity: the alert's own).
        mapped = {by_key[k].column for k in parsed.extension if k in by_key}
        assert set(row) - mapped - set(_HEADER) <= {"AdditionalExtensions", "OriginalLogSeverity"}


def test_the_evidence_keys_land_in_additional_extensions() -> None:
    alert = next(a for a in alerts() if any(e.kind == "device" and e.mde_device_id for e in a.evidence))
    row = json.loads(commonsecuritylog.encode(alert))
    device = next(e for e in alert.evidence if e.kind == "device" and e.mde_device_id)
    pairs = row["AdditionalExtensions"].split(";")
    assert f"msDeviceEvidenceMdeDeviceId={device.mde_device_id}" in pairs
    assert all(pair.startswith("ms") and "Evidence" in pair.split("=", 1)[0] for pair in pairs)


def test_the_alert_id_goes_to_extid_and_device_custom_string3_never_external_id() -> None:
    alert = alerts()[0]
    row = json.loads(commonsecuritylog.encode(alert))
    assert "ExternalID" not in row
    assert row["ExtID"] == alert.id[:40] and row["DeviceCustomString3"] == alert.id
    assert row["DeviceCustomString3Label"] == "alertId" and row["DeviceCustomString2"] == "contoso"


def test_incidents_map_the_same_way() -> None:
    incident = next(i for i in incidents() if i.priority_score is not None)
    row = json.loads(commonsecuritylog.encode(incident))
    assert row["DeviceEventClassID"] == "incident" and row["DeviceCustomString3"] == incident.id
    assert row["DeviceCustomNumber1"] == incident.priority_score and row["DeviceCustomNumber1Label"] == "priorityScore"


@pytest.mark.parametrize("properties", [
    {"title": HOSTILE, "description": HOSTILE, "assignedTo": HOSTILE},
    {"description": "x" * 10_000_000},
])
def test_hostile_alerts_give_a_row(properties: dict[str, Any]) -> None:
    line = commonsecuritylog.encode(_hostile_alert(**properties))
    assert len(line) < 100_000 and b"\n" not in line
    row = json.loads(line)
    assert row["Message"].startswith("a|b\\c=d\ne\rf\ufffdg\ufffdh") or row["Message"].endswith("…")


def test_deterministic_bytes() -> None:
    events = corpus()[:40]
    assert [commonsecuritylog.encode(e) for e in events] == [commonsecuritylog.encode(e) for e in events]
