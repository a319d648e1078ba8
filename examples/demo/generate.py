"""Write the demo replay data: saved Graph `alerts_v2` and `incidents` list responses for three customers.

    .venv/bin/python examples/demo/generate.py

Output (checked in; re-running gives byte-identical files):

    examples/demo/<customer>/page-0001.json, page-0002.json, ...
    examples/demo/<customer>/graph_incidents/page-0001.json

Each incident file is one `GET /v1.0/security/incidents` response body, the incidents of the
customer's alerts (one per `incidentId`), each with the `alertIds` the forwarder's live reader
adds (from `/security/incidents/{id}/alerts?$select=id`): a replay stands in for that reader.

Each file is one `GET /v1.0/security/alerts_v2` response body (`@odata.context` + `value`),
pretty-printed so diffs stay readable. `core.sources.replay.ReplaySource` reads a folder's
files in name order, so pages are written oldest `lastUpdateDateTime` first, as the
forwarder's `$orderby=lastUpdateDateTime asc` request would return them.

Fictional customer tenants (the tenant ids are fixed so demo configs can name them):

    contoso    22222222-2222-4222-8222-222222222222
    fabrikam   33333333-3333-4333-8333-333333333333
    northwind  44444444-4444-4444-8444-444444444444

What the data exercises:
- every tenant: alerts of several Defender products, severities and evidence types spread
  over the week of 2026-11-16 .. 2026-11-22 (UTC);
- contoso: ONE alert that changes later. Its first version (inProgress, low) is in an
  earlier page, its later version (same id, later lastUpdateDateTime: resolved, raised to
  medium, classified truePositive) in a later page, so dedupe must forward both versions;
- northwind: one alert from `microsoftDefenderForCloud`, a serviceSource member Graph added
  after `unknownFutureValue`, whose evidence is `azureResourceEvidence`, a type the mapping
  has no typed model for (kept as kind "other");
- contoso: one incident merged into another later (status `redirected`, `redirectIncidentId`),
  a second version of it in the same incident page.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for the tests.peers package

from tests.peers.alert_factory import (  # noqa: E402
    comment,
    graph_time,
    list_response,
    make_alert,
    make_incidents,
    updated_version,
)

WEEK_START = datetime(2026, 11, 16, tzinfo=timezone.utc)
WEEK_END = WEEK_START + timedelta(days=7)

MDE = "microsoftDefenderForEndpoint"
MDO = "microsoftDefenderForOffice365"
MDI = "microsoftDefenderForIdentity"
MDCA = "microsoftDefenderForCloudApps"
MDC = "microsoftDefenderForCloud"

ANALYST = "l.moreau@mssp-soc.example"

# One row per alert: (day of the week 0-6, "HH:MM" of its last update, serviceSource,
# severity or None to let the scenario choose).
Row = tuple[int, str, str, str | None]


@dataclass(frozen=True)
class Update:
    """Alert `row` of the plan gets a later version at (`day`, `time`), raised to `severity`."""

    row: int
    day: int
    time: str
    severity: str


@dataclass(frozen=True)
class TenantPlan:
    label: str
    tenant_id: str
    page_size: int
    rows: tuple[Row, ...]
    update: Update | None = None


PLANS: tuple[TenantPlan, ...] = (
    TenantPlan(
        label="contoso",
        tenant_id="22222222-2222-4222-8222-222222222222",
        page_size=5,
        rows=(
            (0, "08:41", MDE, None),
            (0, "13:05", MDO, "informational"),
            (1, "09:12", MDE, "medium"),
            (1, "16:47", MDCA, None),
            (2, "07:58", MDI, "high"),
            (2, "11:20", MDE, "low"),  # changes on day 5, see `update`
            (2, "22:03", MDO, None),
            (3, "10:15", MDE, "high"),
            (4, "14:33", MDCA, None),
            (5, "03:27", MDE, "informational"),
            (6, "09:50", MDI, None),
        ),
        update=Update(row=5, day=5, time="16:10", severity="medium"),
    ),
    TenantPlan(
        label="fabrikam",
        tenant_id="33333333-3333-4333-8333-333333333333",
        page_size=4,
        rows=(
            (0, "10:02", MDE, "high"),
            (1, "08:30", MDO, None),
            (1, "19:44", MDE, None),
            (2, "12:10", MDCA, "medium"),
            (3, "06:55", MDE, "low"),
            (3, "17:21", MDI, None),
            (4, "09:05", MDO, "informational"),
            (5, "14:48", MDE, None),
            (6, "21:36", MDCA, None),
        ),
    ),
    TenantPlan(
        label="northwind",
        tenant_id="44444444-4444-4444-8444-444444444444",
        page_size=5,
        rows=(
            (0, "07:15", MDO, None),
            (0, "15:52", MDE, "medium"),
            (1, "11:08", MDI, None),
            (1, "23:40", MDE, None),
            (2, "09:33", MDC, "medium"),  # newer serviceSource + azureResourceEvidence
            (2, "16:17", MDCA, None),
            (3, "08:04", MDE, "high"),
            (3, "13:59", MDO, None),
            (4, "10:26", MDE, "informational"),
            (4, "18:45", MDI, "medium"),
            (5, "12:12", MDCA, None),
            (6, "08:20", MDE, None),
            (6, "17:03", MDO, "low"),
        ),
    ),
)


def _at(rng: random.Random, day: int, hhmm: str) -> datetime:
    """An instant on `day` of the demo week at `hhmm`, plus seconds and microseconds of jitter."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return WEEK_START + timedelta(
        days=day, hours=hours, minutes=minutes,
        seconds=rng.randrange(60), microseconds=rng.randrange(1_000_000),
    )


def _created(rng: random.Random, last_update: datetime) -> datetime:
    """A creation time shortly before the update, but inside the demo week."""
    created = last_update - timedelta(seconds=rng.uniform(45, 5 * 3600))
    return max(created, WEEK_START + timedelta(seconds=rng.uniform(60, 1800)))


def _updated_pair(
    rng: random.Random, alert: dict, first_at: datetime, later_at: datetime, severity: str,
) -> tuple[dict, dict]:
    """The two versions of the alert that changes: taken by an analyst, then closed."""
    first = updated_version(
        alert, first_at,
        status="inProgress", classification=None, determination=None,
        assignedTo=ANALYST, investigationState="pendingApproval",
        comments=[comment("Taking this one; asked the customer to confirm the user's activity.",
                          ANALYST, first_at - timedelta(seconds=rng.uniform(5, 90)))],
    )
    later = updated_version(
        first, later_at,
        status="resolved", severity=severity,
        classification="truePositive", determination="malware",
        investigationState="successfullyRemediated",
        comments=first["comments"] + [
            comment(f"Confirmed malicious; payload removed and user credentials reset. Raised to {severity}.",
                    ANALYST, later_at - timedelta(seconds=rng.uniform(5, 90)))
        ],
    )
    return first, later


def build(plan: TenantPlan) -> tuple[list[dict], str | None]:
    """All alert versions of one tenant, oldest update first, and the id of the updated alert."""
    rng = random.Random(f"demo/{plan.label}")
    versions: list[dict] = []
    updated_id = None
    for index, (day, hhmm, source, severity) in enumerate(plan.rows):
        last_update = _at(rng, day, hhmm)
        alert = make_alert(
            rng, plan.tenant_id, last_update,
            severity=severity, service_source=source, created=_created(rng, last_update),
        )
        if plan.update and plan.update.row == index:
            later_at = _at(rng, plan.update.day, plan.update.time)
            first, later = _updated_pair(rng, alert, last_update, later_at, plan.update.severity)
            versions += [first, later]
            updated_id = alert["id"]
        else:
            versions.append(alert)
    versions.sort(key=lambda a: (a["lastUpdateDateTime"], a["id"]))
    return versions, updated_id


def pages(versions: list[dict], size: int) -> list[dict]:
    return [list_response(versions[i : i + size]) for i in range(0, len(versions), size)]


def check(plan: TenantPlan, versions: list[dict], updated_id: str | None) -> None:
    """Fail loudly if a change to the factory broke what the demo is meant to show."""
    ids = [a["id"] for a in versions]
    alerts = set(ids)
    problems = []
    if not 8 <= len(alerts) <= 15:
        problems.append(f"{len(alerts)} alerts, want 8-15")
    if len({a["severity"].lower() for a in versions}) < 3:
        problems.append("fewer than 3 severities")
    if len({e["@odata.type"] for a in versions for e in a["evidence"]}) < 4:
        problems.append("fewer than 4 evidence types")
    for a in versions:
        stamp = datetime.fromisoformat(a["lastUpdateDateTime"])
        if not WEEK_START <= stamp < WEEK_END:
            problems.append(f"{a['id']} updated outside the demo week")
    if plan.update:
        where = [i // plan.page_size for i, alert_id in enumerate(ids) if alert_id == updated_id]
        if len(where) != 2 or where[0] >= where[1]:
            problems.append(f"updated alert {updated_id} must sit in two different pages, got {where}")
    elif len(ids) != len(alerts):
        problems.append("an alert id repeats")
    if problems:
        raise SystemExit(f"{plan.label}: " + "; ".join(problems))


def write(plan: TenantPlan, bodies: list[dict]) -> None:
    folder = HERE / plan.label
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("page-*.json"):  # a smaller plan must not leave old pages behind
        stale.unlink()
    for number, body in enumerate(bodies, start=1):
        text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
        (folder / f"page-{number:04d}.json").write_text(text, encoding="utf-8", newline="\n")


def incidents(plan: TenantPlan, versions: list[dict]) -> list[dict]:
    """The tenant's incidents, oldest update first, their `alertIds` added; contoso's first one
    merged into its second a day after its last update (a second version)."""
    latest = {alert["id"]: alert for alert in versions}  # versions are oldest first
    made = make_incidents(list(latest.values()))
    for incident in made:
        incident["alertIds"] = sorted(a["id"] for a in latest.values() if str(a["incidentId"]) == incident["id"])
    if plan.label == "contoso":
        first, into = made[0], made[1]
        merged_at = datetime.fromisoformat(first["lastUpdateDateTime"]) + timedelta(days=1)
        made.append({**first, "status": "redirected", "redirectIncidentId": into["id"],
                     "lastUpdateDateTime": graph_time(merged_at)})
    made.sort(key=lambda i: (i["lastUpdateDateTime"], i["id"]))
    return made


def write_incidents(plan: TenantPlan, made: list[dict]) -> None:
    folder = HERE / plan.label / "graph_incidents"
    folder.mkdir(exist_ok=True)
    body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#security/incidents", "value": made}
    text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    (folder / "page-0001.json").write_text(text, encoding="utf-8", newline="\n")


def main() -> None:
    for plan in PLANS:
        versions, updated_id = build(plan)
        check(plan, versions, updated_id)
        bodies = pages(versions, plan.page_size)
        write(plan, bodies)
        write_incidents(plan, incidents(plan, versions))
        alerts = len({a["id"] for a in versions})
        note = f", updated alert {updated_id}" if updated_id else ""
        print(f"{plan.label}: {alerts} alerts, {len(versions)} versions, {len(bodies)} pages{note}")


if __name__ == "__main__":
    main()
