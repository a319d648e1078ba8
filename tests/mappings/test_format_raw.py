"""Alert -> the `raw` format (the original Defender alert plus MSSP context), and the
format registry every sink and `convert` goes through."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from core.model.schema import Alert, AlertTimes, Severity, TenantRef, UrlEvidence, decode_alert, encode_alert
from mappings import AVAILABLE_FORMATS, OUTPUT_FORMATS, FormatNotAvailable, encoder, ocsf, raw
from mappings.graph_alerts_v2 import normalise
from tests.helpers import SHARED_SAMPLES

SAMPLES = SHARED_SAMPLES
UTC = timezone.utc
TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _sample_alerts() -> list[dict[str, Any]]:
    alerts = []
    for name in ("graph_alerts_v2_list_docs.json", "graph_alert_v2_mde_powershell_elastic_fixture.json"):
        path = SAMPLES / name
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            alerts += data["value"] if "value" in data else [data]
    if not alerts:
        pytest.skip(f"shared samples are not in {SAMPLES} (the tests read ../shared/samples)")
    return alerts


def _decode(line: bytes) -> dict[str, Any]:
    assert b"\n" not in line and not line.endswith(b"\n"), "one line, no trailing newline"
    return json.loads(line)


def test_round_trips_the_original_alert_plus_tenant() -> None:
    for original in _sample_alerts():
        alert = normalise(original, TENANT, INGESTED)
        document = _decode(raw.encode(alert))
        assert document.pop("tenant") == {"id": TENANT.id, "label": "contoso"}
        assert document.pop("forwarder") == {"version_key": alert.version_key}
        assert document == original  # every property, byte-for-byte the same values
        assert list(document) == list(original)  # and in Graph's order


def test_survives_the_outbox() -> None:
    """The pipeline stores Alert JSON in the outbox and a worker encodes it later."""
    original = _sample_alerts()[0]
    stored = encode_alert(normalise(original, TENANT, INGESTED))
    document = _decode(raw.encode(decode_alert(stored)))
    del document["tenant"], document["forwarder"]
    assert document == original


def test_generated_alerts_survive_the_outbox() -> None:
    factory = pytest.importorskip("tests.peers.alert_factory")
    for original in factory.make_alerts(100, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3)):
        alert = normalise(original, TENANT, INGESTED)
        assert raw.encode(decode_alert(encode_alert(alert))) == raw.encode(alert)


def test_generated_alerts_round_trip() -> None:
    factory = pytest.importorskip("tests.peers.alert_factory")
    for original in factory.make_alerts(100, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3)):
        document = _decode(raw.encode(normalise(original, TENANT, INGESTED)))
        assert document.pop("tenant")["id"] == TENANT.id
        document.pop("forwarder")
        assert document == original


def test_a_graph_property_named_like_the_context_is_not_lost() -> None:
    original = {"id": "a1", "lastUpdateDateTime": "2026-11-29T10:00:00Z", "tenant": "graph's own", "forwarder": [1]}
    document = _decode(raw.encode(normalise(original, TENANT, INGESTED)))
    assert document["tenant"] == {"id": TENANT.id, "label": "contoso"}
    assert document["forwarder"]["shadowed"] == {"tenant": "graph's own", "forwarder": [1]}


def test_an_alert_not_from_an_api_is_encoded_as_the_normalised_model() -> None:
    moment = datetime(2026, 11, 29, 10, tzinfo=UTC)
    alert = Alert(source="graph_alerts", tenant=TENANT, id="a1", version_key="k", severity=Severity.high,
                  times=AlertTimes(last_updated=moment, ingested=moment),
                  evidence=[UrlEvidence(odata_type="#microsoft.graph.security.urlEvidence", url="http://x.test")])
    document = _decode(raw.encode(alert))
    assert document["tenant"] == {"id": TENANT.id, "label": "contoso"}
    assert (document["id"], document["version_key"], document["severity"]) == ("a1", "k", 4)
    assert document["evidence"][0]["url"] == "http://x.test"
    assert "raw" not in document


def test_hostile_text_stays_one_line() -> None:
    original = {"id": "a1", "lastUpdateDateTime": "2026-11-29T10:00:00Z", "title": "x\ny\r\x00\u2028",
                "description": "d" * 10_000_000}
    document = _decode(raw.encode(normalise(original, TENANT, INGESTED)))
    assert document["title"] == "x\ny\r\x00\u2028" and len(document["description"]) == 10_000_000


# --------------------------------------------------------------------------- registry


def test_available_encoders() -> None:
    assert encoder("raw") is raw.encode
    assert encoder("ocsf") is ocsf.encode
    assert OUTPUT_FORMATS == ("raw", "ocsf", "ecs", "cim", "cef", "sentinel", "commonsecuritylog")
    assert tuple(AVAILABLE_FORMATS) == (*OUTPUT_FORMATS, "alert")
    assert all(callable(encoder(name)) for name in OUTPUT_FORMATS)


def test_unknown_format() -> None:
    with pytest.raises(FormatNotAvailable, match="^unknown format 'xml'; formats: raw, ocsf, ecs, cim, cef, sentinel, commonsecuritylog$"):
        encoder("xml")
    assert issubclass(FormatNotAvailable, ValueError)
