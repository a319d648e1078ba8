"""The Defender for Endpoint API half of the simulated cloud (tests/peers/fake_cloud.py):
`GET /api/alerts`, as Microsoft documents it (defender-source.md §2):

- `$filter` on `lastUpdateTime` (`ge`, `gt`, `le`, `lt`, joined by `and`), `$orderby`
  (`lastUpdateTime asc|desc`), `$top` (at most 10,000), `$skip`, `$expand=evidence` (without
  it every alert's evidence is `[]`); any other option is a 400 `ODataError`;
- no `@odata.nextLink`, ever (as users report of MDE with `$top`);
- a token for the WindowsDefenderATP resource, with the `Alert.Read.All` role (else 403);
- the quotas, per tenant: 100 calls a minute and 1,500 an hour, a 429 `TooManyRequests` with
  Retry-After past either.

Its alerts are the tenant's Graph alerts of Defender for Endpoint (serviceSource
microsoftDefenderForEndpoint) in MDE's shape, the same id and the same last update time, as
both APIs front the same alert: what a tenant reading both sources sees twice.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs

MDE_RESOURCE = "https://api.securitycenter.microsoft.com"
MDE_ROLE = "Alert.Read.All"
MDE_PATH = "/api/alerts"
MDE_SERVICE = "microsoftdefenderforendpoint"
MAX_TOP = 10_000
_OPTIONS = {"$filter", "$orderby", "$top", "$skip", "$expand"}
_COMPARISON = re.compile(r"^\s*lastUpdateTime\s+(ge|gt|le|lt)\s+(\S+)\s*$", re.IGNORECASE)


class MdeError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "target": "fake-correlation-id"}}


class Quota:
    """Calls of one tenant in the last minute and hour; a call past either limit is refused
    with how long until one call leaves the window (refused calls count too, as MDE says:
    "trying to resubmit HTTP requests in a shorter time frame gives a return of the 429")."""

    def __init__(self, per_minute: int, per_hour: int) -> None:
        self.per_minute, self.per_hour = per_minute, per_hour
        self.calls: deque[float] = deque()
        self._lock = threading.Lock()

    def spend(self) -> None:
        now = time.monotonic()
        with self._lock:
            while self.calls and now - self.calls[0] >= 3600:
                self.calls.popleft()
            in_minute = [t for t in self.calls if now - t < 60]
            wait = None
            if len(in_minute) >= self.per_minute:
                wait = 60 - (now - in_minute[-self.per_minute])
            elif len(self.calls) >= self.per_hour:
                wait = 3600 - (now - self.calls[-self.per_hour])
            if wait is not None:
                raise MdeError(429, "TooManyRequests", "API calls quota exceeded! Maximum allowed: "
                               f"{self.per_minute} per 1 minute, {self.per_hour} per 1 hour.",
                               retry_after=max(1, int(wait + 0.999)))
            self.calls.append(now)


def _pascal(value: Any) -> Any:
    return value[:1].upper() + value[1:] if isinstance(value, str) and value else value


def _flat_evidence(item: dict[str, Any]) -> dict[str, Any] | None:
    kind = str(item.get("@odata.type", "")).rsplit(".", 1)[-1]
    created = item.get("createdDateTime")
    if kind == "userEvidence":
        account = item.get("userAccount") or {}
        return {"entityType": "User", "evidenceCreationTime": created, "accountName": account.get("accountName"),
                "domainName": account.get("domainName"), "userSid": account.get("userSid"),
                "aadUserId": account.get("azureAdUserId"), "userPrincipalName": account.get("userPrincipalName")}
    if kind == "fileEvidence":
        details = item.get("fileDetails") or {}
        return {"entityType": "File", "evidenceCreationTime": created, "fileName": details.get("fileName"),
                "filePath": details.get("filePath"), "sha1": details.get("sha1"), "sha256": details.get("sha256"),
                "detectionStatus": _pascal(item.get("detectionStatus"))}
    if kind == "processEvidence":
        image = item.get("imageFile") or {}
        return {"entityType": "Process", "evidenceCreationTime": created, "processId": item.get("processId"),
                "processCommandLine": item.get("processCommandLine"), "fileName": image.get("fileName"),
                "filePath": image.get("filePath"), "sha1": image.get("sha1"), "sha256": image.get("sha256"),
                "parentProcessId": item.get("parentProcessId"),
                "processCreationTime": item.get("processCreationDateTime")}
    if kind == "ipEvidence":
        return {"entityType": "Ip", "evidenceCreationTime": created, "ipAddress": item.get("ipAddress")}
    if kind == "urlEvidence":
        return {"entityType": "Url", "evidenceCreationTime": created, "url": item.get("url")}
    return None


def mde_alert(graph: dict[str, Any], expand: bool) -> dict[str, Any]:
    """A Graph alert of Defender for Endpoint, as MDE's `/api/alerts` sends it."""
    evidence = [item for item in graph.get("evidence") or [] if isinstance(item, dict)]
    device = next((item for item in evidence if str(item.get("@odata.type", "")).endswith("deviceEvidence")), {})
    incident = graph.get("incidentId")
    return {
        "id": graph["id"],
        "incidentId": int(incident) if isinstance(incident, str) and incident.isdigit() else incident,
        "investigationId": None,
        "assignedTo": graph.get("assignedTo"),
        "severity": _pascal(graph.get("severity")),
        "status": _pascal(graph.get("status")),
        "classification": _pascal(graph.get("classification")),
        "determination": _pascal(graph.get("determination")),
        "investigationState": _pascal(graph.get("investigationState")),
        "detectionSource": "WindowsDefenderAtp",
        "detectorId": graph.get("detectorId"),
        "category": graph.get("category"),
        "threatFamilyName": graph.get("threatFamilyName"),
        "title": graph.get("title"),
        "description": graph.get("description"),
        "alertCreationTime": graph.get("createdDateTime"),
        "firstEventTime": graph.get("firstActivityDateTime"),
        "lastEventTime": graph.get("lastActivityDateTime"),
        "lastUpdateTime": graph["lastUpdateDateTime"],
        "resolvedTime": graph.get("resolvedDateTime"),
        "machineId": device.get("mdeDeviceId"),
        "computerDnsName": device.get("deviceDnsName"),
        "rbacGroupName": device.get("rbacGroupName"),
        "aadTenantId": graph.get("tenantId"),
        "threatName": graph.get("threatDisplayName"),
        "mitreTechniques": graph.get("mitreTechniques") or [],
        "relatedUser": None,
        "comments": [],
        "evidence": [flat for item in evidence if (flat := _flat_evidence(item)) is not None] if expand else [],
    }


def is_mde(graph: dict[str, Any]) -> bool:
    return str(graph.get("serviceSource", "")).lower() == MDE_SERVICE


def answer(graph_alerts: list[dict[str, Any]], raw_query: str) -> bytes:
    """The body of `GET /api/alerts?<raw_query>` over a tenant's Graph alerts."""
    from tests.peers.fake_cloud import parse_ticks  # the cloud's one timestamp reader

    params = parse_qs(raw_query, keep_blank_values=True)
    unknown = sorted(set(params) - _OPTIONS)
    if unknown:
        raise MdeError(400, "ODataError", f"Query option '{unknown[0]}' is not supported.")
    option = {name: values[-1] for name, values in params.items()}
    bounds: list[tuple[str, int]] = []
    for part in re.split(r"\s+and\s+", option.get("$filter", ""), flags=re.IGNORECASE) if "$filter" in option else []:
        match = _COMPARISON.match(part)
        if match is None:
            raise MdeError(400, "ODataError", f"Invalid filter clause: {part!r} (this simulation filters on "
                           "lastUpdateTime only).")
        try:
            bounds.append((match.group(1).lower(), parse_ticks(match.group(2))))
        except ValueError:
            raise MdeError(400, "ODataError", f"Invalid DateTimeOffset {match.group(2)!r}.") from None
    orderby = option.get("$orderby", "lastUpdateTime asc").split()
    if not orderby or orderby[0].lower() != "lastupdatetime" or (len(orderby) > 1 and orderby[1].lower()
                                                                   not in ("asc", "desc")):
        raise MdeError(400, "ODataError", f"Invalid $orderby {option['$orderby']!r}.")
    try:
        top = int(option.get("$top", MAX_TOP))
        skip = int(option.get("$skip", 0))
    except ValueError:
        raise MdeError(400, "InvalidInput", "$top and $skip take integers.") from None
    if not 0 < top <= MAX_TOP or skip < 0:
        raise MdeError(400, "InvalidInput", f"$top must be 1 to {MAX_TOP}, $skip at least 0.")
    expand = option.get("$expand")
    if expand not in (None, "evidence"):
        raise MdeError(400, "ODataError", f"$expand supports evidence only, not {expand!r}.")
    tests = {"ge": lambda t, b: t >= b, "gt": lambda t, b: t > b, "le": lambda t, b: t <= b,
             "lt": lambda t, b: t < b}
    chosen = []
    for alert in graph_alerts:
        if not is_mde(alert):
            continue
        ticks = parse_ticks(alert["lastUpdateDateTime"])
        if all(tests[op](ticks, bound) for op, bound in bounds):
            chosen.append((ticks, alert["id"], alert))
    chosen.sort(key=lambda item: (item[0], item[1]), reverse=len(orderby) > 1 and orderby[1].lower() == "desc")
    page = [mde_alert(alert, expand == "evidence") for _, _, alert in chosen[skip:skip + top]]
    return json.dumps({"@odata.context": "https://api.securitycenter.microsoft.com/api/$metadata#Alerts",
                       "value": page}).encode()
