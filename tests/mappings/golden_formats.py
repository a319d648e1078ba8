"""Golden outputs: what every format writes for a fixed corpus, kept as digests.

The corpus is fixed and lives in this repository: 600 generated alerts
(`tests/peers/alert_factory.py`, seeded), every case of the hostile corpus
(`tests/reliability/hostile_alerts.ndjson`), the demo's replay pages, and the Graph incidents
of `INCIDENTS` (the documented shape: assigned, merged, resolved, hostile, unknown enums, one
refused), normalised by `mappings.graph_incidents`. For each alert the
snapshot keeps what `normalise` said (ok, or its dead-letter reason), `version_of`, and per
format a digest of the bytes written (or the encoder's error): `ocsf` three times, for
`first_sight` None, True and False.

A change to a mapping that is meant to change output regenerates the snapshot, in the same
commit, with:

    .venv/bin/python tests/golden_formats.py --write
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).resolve().parent / "golden_formats.ndjson"
TENANT_ID = "22222222-2222-4222-8222-222222222222"
LABEL = "contoso"
INGESTED = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
FORMATS = ("raw", "ocsf", "ecs", "cim", "cef", "alert")


_HOSTILE = "a|b\\c=d\ne\rf\x00g\u2028h<script>'\";--${jndi:ldap://x}"
_INCIDENT = {
    "@odata.type": "#microsoft.graph.security.incident", "id": "2972395", "tenantId": TENANT_ID,
    "incidentWebUrl": f"https://security.microsoft.com/incidents/2972395?tid={TENANT_ID}", "redirectIncidentId": None,
    "displayName": "Multi-stage incident involving Initial access & Command and control on multiple endpoints",
    "createdDateTime": "2026-11-01T08:43:35.5533333Z", "lastUpdateDateTime": "2026-11-02T09:35:45.1133333Z",
    "assignedTo": "KaiC@contoso.onmicrosoft.com", "classification": "TruePositive",
    "determination": "MultiStagedAttack", "status": "Active", "severity": "Medium", "customTags": ["Demo"],
    "systemTags": ["Defender Experts"], "description": "Worm activity spreading through infected USB devices.",
    "comments": [{"comment": "Demo incident", "createdBy": "DavidS@contoso.onmicrosoft.com",
                  "createdTime": "2026-11-02T12:07:37.2756993Z"}],
    "alertIds": ["da637551227677560813_-961444813", "da637551227677560813_-961444814"],
}
# Graph incidents of the corpus: (name, incident).
INCIDENTS: tuple[tuple[str, Any], ...] = (
    ("documented", _INCIDENT),
    ("unassigned", {**_INCIDENT, "assignedTo": None, "comments": [], "alertIds": []}),
    ("merged", {**_INCIDENT, "status": "redirected", "redirectIncidentId": "2972400"}),
    ("resolved", {**_INCIDENT, "status": "resolved", "resolvingComment": "Closed as true positive",
                  "createdDateTime": "2026-11-02T09:35:45.1133333Z"}),
    ("hostile", {**_INCIDENT, "displayName": _HOSTILE, "assignedTo": _HOSTILE, "customTags": [_HOSTILE],
                 "comments": [{"comment": _HOSTILE, "createdBy": _HOSTILE}], "incidentWebUrl": _HOSTILE}),
    ("unknown enums", {**_INCIDENT, "status": "someNewStatus", "severity": "someNewSeverity",
                       "classification": "someNewClassification", "determination": "someNewDetermination"}),
    ("refused", {**_INCIDENT, "lastUpdateDateTime": "yesterday"}),
)


def corpus() -> Iterator[tuple[str, Any]]:
    """(case name, raw alert) for every alert of the fixed corpus, in a fixed order."""
    from core.model import jsonutil
    from tests.peers.alert_factory import make_alerts
    from tests.reliability import make_hostile_corpus

    start = datetime(2026, 11, 1, 8, 0, 0, tzinfo=UTC)
    for index, alert in enumerate(make_alerts(600, TENANT_ID, start, timedelta(seconds=37), seed=7)):
        yield f"factory/{index}", alert
    lines = make_hostile_corpus.CORPUS.read_bytes().splitlines()
    for number, line in enumerate(lines, start=1):
        yield f"hostile/{number}", make_hostile_corpus.expand(jsonutil.loads(line))
    for page in sorted((REPO / "examples" / "demo").glob("*/page-*.json")):
        for index, alert in enumerate(jsonutil.loads(page.read_bytes())["value"]):
            yield f"demo/{page.parent.name}/{page.stem}/{index}", alert
    for name, incident in INCIDENTS:
        yield f"incident/{name}", incident


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _encoded(encode: Any, alert: Any) -> str:
    try:
        return _digest(encode(alert))
    except Exception as err:  # noqa: BLE001 - a format's refusal is part of the snapshot
        return f"error {type(err).__name__}: {str(err)[:200]}"


def outputs(name: str, raw: Any) -> dict[str, Any]:
    """What the mappings make of one alert, as the snapshot keeps it."""
    from core.model.schema import TenantRef
    from core.sources import graph_alerts
    from core.sources.incremental import version_reader
    from mappings import encoder, graph_alerts_v2, graph_incidents

    mapping = graph_incidents if name.startswith("incident/") else graph_alerts_v2
    found = version_reader(graph_alerts.KIND.version)(raw)
    row: dict[str, Any] = {"case": name,
                           "version_of": None if found is None else [found[0], found[1].isoformat()]}
    try:
        alert = mapping.normalise(raw, TenantRef(id=TENANT_ID, label=LABEL), INGESTED)
    except mapping.MappingError as err:
        row["normalise"] = f"dead: {err}"
        return row
    row["normalise"] = "ok"
    for fmt in FORMATS:
        encode = encoder(fmt)
        if fmt == "ocsf":
            for sight in (None, True, False):
                alert.first_sight = sight
                row[f"ocsf/{sight}"] = _encoded(encode, alert)
            alert.first_sight = None
        else:
            row[fmt] = _encoded(encode, alert)
    return row


def snapshot() -> list[dict[str, Any]]:
    return [outputs(name, raw) for name, raw in corpus()]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {SNAPSHOT.name}")
    args = parser.parse_args(argv)
    import orjson

    rows = snapshot()
    text = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    if args.write:
        SNAPSHOT.write_bytes(text)
        print(f"wrote {len(rows)} cases to {SNAPSHOT}")
    else:
        sys.stdout.buffer.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
