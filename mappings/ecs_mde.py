"""An alert of the Defender for Endpoint API (source `mde_alerts`) -> an ECS document shaped as
Elastic's own `microsoft_defender_endpoint` integration (`log` data stream) makes it, so that
its dashboards and rules work on ours. `mappings.ecs.encode` hands MDE alerts here.

Placement (as the integration's ingest pipeline places them; docs/formats.md):
- `message` title, `rule.description` description, `event.id` id, `event.kind` alert,
  `event.provider` defender_endpoint, `event.action` category, `event.created/start/end`
  alertCreationTime / firstEventTime / lastEventTime (ISO 8601 UTC, milliseconds, as
  `mappings.ecs`), `event.duration` end - start in ns, `event.timezone` UTC,
  `event.severity` Informational 1, Low 2, Medium 3, High 4, `event.category` host (+ malware
  for category Malware, + process for a process evidence), `event.type` access for a user
  evidence, start for a process, then end for a resolved alert, start for a new or in-progress one.
- `cloud.account.id` aadTenantId (else the polled tenant), `cloud.instance.id` machineId,
  `cloud.provider` azure, `host.hostname` computerDnsName as sent, `host.name` lower-cased.
- `observer.name` detectionSource, `observer.product` Defender for Endpoint, `observer.vendor`.
- `threat.framework` MITRE ATT&CK, `threat.technique.name` [category], `threat.technique.id`
  mitreTechniques.
- Evidence: `file.*` (file or process image), `process.*`, `user.*`, `related.{hash,user,hosts,ip}`,
  `url.full`, `registry.*`; the first evidence of each kind fills the ECS group.
- `microsoft.defender_endpoint.*`: assignedTo, incidentId, investigationId (strings),
  investigationState, status (MDE's PascalCase), lastUpdateTime, resolvedTime, and
  `evidence.entityType` (+ accountName/domainName of a user evidence) of the first evidence.
- MSSP context `defender_forwarder.*` and `organization.*` as in `mappings.ecs`.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.model.schema import (
    Alert,
    DeviceEvidence,
    FileEvidence,
    IpEvidence,
    ProcessEvidence,
    RegistryEvidence,
    UrlEvidence,
    UserEvidence,
)

ECS_VERSION = "8.11.0"
_SEVERITY = {"informational": 1, "low": 2, "medium": 3, "high": 4}


def _pascal(value: str | None) -> str | None:
    """Graph's lowerCamelCase member -> MDE's PascalCase spelling (`inProgress` -> `InProgress`)."""
    return value[:1].upper() + value[1:] if value else value


def _add(out: list[Any], value: Any) -> None:
    if value and value not in out:
        out.append(value)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {key: _clean(item) for key, item in value.items()}
        return {key: item for key, item in cleaned.items() if item not in (None, "", [], {})}
    return value


def _ns(text: str) -> int:
    """An MDE timestamp's text -> ns since the epoch, all its (up to 7) fraction digits kept."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def _duration(alert: Alert) -> int | None:
    """lastEventTime - firstEventTime in ns, from the text as MDE sent it (100 ns digits, which
    the common schema's microseconds would lose), as Elastic's pipeline computes it."""
    raw = alert.raw if isinstance(alert.raw, dict) else {}
    first, last = raw.get("firstEventTime"), raw.get("lastEventTime")
    try:
        return _ns(last) - _ns(first)
    except (TypeError, ValueError, AttributeError):
        times = alert.times
        return round((times.last_activity - times.first_activity).total_seconds() * 1e6) * 1000  # type: ignore[operator]


def to_ecs_mde(alert: Alert, iso: Any) -> dict[str, Any]:
    """The document; `iso` is `mappings.ecs`'s time writer (one format for both shapes)."""
    times = alert.times
    extra = alert.extra
    related: dict[str, list[Any]] = {"hash": [], "hosts": [], "user": [], "ip": []}
    event_category, event_type = ["host"], []
    if (alert.category or "").lower() == "malware":
        event_category.append("malware")
    doc: dict[str, Any] = {"file": {}, "process": {}, "user": {}, "host": {}, "registry": {}, "url": {}}
    related_user = extra.get("relatedUser")
    if isinstance(related_user, dict):  # the alert's user (userName, domainName) comes first
        doc["user"] = {"name": related_user.get("userName"), "domain": related_user.get("domainName")}
        _add(related["user"], related_user.get("userName"))
    device_id = None
    first_evidence: dict[str, Any] = {}
    for evidence in alert.evidence:
        if isinstance(evidence, DeviceEvidence):
            device_id = device_id or evidence.mde_device_id
            if evidence.fqdn and not doc["host"]:
                doc["host"] = {"hostname": evidence.fqdn, "name": evidence.fqdn.lower()}
            _add(related["hosts"], evidence.fqdn.lower() if evidence.fqdn else None)
            continue
        if not first_evidence:
            first_evidence = {"entityType": evidence.extra.get("entityType")}
        user = getattr(evidence, "user", None)
        if isinstance(evidence, ProcessEvidence):
            _add(event_category, "process")
            _add(event_type, "start")
            if not doc["process"]:
                doc["process"] = {
                    "pid": evidence.pid, "command_line": evidence.command_line,
                    "start": iso(evidence.process_created) if evidence.process_created else None,
                    "parent": {"pid": evidence.parent_pid,
                               "start": iso(evidence.parent_created) if evidence.parent_created else None,
                               "name": evidence.parent_image.name if evidence.parent_image else None},
                }
        if isinstance(evidence, UserEvidence):
            _add(event_type, "access")
            first = first_evidence.setdefault("user", evidence.user)
            if first is evidence.user:
                first_evidence.update(accountName=evidence.user.account_name, domainName=evidence.user.domain)
        info = evidence.file if isinstance(evidence, FileEvidence) else (
            evidence.image if isinstance(evidence, ProcessEvidence) else None)
        if info is not None:
            if not doc["file"]:
                doc["file"] = {"name": info.name, "path": info.path,
                               "hash": {"sha1": info.sha1, "sha256": info.sha256}}
            _add(related["hash"], info.sha1)
            _add(related["hash"], info.sha256)
        if user is not None:
            for key, value in (("name", user.account_name), ("domain", user.domain), ("id", user.sid)):
                doc["user"].setdefault(key, value)
            _add(related["user"], user.account_name)
        if isinstance(evidence, IpEvidence):
            _add(related["ip"], evidence.address)
        if isinstance(evidence, UrlEvidence) and not doc["url"]:
            doc["url"] = {"full": evidence.url}
        if isinstance(evidence, RegistryEvidence) and not doc["registry"]:
            doc["registry"] = {"hive": evidence.hive, "key": evidence.key, "data": {"strings": [evidence.value_data]}
                               if evidence.value_data else None, "data_type": evidence.value_type}
    status = (alert.status or "").lower()
    if status == "resolved":
        _add(event_type, "end")
    elif status in ("new", "inprogress"):
        _add(event_type, "start")
    first_evidence.pop("user", None)
    start, end = times.first_activity, times.last_activity
    doc.update({
        "ecs": {"version": ECS_VERSION},
        "message": alert.title,
        "rule": {"description": alert.description},
        "cloud": {"account": {"id": extra.get("aadTenantId") or alert.tenant.id},
                  "instance": {"id": device_id}, "provider": "azure"},
        "event": {
            "kind": "alert", "id": alert.id, "provider": "defender_endpoint", "action": alert.category,
            "category": event_category, "type": event_type or None, "timezone": "UTC",
            "created": iso(times.created) if times.created else None,
            "start": iso(start) if start else None, "end": iso(end) if end else None,
            "duration": _duration(alert) if start and end else None,
            "severity": _SEVERITY.get((alert.severity_original or "").lower()),
        },
        "observer": {"name": alert.detection_source, "product": "Defender for Endpoint", "vendor": "Microsoft"},
        "threat": {"framework": "MITRE ATT&CK",
                   "technique": {"name": [alert.category] if alert.category else None,
                                 "id": alert.mitre_techniques or None}},
        "related": related,
        "microsoft": {"defender_endpoint": {
            "assignedTo": alert.assigned_to,
            "incidentId": alert.incident_id,
            "investigationId": None if extra.get("investigationId") is None else str(extra["investigationId"]),
            "investigationState": _pascal(alert.investigation_state),
            "status": _pascal(alert.status),
            "classification": _pascal(alert.classification),
            "determination": _pascal(alert.determination),
            "severity": alert.severity_original,
            "detectorId": alert.detector_id,
            "threatFamilyName": alert.threat_family_name,
            "threatName": alert.threat_display_name,
            "rbacGroupName": next((e.rbac_group for e in alert.evidence if isinstance(e, DeviceEvidence)), None),
            "relatedUser": extra.get("relatedUser"),
            "lastUpdateTime": iso(times.last_updated),
            "resolvedTime": iso(times.resolved) if times.resolved else None,
            "evidence": first_evidence,
        }},
        "organization": {"id": alert.tenant.id, "name": alert.tenant.label},
        "defender_forwarder": {"customer": alert.tenant.label, "tenant_id": alert.tenant.id,
                               "version_key": alert.version_key, "source": alert.source,
                               "ingested": iso(times.ingested)},
        "@timestamp": iso(times.last_updated),
    })
    return _clean(doc)
