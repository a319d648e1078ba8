"""`mappings.plain`: a model of the schema as plain JSON data, as cim and ocsf write it."""
from __future__ import annotations

from datetime import UTC, datetime

from core.model.schema import (
    Alert,
    AlertTimes,
    Comment,
    DeviceEvidence,
    OtherEvidence,
    Severity,
    TenantRef,
    UserEvidence,
    UserInfo,
)
from mappings.plain import VERBATIM, plain

T = datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC)


def _alert() -> Alert:
    return Alert(
        source="graph_alerts", tenant=TenantRef(id="t", label="l"), id="da1", version_key="k",
        times=AlertTimes(last_updated=T, ingested=T), severity=Severity.low, title=None, categories=[],
        custom_details={}, additional_data={"kept": None, "empty": {}},
        comments=[Comment(text="c", created=T)],
        evidence=[UserEvidence(odata_type="u", user=UserInfo()),
                  DeviceEvidence(odata_type="d", hostname="ws1", roles=["compromised"], extra={"x": [None]}),
                  OtherEvidence(odata_type="o", extra={})],
        raw={"id": "da1", "n": None},
    )


def test_absent_fields_are_left_out_in_the_schemas_order() -> None:
    data = plain(_alert(), skip=frozenset({"raw"}))
    assert list(data) == [name for name in Alert.__struct_fields__ if name in data]
    assert "title" not in data and "categories" not in data and "custom_details" not in data
    assert "first_sight" not in data and "raw" not in data
    assert data["times"] == {"last_updated": T, "ingested": T}  # datetimes for the JSON encoder


def test_evidence_keeps_its_kind_and_an_empty_sub_model() -> None:
    user, device, other = plain(_alert())["evidence"]
    assert user == {"odata_type": "u", "kind": "user", "user": {}}
    assert device == {"odata_type": "d", "roles": ["compromised"], "extra": {"x": [None]}, "kind": "device",
                      "hostname": "ws1"}
    assert other == {"odata_type": "o", "kind": "other"}


def test_verbatim_objects_are_kept_whole_and_empty_ones_on_request() -> None:
    data = plain(_alert())
    assert data["additional_data"] == {"kept": None, "empty": {}} and data["raw"] == {"id": "da1", "n": None}
    assert {"extra", "custom_details", "additional_data", "raw"} <= VERBATIM
    kept = plain(_alert(), keep_empty_objects=True)
    assert kept["custom_details"] == {} and kept["evidence"][2]["extra"] == {}


def test_times_can_be_turned_and_lists_converted_whole() -> None:
    ms = plain(_alert().comments, time=lambda moment: int(moment.timestamp() * 1000))
    assert ms == [{"text": "c", "created": int(T.timestamp() * 1000)}]
    assert plain(["a", T], time=str) == ["a", str(T)]
    assert plain("text") == "text"


def test_skip_leaves_fields_out_without_touching_the_model() -> None:
    alert = _alert()
    data = plain(alert, skip=frozenset({"id", "tenant", "raw"}))
    assert "id" not in data and "tenant" not in data and alert.id == "da1" and alert.raw is not None
