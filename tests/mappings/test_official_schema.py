"""The formats against Microsoft's own metadata: alerts generated from the official Graph
v1.0 extract (`tests/mappings/official_alerts.py`) carry every evidence type with every
property, and every member of every enum. Here: the set itself, `raw`'s losslessness, and the
identity table (`mappings/evidence.py`) that every format reads evidence identities through."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from core.model.schema import Alert, TenantRef
from mappings import raw
from mappings.evidence import IDENTITIES, KINDS, identities_of, values_at
from mappings.graph_alerts_v2 import normalise
from tests.mappings.official_alerts import (
    ALERT_TYPE,
    NS,
    TENANT_ID,
    enum_alerts,
    enum_uses,
    evidence_alerts,
    graph_values,
    schema,
    short,
)

TENANT = TenantRef(id=TENANT_ID, label="contoso")
INGESTED = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _normalised(alert: dict[str, Any]) -> Alert:
    return normalise(alert, TENANT, INGESTED)


def test_one_alert_per_official_evidence_type_with_every_property() -> None:
    official = schema()
    alerts = dict(evidence_alerts())
    assert sorted(alerts) == sorted(short(t) for t in official.evidence_types)
    assert len(alerts) == 48  # the v1.0 metadata of the extract; a later one may add types
    for name, alert in alerts.items():
        (evidence,) = alert["evidence"]
        assert set(evidence) - {"@odata.type"} == set(official.properties(NS + name)), name
        assert set(alert) == set(official.properties(ALERT_TYPE)), name


def test_every_member_of_every_enum_is_used() -> None:
    official = schema()
    used: dict[str, set[str]] = {}
    for enum, member, alert in enum_alerts():
        used.setdefault(enum, set()).add(member)
        text = orjson.dumps(alert).decode()
        assert f'"{member}"' in text, (enum, member)
    assert {short(e) for e in enum_uses(official)} == {short(e) for e in official.enums}
    for enum, spec in official.enums.items():
        assert used[short(enum)] == set(spec["members"]), enum


@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile"])
def test_raw_is_lossless_for_every_evidence_type_and_enum_member(hostile: bool) -> None:
    generated = [alert for _, alert in evidence_alerts(hostile)] + [alert for _, _, alert in enum_alerts()]
    for alert in generated:
        document = orjson.loads(raw.encode(_normalised(alert)))
        assert document.pop("tenant") == {"id": TENANT_ID, "label": "contoso"}
        assert document.pop("forwarder")["version_key"].startswith(f"{TENANT_ID}/{alert['id']}/")
        assert document == alert, alert["id"]


def test_the_identity_table_names_every_official_evidence_type() -> None:
    official = schema()
    assert sorted(IDENTITIES) == sorted(short(t) for t in official.evidence_types)
    for name, rows in IDENTITIES.items():
        assert rows, f"{name}: no identifying property"
        for row in rows:
            assert row.kind in KINDS, (name, row)
            _assert_path_is_official(official, NS + name, row.graph)


def _assert_path_is_official(official: Any, type_name: str, path: str) -> None:
    owner = type_name
    for part in path.split("."):
        spec = official.properties(owner).get(part.removesuffix("[]"))
        assert spec is not None, f"{short(type_name)}.{path}: {part} is no property of {short(owner)}"
        assert part.endswith("[]") == spec["collection"], f"{short(type_name)}.{path}: [] where a list is"
        owner = official.concrete_of(spec["type"])


def test_each_identity_path_finds_what_graph_sent() -> None:
    """Every row's common-schema path holds exactly the values of its Graph path: the typed
    fields say the same as Graph, and nothing is left behind in the mapping."""
    for name, alert in evidence_alerts():
        (evidence,) = _normalised(alert).evidence
        rows = identities_of(evidence)
        assert rows == IDENTITIES[name]
        for row in rows:
            sent = [str(v) for v in graph_values(alert["evidence"][0], row.graph)]
            assert sent, f"{name}.{row.graph}: the generated alert has no value there"
            assert [str(v) for v in values_at(evidence, row.common)] == sent, f"{name}.{row.graph} -> {row.common}"


def test_the_landing_table_in_docs_is_what_the_formats_do() -> None:
    """docs/formats.md's table of where each identity lands, against the encoders' output
    (rewrite it with `python -m tests.mappings.landing --write`)."""
    from tests.mappings import landing

    schema()
    documented = landing.documented()
    assert documented is not None, f"{landing.DOC}: the evidence-landing markers are missing"
    assert documented == landing.markdown(), "docs/formats.md is stale: python -m tests.mappings.landing --write"
    assert landing.NOT_FOUND not in documented, "an identifying value lands nowhere in some format"
