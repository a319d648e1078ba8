"""The common schema's own JSON (the `alert` format): every field, read back the same."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from core.model.schema import (
    EVIDENCE_KINDS,
    Alert,
    AlertTimes,
    DeviceEvidence,
    EventMeta,
    OtherEvidence,
    Severity,
    TenantRef,
    UserEvidence,
    UserInfo,
    alert_from_data,
    decode_alert,
    encode_alert,
    version_key,
)

MOMENT = datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC)


def _alert(**changes: object) -> Alert:
    fields: dict[str, object] = dict(
        source="graph_alerts", tenant=TenantRef(id="t-1", label="contoso"), id="da1",
        version_key=version_key("t-1", "da1", MOMENT), severity=Severity.high,
        times=AlertTimes(last_updated=MOMENT, ingested=MOMENT + timedelta(seconds=5)),
        evidence=[DeviceEvidence(odata_type="#microsoft.graph.security.deviceEvidence", hostname="ws1",
                                 roles=["compromised"]),
                  UserEvidence(odata_type="#microsoft.graph.security.userEvidence", user=UserInfo(upn="a@x.test")),
                  OtherEvidence(odata_type="#microsoft.graph.security.dnsEvidence", extra={"domainName": "x.test"})],
        raw={"id": "da1", "big": 2 ** 70},
    )
    fields.update(changes)
    return Alert(**fields)  # type: ignore[arg-type]


def test_every_evidence_kind_names_its_model() -> None:
    for kind, model in EVIDENCE_KINDS.items():
        assert model(odata_type="x").kind == kind


def test_the_alert_format_writes_every_field_in_order_and_reads_back_the_same() -> None:
    alert = _alert()
    body = encode_alert(alert)
    document = msgspec.json.decode(body)
    assert list(document) == list(Alert.__struct_fields__)  # every field, nulls included, in order
    assert document["times"]["last_updated"] == "2026-11-29T10:00:00.123456Z"
    assert document["severity"] == int(Severity.high)
    assert [item["kind"] for item in document["evidence"]] == ["device", "user", "other"]
    back = decode_alert(body)
    assert back == alert and encode_alert(back) == body
    assert type(back.evidence[1]) is UserEvidence and back.evidence[1].user.upn == "a@x.test"


def test_reading_back_checks_every_type() -> None:
    document = msgspec.json.decode(encode_alert(_alert()))
    for broken, where in (({**document, "severity": "high"}, "severity"),
                          ({**document, "times": {**document["times"], "last_updated": "yesterday"}}, "last_updated"),
                          ({**document, "evidence": [{"kind": "quantum", "odata_type": "x"}]}, "quantum"),
                          ({**document, "title": 5}, "title")):
        with pytest.raises(msgspec.ValidationError, match=where):
            alert_from_data(broken)


def test_models_are_fresh_per_instance() -> None:
    first, second = _alert(), _alert()
    first.evidence[0].roles.append("attacker")
    assert second.evidence[0].roles == ["compromised"]
    assert UserEvidence(odata_type="x").user is not UserEvidence(odata_type="x").user


def test_version_key_and_event_meta() -> None:
    alert = _alert()
    assert alert.version_key == "t-1/da1/2026-11-29T10:00:00.123456Z"
    meta = EventMeta.of(alert)
    assert (meta.tenant_label, meta.alert_id, meta.severity, meta.time) == (
        "contoso", "da1", Severity.high, MOMENT.timestamp())
