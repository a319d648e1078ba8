"""`core.schema.Alert` -> OCSF 1.8.0 Detection Finding (class_uid 2004), one JSON line.

Choices a README documents (reference: sinks.md §4 and the OCSF schema):
- `activity_id`: 1 Create when the alert's status is `new`, 3 Close when `resolved`,
  2 Update otherwise. The encoder is stateless, so an alert first seen `inProgress` is an
  Update. `is_alert` is true except on Close (the schema: a Close is not an alertable signal).
- `time` = `finding_info.modified_time` = lastUpdateDateTime; `start_time`/`end_time` =
  first/last activity; every `*_time` is milliseconds since the epoch (`metadata.original_time`
  is the ISO string, as OCSF types it).
- `severity_id` from the normalised severity; a severity Graph added later is 99 Other with
  the value sent as caption. `status_id`: new 1, inProgress 2, resolved 4, else 99 Other.
- `verdict_id` (incident profile) from `classification`: falsePositive 1, truePositive 2,
  informationalExpectedActivity 5 Benign; absent when the alert has no classification.
  Each evidence's `verdict_id` from its `verdict`: suspicious 4, malicious 2, noThreatsFound 5.
  Any value OCSF has no id for is 99 Other with the value as caption.
- `finding_info.attacks` (and, for the security_control profile, top-level `attacks`): one
  per MITRE id, T1059.001 -> technique T1059 + sub-technique T1059.001; the tactic only when
  the alert's categories name exactly one ATT&CK tactic. `analytic` = type 1 Rule, uid =
  detectorId. `metadata.product` = productName (or the serviceSource's product), vendor
  Microsoft, uid = serviceSource, feature = detectionSource.
- `metadata.uid` = the version key, `correlation_uid` = the incident id, `tenant_uid` +
  `labels` = the customer tenant id and label (also in `unmapped.mssp`).
- Evidence with an OCSF object goes to `evidences[]` (name = @odata.type): device, user,
  file, process, url, ip (src_endpoint for roles source/attacker, else dst_endpoint), mail
  message (email), mailbox (user: OCSF's email object is a message and needs from/to). The
  Defender device a file/process was seen on is its `device` (uid). An evidence's fields OCSF
  has no attribute for go to its `data`. Evidence OCSF has no object for (registry, cloud
  application, every other type) goes whole to `unmapped.evidence`.
- `unmapped` carries every other Alert field OCSF has no place for (determination,
  investigation state, threat/actor names, policy id, resolved time, system tags, comments,
  custom details, additional data, the alert's extra properties). Empty values are left out.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Any

from pydantic import BaseModel

from core import jsonutil
from core.schema import (
    Alert,
    Comment,
    DeviceEvidence,
    FileEvidence,
    FileInfo,
    IpEvidence,
    MailboxEvidence,
    MailMessageEvidence,
    ProcessEvidence,
    Severity,
    UrlEvidence,
    UserEvidence,
    UserInfo,
)

OCSF_VERSION = "1.8.0"
PROFILES = ("incident", "security_control")
VENDOR = "Microsoft"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

# --------------------------------------------------------------------------- enum tables

_CLASS = {"class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings"}

# alert status -> (activity_id, activity_name); any other status is an Update.
_ACTIVITY = {"new": (1, "Create"), "resolved": (3, "Close")}
_UPDATE = (2, "Update")

# alert status -> finding (status_id, status); unknownFutureValue is Graph's "newer than you asked for".
_STATUS = {
    "unknown": (0, "Unknown"),
    "unknownFutureValue": (0, "Unknown"),
    "new": (1, "New"),
    "inProgress": (2, "In Progress"),
    "resolved": (4, "Resolved"),
}

_SEVERITY = {
    Severity.unknown: (0, "Unknown"),
    Severity.informational: (1, "Informational"),
    Severity.low: (2, "Low"),
    Severity.medium: (3, "Medium"),
    Severity.high: (4, "High"),
    Severity.critical: (5, "Critical"),
}
_NOT_A_SEVERITY = frozenset({None, "", "unknown", "unknownfuturevalue"})

# alert classification -> finding verdict (incident profile).
_VERDICT = {
    "unknown": (0, "Unknown"),
    "unknownFutureValue": (0, "Unknown"),
    "falsePositive": (1, "False Positive"),
    "truePositive": (2, "True Positive"),
    "informationalExpectedActivity": (5, "Benign"),
    "benignPositive": (5, "Benign"),
}

# evidence verdict -> evidence verdict_id.
_EVIDENCE_VERDICT = {
    "unknown": (0, "Unknown"),
    "unknownFutureValue": (0, "Unknown"),
    "suspicious": (4, "Suspicious"),
    "malicious": (2, "True Positive"),
    "noThreatsFound": (5, "Benign"),
}

# serviceSource -> product name, for alerts without productName.
_PRODUCT_NAMES = {
    "microsoftDefenderForEndpoint": "Microsoft Defender for Endpoint",
    "microsoftDefenderForIdentity": "Microsoft Defender for Identity",
    "microsoftDefenderForCloudApps": "Microsoft Defender for Cloud Apps",
    "microsoftDefenderForOffice365": "Microsoft Defender for Office 365",
    "microsoft365Defender": "Microsoft Defender XDR",
    "azureAdIdentityProtection": "Microsoft Entra ID Protection",
    "microsoftDefenderForCloud": "Microsoft Defender for Cloud",
    "microsoftSentinel": "Microsoft Sentinel",
}
_DEFAULT_PRODUCT = "Microsoft Defender"

# Defender kill-chain categories that are MITRE ATT&CK tactics -> (tactic id, name).
_TACTICS = {
    "reconnaissance": ("TA0043", "Reconnaissance"),
    "resourcedevelopment": ("TA0042", "Resource Development"),
    "initialaccess": ("TA0001", "Initial Access"),
    "execution": ("TA0002", "Execution"),
    "persistence": ("TA0003", "Persistence"),
    "privilegeescalation": ("TA0004", "Privilege Escalation"),
    "defenseevasion": ("TA0005", "Defense Evasion"),
    "credentialaccess": ("TA0006", "Credential Access"),
    "discovery": ("TA0007", "Discovery"),
    "lateralmovement": ("TA0008", "Lateral Movement"),
    "collection": ("TA0009", "Collection"),
    "exfiltration": ("TA0010", "Exfiltration"),
    "commandandcontrol": ("TA0011", "Command and Control"),
    "impact": ("TA0040", "Impact"),
}

# osPlatform prefix (lower case) -> OCSF os (type_id, type); first match wins.
_OS_TYPES = (
    ("windows", (100, "Windows")),
    ("linux", (200, "Linux")),
    ("ubuntu", (200, "Linux")),
    ("debian", (200, "Linux")),
    ("redhat", (200, "Linux")),
    ("centos", (200, "Linux")),
    ("suse", (200, "Linux")),
    ("android", (201, "Android")),
    ("macos", (300, "macOS")),
    ("ios", (301, "iOS")),
    ("ipados", (302, "iPadOS")),
)
_OS_UNKNOWN = (0, "Unknown")

# device riskScore -> OCSF (risk_level_id, risk_level).
_RISK_LEVEL = {"informational": (0, "Info"), "low": (1, "Low"), "medium": (2, "Medium"), "high": (3, "High")}

# FileInfo hash field -> fingerprint (algorithm_id, algorithm).
_HASHES = (("md5", 1, "MD5"), ("sha1", 2, "SHA-1"), ("sha256", 3, "SHA-256"))

# ip evidence role -> which endpoint of the evidence it is; no such role: dst_endpoint
# (in Defender alerts an IP without a role is most often the remote address contacted).
_IP_SIDE = {
    "source": "src_endpoint",
    "attacker": "src_endpoint",
    "destination": "dst_endpoint",
    "attacked": "dst_endpoint",
    "commandAndControl": "dst_endpoint",
}


# --------------------------------------------------------------------------- helpers


def _ms(moment: datetime | None) -> int | None:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return None if moment is None else (moment - _EPOCH) // _MS


def _compact(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` without its null members: OCSF leaves absent attributes out. (Builders pass
    None, not [] or {}, for an empty value, so one identity test per member suffices.)"""
    return {key: value for key, value in obj.items() if value is not None}


def _caption(table: dict[str, tuple[int, str]], value: str | None, unknown: tuple[int, str]) -> tuple[int, str]:
    """(id, caption) from an enum table; a value OCSF has no id for is 99 Other, captioned with itself."""
    if value is None:
        return unknown
    return table.get(value) or (99, value)


def _plain(value: Any) -> Any:
    """A schema value as JSON data: models as dicts without empty fields, times as ms."""
    if isinstance(value, BaseModel):
        return {key: _plain(item) for key, item in value.__dict__.items() if item is not None and item != []}
    if isinstance(value, datetime):
        return _ms(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value  # str, numbers, and `extra` dicts, which are JSON already


# --------------------------------------------------------------------------- OCSF objects


def _user(user: UserInfo | None, email: str | None = None) -> dict[str, Any] | None:
    if user is None:
        return None if email is None else {"email_addr": email}
    return _compact({
        "name": user.account_name,
        "domain": user.domain,
        "uid": user.sid,  # OCSF: "the Windows user SID, ActiveDirectory DN or AWS user ARN"
        "uid_alt": user.aad_user_id,
        "email_addr": email or user.upn,
        "display_name": user.display_name,
    })


def _file(info: FileInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    folder = info.path
    path = None
    if folder and info.name:  # Graph's filePath is the folder; OCSF's path is the full path
        separator = "\\" if "\\" in folder else "/"
        path = folder + info.name if folder.endswith(separator) else folder + separator + info.name
    hashes = [
        {"algorithm_id": algorithm_id, "algorithm": algorithm, "value": value}
        for field, algorithm_id, algorithm in _HASHES
        if (value := getattr(info, field))
    ]
    return _compact({
        "name": info.name,
        "type_id": 1,  # Regular File
        "path": path,
        "parent_folder": folder,
        "size": info.size,
        "company_name": info.publisher,
        "hashes": hashes or None,
    })


def _device_ref(mde_device_id: str | None) -> dict[str, Any] | None:
    """The device an evidence was seen on, when Defender names it."""
    return None if mde_device_id is None else {"uid": mde_device_id, "type_id": 0}


def _os(platform: str | None, version: str | None, build: int | None) -> dict[str, Any] | None:
    if not platform:
        return None
    lowered = platform.lower()
    type_id, type_name = next((kind for prefix, kind in _OS_TYPES if lowered.startswith(prefix)), _OS_UNKNOWN)
    build_text = None if build is None else str(build)
    return _compact({"name": platform, "type_id": type_id, "type": type_name, "version": version, "build": build_text})


def _device(ev: DeviceEvidence) -> dict[str, Any]:
    risk = _RISK_LEVEL.get(ev.risk_score) if ev.risk_score else None
    return {"device": _compact({
        "uid": ev.mde_device_id,
        "uid_alt": ev.aad_device_id,
        "hostname": ev.fqdn or ev.hostname,
        "name": ev.hostname,
        "domain": ev.dns_domain,
        "ip": ev.last_ip or (ev.ip_addresses[0] if ev.ip_addresses else None),
        "type_id": 0,  # Unknown: Defender does not say server, desktop or laptop
        "os": _os(ev.os_platform, ev.os_version, ev.os_build),
        "risk_level_id": risk[0] if risk else None,
        "risk_level": risk[1] if risk else None,
        "groups": [{"name": ev.rbac_group}] if ev.rbac_group else None,
    })}


def _user_evidence(ev: UserEvidence) -> dict[str, Any]:
    return {"user": _user(ev.user)}


def _file_evidence(ev: FileEvidence) -> dict[str, Any]:
    return _compact({"file": _file(ev.file), "device": _device_ref(ev.mde_device_id)})


def _process(ev: ProcessEvidence) -> dict[str, Any]:
    parent_image = ev.parent_image
    parent = _compact({
        "pid": ev.parent_pid,
        "created_time": _ms(ev.parent_created),
        "name": parent_image.name if parent_image else None,
        "file": _file(parent_image),
    })
    process = _compact({
        "pid": ev.pid,
        "cmd_line": ev.command_line,
        "created_time": _ms(ev.created),
        "name": ev.image.name if ev.image else None,
        "file": _file(ev.image),
        "parent_process": parent or None,
        "user": _user(ev.user),
    })
    return _compact({"process": process, "device": _device_ref(ev.mde_device_id)})


def _ip(ev: IpEvidence) -> dict[str, Any]:
    side = next((_IP_SIDE[role] for role in ev.roles if role in _IP_SIDE), "dst_endpoint")
    location = _compact({
        "city": ev.city,
        "country": ev.country_code,
        "region": ev.state,
        "lat": ev.latitude,
        "long": ev.longitude,
    })
    return {side: _compact({"ip": ev.address, "location": location or None})}


def _url(ev: UrlEvidence) -> dict[str, Any]:
    return {"url": _compact({"url_string": ev.url})}


def _mailbox(ev: MailboxEvidence) -> dict[str, Any]:
    # A mailbox is an account, not a message: OCSF's email object needs from and to.
    user = _user(ev.user, ev.primary_address) or {}
    if ev.display_name and "display_name" not in user:
        user["display_name"] = ev.display_name
    return {"user": user}


def _mail_message(ev: MailMessageEvidence) -> dict[str, Any]:
    return {"email": _compact({
        "uid": ev.network_message_id,
        "message_uid": ev.internet_message_id,
        "subject": ev.subject,
        "from": ev.sender,
        "smtp_from": ev.sender,
        "to": [ev.recipient] if ev.recipient else None,
        "smtp_to": ev.recipient,
        "x_originating_ip": [ev.sender_ip] if ev.sender_ip else None,
    })}


class _EvidenceSpec:
    """How one evidence kind becomes an OCSF evidence: `build` makes its OCSF attributes;
    `unexpressed` names (dotted for sub-objects) the fields `build` has no attribute for,
    which go to the evidence's `data` with its extra."""

    def __init__(self, build: Callable[[Any], dict[str, Any]], *unexpressed: str) -> None:
        self.build = build
        self.names = ("created", "remediation_status", "roles", "detailed_roles", "tags",
                      *(name for name in unexpressed if "." not in name))
        self.values = attrgetter(*self.names)  # one C-level call fetches them all
        self.dotted = tuple((name, tuple(name.split("."))) for name in unexpressed if "." in name)

    def data(self, ev: BaseModel) -> dict[str, Any] | None:
        data = {name: _DATA_CONVERT[name](value) if name in _DATA_CONVERT else value
                for name, value in zip(self.names, self.values(ev)) if value}
        for name, parts in self.dotted:
            value: Any = ev
            for part in parts:
                value = getattr(value, part, None)  # a sub-object may be absent
            if value:
                data[name] = value
        if ev.extra:
            data["extra"] = ev.extra
        return data or None


# The unexpressed fields that are not JSON as they are (everything else is str or list of str).
_DATA_CONVERT: dict[str, Callable[[Any], Any]] = {"created": _ms, "received": _ms, "logged_on_users": _plain}


_EVIDENCE = {
    "device": _EvidenceSpec(_device, "nt_domain", "ip_addresses", "last_external_ip", "logged_on_users",
                            "health_status"),
    "user": _EvidenceSpec(_user_evidence),
    "file": _EvidenceSpec(_file_evidence, "detection_status", "file.signer", "file.issuer"),
    "process": _EvidenceSpec(_process, "detection_status", "image.signer", "image.issuer",
                             "parent_image.signer", "parent_image.issuer"),
    "ip": _EvidenceSpec(_ip, "country_name"),
    "url": _EvidenceSpec(_url),
    "mailbox": _EvidenceSpec(_mailbox, "upn", "user.upn"),
    "mail_message": _EvidenceSpec(_mail_message, "sender_display_name", "received", "delivery_action",
                                  "delivery_location", "direction", "urls", "threats"),
}


def _evidences(alert: Alert) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """(OCSF evidences, evidence with no OCSF object, as plain data for `unmapped`)."""
    mapped: list[dict[str, Any]] = []
    unmapped: list[dict[str, Any]] = []
    for ev in alert.evidence:
        spec = _EVIDENCE.get(ev.kind)
        if spec is None:
            unmapped.append(_plain(ev))
            continue
        item = spec.build(ev)
        item["name"] = ev.odata_type
        item["verdict_id"], item["verdict"] = _caption(_EVIDENCE_VERDICT, ev.verdict, (0, "Unknown"))
        data = spec.data(ev)
        if data:
            item["data"] = data
        mapped.append(item)
    return mapped or None, unmapped or None


def _attacks(alert: Alert) -> list[dict[str, Any]] | None:
    """MITRE techniques (T1059.001 -> technique T1059 + sub-technique T1059.001); the tactic
    is filled only when the alert's categories name exactly one ATT&CK tactic."""
    categories = alert.categories or ([alert.category] if alert.category else [])
    tactics = {_TACTICS[c.lower()] for c in categories if c.lower() in _TACTICS}
    tactic = None
    if len(tactics) == 1:
        uid, name = tactics.pop()
        tactic = {"uid": uid, "name": name}
    attacks = []
    for technique in alert.mitre_techniques:
        parent, dot, _ = technique.partition(".")
        attack: dict[str, Any] = {"technique": {"uid": parent}}
        if dot:
            attack["sub_technique"] = {"uid": technique}
        if tactic:
            attack["tactic"] = tactic
        attacks.append(attack)
    if not attacks and tactic:
        attacks.append({"tactic": tactic})
    return attacks or None


def _comment(comment: Comment) -> dict[str, Any]:
    return _compact({"text": comment.text, "author": comment.author, "created_time": _ms(comment.created)})


def _severity(alert: Alert) -> tuple[int, str]:
    if alert.severity is Severity.unknown and (alert.severity_original or "").lower() not in _NOT_A_SEVERITY:
        return 99, alert.severity_original  # a severity Graph added later: Other, as sent
    return _SEVERITY[alert.severity]


# --------------------------------------------------------------------------- entry points


def to_ocsf(alert: Alert) -> dict[str, Any]:
    """The alert as an OCSF Detection Finding (a JSON-ready dict)."""
    times = alert.times
    updated = _ms(times.last_updated)
    first, last = _ms(times.first_activity), _ms(times.last_activity)
    activity_id, activity = _ACTIVITY.get(alert.status or "", _UPDATE)
    severity_id, severity = _severity(alert)
    status_id, status = _caption(_STATUS, alert.status, (0, "Unknown"))
    attacks = _attacks(alert)
    evidences, other_evidence = _evidences(alert)
    categories = alert.categories or ([alert.category] if alert.category else None)

    finding_info = _compact({
        "uid": alert.id,
        "uid_alt": alert.provider_alert_id,
        "title": alert.title,
        "desc": alert.description,
        "types": categories,
        "analytic": _compact({"type_id": 1, "type": "Rule", "uid": alert.detector_id, "name": alert.title}),
        "attacks": attacks,
        "created_time": _ms(times.created),
        "first_seen_time": first,
        "last_seen_time": last,
        "modified_time": updated,
        "src_url": alert.alert_web_url,
    })
    product = _compact({
        "name": alert.product_name or _PRODUCT_NAMES.get(alert.service_source or "", _DEFAULT_PRODUCT),
        "vendor_name": VENDOR,
        "uid": alert.service_source,
        "feature": {"name": alert.detection_source} if alert.detection_source else None,
    })
    metadata = _compact({
        "version": OCSF_VERSION,
        "product": product,
        "profiles": list(PROFILES),
        "uid": alert.version_key,
        "correlation_uid": alert.incident_id,
        "tenant_uid": alert.tenant.id,
        "labels": [alert.tenant.label],
        "original_time": times.last_updated.isoformat(),
        "logged_time": _ms(times.ingested),
        "log_name": alert.source,
    })
    unmapped = _compact({
        "mssp": {"tenant_id": alert.tenant.id, "customer": alert.tenant.label},
        "schema_version": alert.schema_version,
        "determination": alert.determination,
        "investigation_state": alert.investigation_state,
        "actor_display_name": alert.actor_display_name,
        "threat_display_name": alert.threat_display_name,
        "threat_family_name": alert.threat_family_name,
        "alert_policy_id": alert.alert_policy_id,
        "resolved_time": _ms(times.resolved),
        "system_tags": alert.system_tags or None,
        "comments": [_comment(c) for c in alert.comments] if alert.comments else None,
        "custom_details": alert.custom_details or None,
        "additional_data": alert.additional_data or None,
        "extra": alert.extra or None,
        "evidence": other_evidence,
    })
    event = {
        **_CLASS,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 200400 + activity_id,
        "type_name": f"Detection Finding: {activity}",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": updated,
        "start_time": first,
        "end_time": last,
        "message": alert.title,
        "is_alert": activity_id != 3,
        "finding_info": finding_info,
        "attacks": attacks,  # security_control profile: the same list as in finding_info
        "metadata": metadata,
        "src_url": alert.incident_web_url,  # incident profile: the incident's page
        "assignee": {"name": alert.assigned_to} if alert.assigned_to else None,
        "remediation": {"desc": alert.recommended_actions} if alert.recommended_actions else None,
        "evidences": evidences,
        "unmapped": unmapped,
    }
    if alert.classification is not None:
        event["verdict_id"], event["verdict"] = _caption(_VERDICT, alert.classification, (0, "Unknown"))
    return _compact(event)


def encode(alert: Alert) -> bytes:
    """One OCSF Detection Finding as one line of JSON (no trailing newline)."""
    return jsonutil.dumps(to_ocsf(alert))
