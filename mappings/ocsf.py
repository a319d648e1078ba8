"""`core.model.schema.Alert` -> OCSF 1.8.0 Detection Finding (class_uid 2004), one JSON line.

Choices, after the OCSF schema (docs/formats.md is the page that documents them):
- `activity_id` (and `type_uid` = 200400 + it): 3 Close when the alert's status is
  `resolved`, whatever else; otherwise 1 Create for the first version of the alert the
  forwarder ever queued and 2 Update for every later one (`Alert.first_sight`, which the
  pipeline sets from its state). Where nobody knows (`first_sight` None, e.g. `convert`),
  the status decides alone: `new` is a Create, anything else an Update. `is_alert` is true
  except on Close (the schema: a Close is not an alertable signal).
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
  detectorId, name = title (left out when the alert has neither). `metadata.product` =
  productName (or the serviceSource's product), vendor Microsoft, uid = serviceSource,
  feature = detectionSource.
- `metadata.uid` = the version key, `correlation_uid` = the incident id, `tenant_uid` +
  `labels` = the customer tenant id and label (also in `unmapped.mssp`).
- Evidence goes to its OCSF typed home in `evidences[]` (name = @odata.type): device, user,
  file, process, url, ip (src_endpoint for roles source/attacker, else dst_endpoint), mail
  message (email: from = the P1 sender, to = the recipient; not the deprecated smtp_from/
  smtp_to), mailbox (user: OCSF's email object is a message). The Defender device a
  file/process was seen on is its `device` (uid). The other types (registry and cloud/OAuth
  apps from their models, the rest read off the Graph object by `_OTHER_BUILDERS`):
  registry key/value -> win/reg_key,
  reg_value (`metadata.extensions` then names the Windows extension); cloud and OAuth apps,
  cloud resources, Kubernetes objects, container images/registries, AD domains, AI agents,
  GitHub orgs/repos, security groups, a SAS token's storage resource -> resources; blob
  containers and blobs -> databucket; containers -> container; DNS -> query; network
  connections -> connection_info + src/dst_endpoint; logon sessions -> actor + device; IoT
  devices, NICs -> device; service principals, GitHub users, mailbox configurations, a Teams
  message's sender -> user; submission mails -> email; malware -> the finding's `malware`.
  An evidence's fields OCSF has no attribute for go to its `data` (for a type read off the
  Graph object: the properties its attributes do not hold whole, under `data.extra`). Evidence
  with no typed home (a file hash, a mail cluster, a logon request, a type Graph adds later)
  goes whole to `unmapped.evidence`. docs/formats.md has the table per type.
- Every object written meets its OCSF constraints; one that cannot is left out and its
  fields go to the evidence's `data` under the schema's names: a user needs a name or uid
  (no account name or SID: the Entra object id is the uid, else the sign-in address the
  name), a device an id, host name or address, a file a name, a process (and its parent)
  a pid, an endpoint an address, a location a city, country or region, a URL its string,
  an email a sender or recipient. An evidence left with no object and no data at all goes
  whole to `unmapped.evidence`.
- A Graph value that does not fit the OCSF type of the attribute it would go to (`TYPE_CHECKS`:
  ip_t, email_t, mac_t, port_t) is not written there: it stays in the evidence's `data`, as
  sent (an IP address with padding or a scope id, an e-mail address without a domain, a port
  out of range), so the line stays valid and nothing is lost.
- `unmapped` carries every other Alert field OCSF has no place for (determination,
  investigation state, threat/actor names, policy id, resolved time, system tags, comments,
  custom details, additional data, the alert's extra properties). Empty values are left out.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Any, NamedTuple

from core.model import jsonutil
from core.model.schema import (
    Alert,
    CloudApplicationEvidence,
    Comment,
    DeviceEvidence,
    EvidenceBase,
    FileEvidence,
    FileInfo,
    Incident,
    IpEvidence,
    MailboxEvidence,
    MailMessageEvidence,
    ProcessEvidence,
    RegistryEvidence,
    Severity,
    UrlEvidence,
    UserEvidence,
    UserInfo,
)
from mappings.evidence import NAMESPACE
from mappings.plain import plain
from mappings.products import DEFAULT_PRODUCT, PRODUCTS

OCSF_VERSION = "1.8.0"
PROFILES = ("incident", "security_control")
VENDOR = "Microsoft"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

# --------------------------------------------------------------------------- enum tables

_WIN_EXTENSION = {"name": "win", "uid": "2", "version": OCSF_VERSION}
_CLASS = {"class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2, "category_name": "Findings"}


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


# finding activities: (activity_id, activity_name, type_uid, type_name), precomputed.
_CREATE, _UPDATE, _CLOSE = ((activity_id, name, 200400 + activity_id, f"Detection Finding: {name}")
                            for activity_id, name in ((1, "Create"), (2, "Update"), (3, "Close")))
_UNKNOWN = (0, "Unknown")


# --------------------------------------------------------------------------- helpers
#
# This runs once per alert per sink, so it builds each OCSF object directly, member by
# member, leaving out the absent ones (OCSF has no nulls), rather than building dicts with
# nulls and filtering them; and it reads each model field once, into a local, where it is
# used more than once.

_last: tuple[datetime, int] = (_EPOCH, 0)  # the last conversion (one tuple: thread-safe)


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding). (Callers test for None.)"""
    global _last
    last = _last
    if moment is last[0]:  # an alert's evidence share one createdDateTime (one object: see the mapping)
        return last[1]
    ms = (moment - _EPOCH) // _MS
    _last = (moment, ms)  # (holding `moment` keeps its id from being reused)
    return ms


def _plain(value: Any) -> Any:
    """A schema value (a model or a list of them) as JSON data, for `unmapped` and evidence
    `data`: the shared helper, with times as ms like every `*_time` here, and an empty
    `extra` kept (as this format has always written it: the bytes must not change)."""
    return plain(value, time=_ms, keep_empty_objects=True)


# --------------------------------------------------------------------------- OCSF typed values
#
# Graph's addresses are written into OCSF attributes whose type has a constraint (ip_t,
# email_t and mac_t a pattern, port_t a range). A value that does not fit its type is not
# written there: it stays in the evidence's `data`, as Graph sent it (so nothing is lost),
# and the line stays valid. Each check is as strict as the official schema or stricter (a
# padded address, `10.0.0.1 `, passes the schema's ip_t pattern but is not an address a SIEM
# can parse; a scope id, `fe80::1%eth0`, is not part of any address a SIEM stores).

_IP_CHECKED: dict[str, bool] = {}  # the alerts of one tenant repeat addresses


def _ip_t(value: str) -> bool:
    """An IPv4 or IPv6 address, exactly (no padding, no scope id, no prefix length)."""
    valid = _IP_CHECKED.get(value)
    if valid is None:
        try:
            valid = "%" not in value and bool(ipaddress.ip_address(value))
        except ValueError:
            valid = False
        if len(value) <= 64:  # (an address is shorter; garbage is not worth remembering)
            if len(_IP_CHECKED) >= 4096:
                _IP_CHECKED.clear()
            _IP_CHECKED[value] = valid
    return valid


# OCSF email_t's pattern (its `+-/` range, which takes a comma, spelled out without the comma),
# matched whole (the schema's `$` would let a trailing newline through).
_EMAIL = re.compile(r"[a-zA-Z0-9!#$%&'*+\-./=?^_`{|}~]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9.-]+")
_MAC = re.compile(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}")  # OCSF mac_t, matched whole


_EMAIL_CHECKED: dict[str, bool] = {}  # (a tenant's users and senders repeat too)


def _email_t(value: str) -> bool:
    valid = _EMAIL_CHECKED.get(value)
    if valid is None:
        valid = _EMAIL.fullmatch(value) is not None
        if len(value) <= 320:  # (the longest e-mail address SMTP carries)
            if len(_EMAIL_CHECKED) >= 4096:
                _EMAIL_CHECKED.clear()
            _EMAIL_CHECKED[value] = valid
    return valid


def _mac_t(value: str) -> bool:
    return _MAC.fullmatch(value) is not None


def _port_t(value: Any) -> bool:
    return value.__class__ is int and 0 <= value <= 65535


# OCSF type -> its check, for every constrained type this mapping writes a Graph value into:
# ip_t (device.ip, src/dst_endpoint.ip, email.x_originating_ip, resources.ip), email_t
# (user.email_addr, email.from, email.to), mac_t (device.mac), port_t (src/dst_endpoint.port).
TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {"ip_t": _ip_t, "email_t": _email_t, "mac_t": _mac_t,
                                                 "port_t": _port_t}


# --------------------------------------------------------------------------- OCSF objects
#
# An OCSF object is only written when it meets its constraints (OCSF leaves an object out
# rather than send it hollow): a user needs a name or uid, a device an address, name or
# uid, a file a name, a process a pid, an endpoint an address, a location a city, country
# or region, a URL its string, an email a sender or recipient. An evidence builder that
# cannot write its object puts the evidence's fields in `data` (the `data` argument), under
# the schema's names, so nothing is lost.


def _user(user: UserInfo | None, email: str | None = None,
          data: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The OCSF user, or None when there is nothing to name it by (OCSF: name or uid).
    With no account name and no SID, the Entra object id is the uid, else the sign-in
    address (`email`, or the UPN) the name. `email_addr` is `email`, else the UPN, whichever
    is an e-mail address (email_t); a UPN that is not one goes to `data['user.upn']` (when
    the caller has a `data`)."""
    if user is None:
        if email is None:
            return None
        return {"name": email, "email_addr": email} if _email_t(email) else {"name": email}
    name, uid, uid_alt = user.account_name, user.sid, user.aad_user_id
    upn = user.upn
    address = email or upn
    if upn is not None and not _email_t(upn):
        if data is not None and upn:
            data["user.upn"] = upn
        upn = None
    mail = email if email is not None and _email_t(email) else upn
    if name is None and uid is None:
        if uid_alt is not None:
            uid, uid_alt = uid_alt, None
        elif address is not None:
            name = address
        else:
            return None
    out = {}
    if name is not None:
        out["name"] = name
    if (value := user.domain) is not None:
        out["domain"] = value
    if uid is not None:
        out["uid"] = uid  # OCSF: "the Windows user SID, ActiveDirectory DN or AWS user ARN"
    if uid_alt is not None:
        out["uid_alt"] = uid_alt
    if mail is not None:
        out["email_addr"] = mail
    if (value := user.display_name) is not None:
        out["display_name"] = value
    return out


def _file(info: FileInfo | None) -> dict[str, Any] | None:
    """The OCSF file, or None when the file has no name (OCSF requires it)."""
    if info is None:
        return None
    name, folder = info.name, info.path
    if name is None:
        return None
    out = {"name": name, "type_id": 1}  # Regular File
    if folder is not None:
        if folder and name:  # Graph's filePath is the folder; OCSF's path is the full path
            separator = "\\" if "\\" in folder else "/"
            out["path"] = folder + name if folder.endswith(separator) else folder + separator + name
        out["parent_folder"] = folder
    if (value := info.size) is not None:
        out["size"] = value
    if (value := info.publisher) is not None:
        out["company_name"] = value
    md5, sha1, sha256 = info.md5, info.sha1, info.sha256
    if md5 or sha1 or sha256:
        hashes = []
        if md5:
            hashes.append({"algorithm_id": 1, "algorithm": "MD5", "value": md5})
        if sha1:
            hashes.append({"algorithm_id": 2, "algorithm": "SHA-1", "value": sha1})
        if sha256:
            hashes.append({"algorithm_id": 3, "algorithm": "SHA-256", "value": sha256})
        out["hashes"] = hashes
    return out


# A file's signer and issuer reach the evidence's `data` under their dotted names (`_KINDS`).
_SIGNATURE = frozenset({"signer", "issuer"})


def _keep_file(info: FileInfo | None, name: str, data: dict[str, Any]) -> None:
    """A file OCSF cannot hold (no name), whole in `data[name]` (less signer and issuer,
    which reach `data` under their dotted names anyway)."""
    if info is not None and (kept := plain(info, time=_ms, keep_empty_objects=True, skip=_SIGNATURE)):
        data[name] = kept


def _keep_user(user: UserInfo | None, data: dict[str, Any]) -> None:
    """A user OCSF cannot hold (no name or uid), whole in `data['user']`."""
    if user is not None and (kept := _plain(user)):
        data["user"] = kept


def _os_type(platform: str) -> tuple[int, str]:
    kind = _OS_TYPE_OF.get(platform)
    if kind is None:
        lowered = platform.lower()
        kind = next((kind for prefix, kind in _OS_TYPES if lowered.startswith(prefix)), _OS_UNKNOWN)
        if len(_OS_TYPE_OF) < 1024:  # a handful of platforms in practice
            _OS_TYPE_OF[platform] = kind
    return kind


_OS_TYPE_OF: dict[str, tuple[int, str]] = {}


def _os(platform: str | None, version: str | None, build: int | None) -> dict[str, Any] | None:
    if not platform:
        return None
    type_id, type_name = _os_type(platform)
    out = {"name": platform, "type_id": type_id, "type": type_name}
    if version is not None:
        out["version"] = version
    if build is not None:
        out["build"] = str(build)
    return out


# Each evidence builder takes one evidence and the evidence's `data`, and returns its OCSF
# attributes.

# A device with no address, name or id: these fields go to `data` instead.
_DEVICE_FIELDS = ("aad_device_id", "dns_domain", "os_platform", "os_version", "os_build", "risk_score", "rbac_group")


def _device(e: DeviceEvidence, data: dict[str, Any]) -> dict[str, Any]:
    uid, hostname = e.mde_device_id, e.hostname
    fqdn = e.fqdn or hostname
    ip = e.last_ip
    if ip is not None and not _ip_t(ip):  # (ip_addresses go to data whole, valid or not)
        if ip:
            data["last_ip"] = ip
        ip = None
    if ip is None:
        ip = next((address for address in e.ip_addresses if _ip_t(address)), None)
    if uid is None and fqdn is None and ip is None:
        for name in _DEVICE_FIELDS:
            if (value := getattr(e, name)) is not None:
                data[name] = value
        return {}
    device = {}
    if uid is not None:
        device["uid"] = uid
    if (value := e.aad_device_id) is not None:
        device["uid_alt"] = value
    if fqdn is not None:
        device["hostname"] = fqdn
    if hostname is not None:
        device["name"] = hostname
    if (value := e.dns_domain) is not None:
        device["domain"] = value
    if ip is not None:
        device["ip"] = ip
    device["type_id"] = 0  # Unknown: Defender does not say server, desktop or laptop
    if (value := _os(e.os_platform, e.os_version, e.os_build)) is not None:
        device["os"] = value
    risk_score = e.risk_score
    if risk_score and (risk := _RISK_LEVEL.get(risk_score)):
        device["risk_level_id"], device["risk_level"] = risk
    if rbac_group := e.rbac_group:
        device["groups"] = [{"name": rbac_group}]
    return {"device": device}


def _user_evidence(e: UserEvidence, data: dict[str, Any]) -> dict[str, Any]:
    user = e.user  # (never None: an empty UserInfo when Graph sends none)
    if (value := _user(user, None, data)) is not None:
        return {"user": value}
    _keep_user(user, data)
    return {}


def _file_evidence(e: FileEvidence, data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    info = e.file
    if (value := _file(info)) is not None:
        out["file"] = value
    else:
        _keep_file(info, "file", data)
    if (value := e.mde_device_id) is not None:
        out["device"] = {"uid": value, "type_id": 0}
    return out


def _process(e: ProcessEvidence, data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    parent_pid, parent_created, parent_image = e.parent_pid, e.parent_created, e.parent_image
    if (pid := e.pid) is None:  # OCSF's process needs a pid (Defender has no other id)
        if (value := e.command_line) is not None:
            data["command_line"] = value
        if (value := e.process_created) is not None:
            data["process_created"] = _ms(value)
        _keep_file(e.image, "image", data)
        if parent_pid is not None:
            data["parent_pid"] = parent_pid
        _keep_user(e.user, data)
    else:
        process = {"pid": pid}
        if (value := e.command_line) is not None:
            process["cmd_line"] = value
        if (value := e.process_created) is not None:
            process["created_time"] = _ms(value)
        if (image := e.image) is not None:
            if (value := image.name) is not None:
                process["name"] = value
            if (value := _file(image)) is not None:
                process["file"] = value
            else:
                _keep_file(image, "image", data)
        if parent_pid is not None:
            parent = {"pid": parent_pid}
            if parent_created is not None:
                parent["created_time"] = _ms(parent_created)
            if parent_image is not None:
                if (value := parent_image.name) is not None:
                    parent["name"] = value
                    parent["file"] = _file(parent_image)
                else:
                    _keep_file(parent_image, "parent_image", data)
            process["parent_process"] = parent
        if (user := e.user) is not None:
            if (value := _user(user, None, data)) is not None:
                process["user"] = value
            else:
                _keep_user(user, data)
        out["process"] = process
    if pid is None or parent_pid is None:  # a parent OCSF cannot hold: its fields to data
        if parent_created is not None:
            data["parent_created"] = _ms(parent_created)
        _keep_file(parent_image, "parent_image", data)
    if (value := e.mde_device_id) is not None:
        out["device"] = {"uid": value, "type_id": 0}
    return out


def _ip(e: IpEvidence, data: dict[str, Any]) -> dict[str, Any]:
    address = e.address
    city, country, region, lat, long = e.city, e.country_code, e.state, e.latitude, e.longitude
    if address is not None and not _ip_t(address):  # not an address: as sent, to data
        if address:
            data["address"] = address
        address = None
    if address is None:  # an endpoint OCSF cannot hold: its location to data
        for name, value in (("country_code", country), ("city", city), ("state", region),
                            ("latitude", lat), ("longitude", long)):
            if value is not None:
                data[name] = value
        return {}
    side = "dst_endpoint"
    for role in e.roles:
        if role in _IP_SIDE:
            side = _IP_SIDE[role]
            break
    endpoint = {"ip": address}
    if city is not None or country is not None or region is not None:
        location = {}
        if city is not None:
            location["city"] = city
        if country is not None:
            location["country"] = country
        if region is not None:
            location["region"] = region
        if lat is not None:
            location["lat"] = lat
        if long is not None:
            location["long"] = long
        endpoint["location"] = location
    else:  # a location with coordinates alone is not one OCSF can hold
        if lat is not None:
            data["latitude"] = lat
        if long is not None:
            data["longitude"] = long
    return {side: endpoint}


def _url(e: UrlEvidence, data: dict[str, Any]) -> dict[str, Any]:
    url = e.url
    return {} if url is None else {"url": {"url_string": url}}


def _mailbox(e: MailboxEvidence, data: dict[str, Any]) -> dict[str, Any]:
    # A mailbox is an account, not a message: OCSF's email object is a message.
    display_name = e.display_name
    primary = e.primary_address
    if primary and not _email_t(primary):  # (the user is still named by it, where nothing else names it)
        data["primary_address"] = primary
    user = _user(e.user, primary, data)
    if user is None:
        if display_name is not None:
            data["display_name"] = display_name
        _keep_user(e.user, data)
        return {}
    if display_name:
        if "display_name" not in user:
            user["display_name"] = display_name
        elif user["display_name"] != display_name:  # the account's own differs: the mailbox's to data
            data["display_name"] = display_name
    return {"user": user}


# A message with neither sender nor recipient: these fields go to `data` instead.
_MESSAGE_FIELDS = ("network_message_id", "internet_message_id", "subject", "sender_ip")


def _mail_message(e: MailMessageEvidence, data: dict[str, Any]) -> dict[str, Any]:
    sender, recipient = e.sender, e.recipient
    if sender is not None and not _email_t(sender):  # not an e-mail address: as sent, to data
        if sender:
            data["sender"] = sender
        sender = None
    if recipient and not _email_t(recipient):
        data["recipient"] = recipient
        recipient = None
    if sender is None and not recipient:
        for name in _MESSAGE_FIELDS:
            if (value := getattr(e, name)) is not None:
                data[name] = value
        return {}
    email = {}
    if (value := e.network_message_id) is not None:
        email["uid"] = value
    if (value := e.internet_message_id) is not None:
        email["message_uid"] = value
    if (value := e.subject) is not None:
        email["subject"] = value
    if sender is not None:
        email["from"] = sender
    if recipient:
        email["to"] = [recipient]
    if sender_ip := e.sender_ip:
        if _ip_t(sender_ip):
            email["x_originating_ip"] = [sender_ip]
        else:
            data["sender_ip"] = sender_ip
    return {"email": email}


def _registry_path(e: RegistryEvidence) -> str | None:
    hive, key = e.hive, e.key
    if hive and key:
        return hive + "\\" + key
    return hive or key or None


# registryValueType (the .NET RegistryValueKind names MDE reports, or the REG_ names) -> reg_value type_id.
_REG_TYPES = {"string": 10, "reg_sz": 10, "expandstring": 4, "reg_expand_sz": 4, "binary": 1, "reg_binary": 1,
              "dword": 2, "reg_dword": 2, "reg_dword_big_endian": 3, "multistring": 6, "reg_multi_sz": 6,
              "qword": 8, "reg_qword": 8, "none": 7, "reg_none": 7, "reg_link": 5}
_REG_CAPTIONS = {1: "REG_BINARY", 2: "REG_DWORD", 3: "REG_DWORD_BIG_ENDIAN", 4: "REG_EXPAND_SZ", 5: "REG_LINK",
                 6: "REG_MULTI_SZ", 7: "REG_NONE", 8: "REG_QWORD", 10: "REG_SZ"}


def _registry(e: RegistryEvidence, data: dict[str, Any]) -> dict[str, Any]:
    """win/reg_value when the value has a name, else win/reg_key (both need the key path);
    the Windows extension is declared in `metadata.extensions` (`to_ocsf`)."""
    out: dict[str, Any] = {}
    path, name = _registry_path(e), e.value_name
    if path is None:
        for field in ("value_name", "value_data", "value_type"):
            if (value := getattr(e, field)) is not None:
                data[field] = value
    elif name:
        value_type = e.value_type
        reg = {"path": path, "name": name}
        if (value := e.value_data) is not None:
            reg["data"] = value
        if value_type:  # OCSF's caption of a type it knows; Graph's name in data (as sent)
            type_id = _REG_TYPES.get(value_type.lower(), 99)
            reg["type_id"], reg["type"] = type_id, _REG_CAPTIONS.get(type_id, value_type)
            if type_id != 99:
                data["value_type"] = value_type
        out["reg_value"] = reg
    else:
        out["reg_key"] = {"path": path}
        for field in ("value_name", "value_data", "value_type"):
            if (value := getattr(e, field)) is not None:
                data[field] = value
    if (value := e.mde_device_id) is not None:
        out["device"] = {"uid": value, "type_id": 0}
    return out


_OAUTH = "#microsoft.graph.security.oauthapplicationevidence"


def _cloud_application(e: CloudApplicationEvidence, data: dict[str, Any]) -> dict[str, Any]:
    """A SaaS (cloud) or OAuth application: a resource of its type, by its app id and name."""
    resource: dict[str, Any] = {}
    if (value := e.display_name) is not None:
        resource["name"] = value
    oauth = e.odata_type.lower() == _OAUTH
    resource["type"] = "OAuth Application" if oauth else "Cloud Application"
    if (value := e.app_id) is not None:
        resource["uid"] = value
    if oauth and (value := _text(e.extra, "objectId")) is not None:
        resource["uid_alt"] = value
    if "name" not in resource and "uid" not in resource:
        return {}
    return {"resources": [resource]}


# ---- evidence types with no typed model: read off the Graph object (the evidence's `extra`)
#
# Each builder takes the Graph object and returns (OCSF attributes, the Graph properties
# they hold whole). Every other property of the object, a sub-object only partly used
# included, goes to the evidence's `data.extra` under Graph's name (`_other_kind`).

def _text(g: Any, key: str) -> str | None:
    """A non-empty string (or an integer id, as a string) at `key` of a Graph object."""
    value = g.get(key) if isinstance(g, dict) else None
    if value.__class__ is str:
        return value or None
    if value.__class__ is int:
        return str(value)
    return None


def _at(g: Any, path: str) -> str | None:
    """`_text` at a dotted path (`namespace.name`)."""
    outer, dot, inner = path.partition(".")
    return _text(g.get(outer) if isinstance(g, dict) else None, inner) if dot else _text(g, path)


def _address(g: Any, key: str) -> str | None:
    """The address of the ipEvidence at `key`, when it is one (ip_t)."""
    sub = g.get(key)
    value = _text(sub, "ipAddress") if isinstance(sub, dict) else None
    return value if value is not None and _ip_t(value) else None


def _graph_user(account: Any) -> dict[str, Any] | None:
    """The OCSF user of a Graph userEvidence (`account`) or userAccount object."""
    if not isinstance(account, dict):
        return None
    if isinstance(inner := account.get("userAccount"), dict):
        account = inner
    return _user(UserInfo(account_name=_text(account, "accountName"), domain=_text(account, "domainName"),
                          upn=_text(account, "userPrincipalName"), sid=_text(account, "userSid"),
                          aad_user_id=_text(account, "azureAdUserId"), display_name=_text(account, "displayName")))


def _graph_device(host: Any) -> dict[str, Any] | None:
    """The OCSF device of a Graph deviceEvidence object (its identifiers)."""
    if not isinstance(host, dict):
        return None
    device = {}
    if (value := _text(host, "mdeDeviceId")) is not None:
        device["uid"] = value
    hostname = _text(host, "hostName")
    if (value := _text(host, "deviceDnsName") or hostname) is not None:
        device["hostname"] = value
    if hostname is not None:
        device["name"] = hostname
    if (value := _text(host, "lastIpAddress")) is not None and _ip_t(value):
        device["ip"] = value
    if not device:
        return None
    device["type_id"] = 0
    return device


OtherResult = tuple[dict[str, Any], tuple[str, ...]]


# The attributes of a resource, in the order they are written; those of a constrained type, its check.
_RESOURCE_ORDER = ("name", "type", "uid", "uid_alt", "namespace", "version", "ip")
_RESOURCE_CHECKS = {"ip": _ip_t}


def _resource_builder(label: str, **attributes: str) -> Callable[[dict[str, Any]], OtherResult]:
    """A builder of one `resources` entry: OCSF attribute -> Graph path (`a.b`: a sub-object's
    property); `type` is the Graph path of the type the source gives, else `label`. OCSF's
    resource needs a name or uid."""
    attributes.setdefault("type", "")
    rows = tuple((name, attributes[name], _RESOURCE_CHECKS.get(name)) for name in _RESOURCE_ORDER
                 if name in attributes)

    def build(g: dict[str, Any]) -> OtherResult:
        resource: dict[str, Any] = {}
        used = []
        for attribute, path, check in rows:
            if not path:  # the type, where the source gives none
                resource[attribute] = label
            elif (value := _at(g, path)) is not None and (check is None or check(value)):
                resource[attribute] = value
                if "." not in path:
                    used.append(path)
            elif attribute == "type":
                resource[attribute] = label
        if "name" not in resource and "uid" not in resource:
            return {}, ()
        return {"resources": [resource]}, tuple(used)
    return build


def _in_namespace(label: str, **more: str) -> Callable[[dict[str, Any]], OtherResult]:
    """A Kubernetes object: a resource named in its namespace."""
    return _resource_builder(label, name="name", namespace="namespace.name", **more)


def _blob_container(g: dict[str, Any]) -> OtherResult:
    name, url = _text(g, "name"), _text(g, "url")
    if name is None and url is None:
        return {}, ()
    bucket: dict[str, Any] = {}
    if name is not None:
        bucket["name"] = name
    if url is not None:
        bucket["uid"] = url
    bucket["type_id"], bucket["type"] = 2, "Azure Blob"
    return {"databucket": bucket}, ("name", "url")


_HASH_ALGORITHMS = {"md5": (1, "MD5"), "sha1": (2, "SHA-1"), "sha256": (3, "SHA-256")}


def _blob(g: dict[str, Any]) -> OtherResult:
    """A blob is a file in a data bucket (its container): databucket.file; with no container
    to name, the file alone."""
    name, url = _text(g, "name"), _text(g, "url")
    used: list[str] = []
    file: dict[str, Any] | None = None
    if name is not None:
        file = {"name": name, "type_id": 1}
        used.append("name")
        if url is not None:
            file["uri"] = url
            used.append("url")
        hashes = []
        listed = g.get("fileHashes")
        for item in listed if isinstance(listed, list) else ():
            if (value := _text(item, "value")) is not None:
                algorithm = item.get("algorithm")
                algorithm = algorithm if algorithm.__class__ is str else None
                algorithm_id, caption = _HASH_ALGORITHMS.get(algorithm) or (
                    (0, "Unknown") if algorithm in (None, "unknown", "unknownFutureValue") else (99, str(algorithm)))
                hashes.append({"algorithm_id": algorithm_id, "algorithm": caption, "value": value})
        if hashes:
            file["hashes"] = hashes
    container, _ = _blob_container(g.get("blobContainer") if isinstance(g.get("blobContainer"), dict) else {})
    if container:
        bucket = container["databucket"]  # (a new dict: the blob's own)
        if file is not None:
            bucket["file"] = file
        return {"databucket": bucket}, tuple(used)
    return ({"file": file}, tuple(used)) if file is not None else ({}, ())


def _session(g: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The actor of a logon session: its session (by id) and user (the Graph `account`)."""
    actor: dict[str, Any] = {}
    used = []
    if (value := _text(g, "sessionId")) is not None:
        actor["session"] = {"uid": value}
        used.append("sessionId")
    if (user := _graph_user(g.get("account"))) is not None:
        actor["user"] = user
    return ({"actor": actor} if actor else {}), used


def _cloud_logon_session(g: dict[str, Any]) -> OtherResult:
    out, used = _session(g)
    name = _text(g, "deviceName")
    if name is not None:
        device: dict[str, Any] = {"name": name, "type_id": 0}
        used.append("deviceName")
        if (value := _os(_text(g, "operatingSystem"), None, None)) is not None:
            device["os"] = value
            used.append("operatingSystem")
        out["device"] = device
    return out, tuple(used)


def _host_logon_session(g: dict[str, Any]) -> OtherResult:
    out, used = _session(g)
    if (device := _graph_device(g.get("host"))) is not None:
        out["device"] = device
    return out, tuple(used)


def _container(g: dict[str, Any]) -> OtherResult:
    container: dict[str, Any] = {}
    used = []
    if (value := _text(g, "name")) is not None:
        container["name"] = value
        used.append("name")
    if (value := _text(g, "containerId")) is not None:
        container["uid"] = value
        used.append("containerId")
    if not container:
        return {}, ()
    if (value := _at(g, "image.imageId")) is not None:
        container["image"] = {"uid": value}
    if isinstance(g.get("pod"), dict):
        container["orchestrator"] = "Kubernetes"
    return {"container": container}, tuple(used)


def _dns(g: dict[str, Any]) -> OtherResult:
    """The query (its domain name); the host that asked is the source, the DNS server the
    destination."""
    out: dict[str, Any] = {}
    used = []
    if (value := _text(g, "domainName")) is not None:
        out["query"] = {"hostname": value}
        used.append("domainName")
    if (value := _address(g, "hostIpAddress")) is not None:
        out["src_endpoint"] = {"ip": value}
    if (value := _address(g, "dnsServerIp")) is not None:
        out["dst_endpoint"] = {"ip": value}
    return out, tuple(used)


def _iot_device(g: dict[str, Any]) -> OtherResult:
    device: dict[str, Any] = {}
    used = []
    for attribute, key in (("uid", "deviceId"), ("name", "deviceName")):
        if (value := _text(g, key)) is not None:
            device[attribute] = value
            used.append(key)
    if (value := _address(g, "ipAddress")) is not None:
        device["ip"] = value
    if not device:
        return {}, ()
    if (value := _text(g, "macAddress")) is not None and _mac_t(value):
        device["mac"] = value
        used.append("macAddress")
    device["type_id"], device["type"] = 7, "IOT"
    if (value := _os(_text(g, "operatingSystem"), None, None)) is not None:
        device["os"] = value
        used.append("operatingSystem")
    for attribute, key in (("model", "model"), ("vendor_name", "manufacturer")):
        if (value := _text(g, key)) is not None:
            device[attribute] = value
            used.append(key)
    if (value := _text(g, "serialNumber")) is not None:
        device["hw_info"] = {"serial_number": value}
        used.append("serialNumber")
    return {"device": device}, tuple(used)


def _nic(g: dict[str, Any]) -> OtherResult:
    """A network interface: the device that has it, by the interface's address."""
    ip = _address(g, "ipAddress")
    if ip is None:
        return {}, ()
    device: dict[str, Any] = {"ip": ip}
    used = []
    if (value := _text(g, "macAddress")) is not None and _mac_t(value):
        device["mac"] = value
        used.append("macAddress")
    device["type_id"] = 0
    return {"device": device}, tuple(used)


_PROTOCOLS = {"tcp": 6, "udp": 17}  # IANA protocol numbers


def _endpoint(g: dict[str, Any], address: str, port: str, used: list[str]) -> dict[str, Any] | None:
    ip = _address(g, address)
    if ip is None:
        return None
    endpoint: dict[str, Any] = {"ip": ip}
    value = g.get(port)
    if value.__class__ is int and 0 <= value <= 65535:
        endpoint["port"] = value
        used.append(port)
    return endpoint


def _network_connection(g: dict[str, Any]) -> OtherResult:
    """The connection (its protocol), then its two ends."""
    out: dict[str, Any] = {}
    used: list[str] = []
    if (protocol := _text(g, "protocol")) is not None:
        info: dict[str, Any] = {"protocol_name": protocol}
        if (known := _PROTOCOLS.get(protocol)) is not None:
            info["protocol_num"] = known
        info["direction_id"], info["direction"] = 0, "Unknown"
        out["connection_info"] = info
        used.append("protocol")
    if (endpoint := _endpoint(g, "sourceAddress", "sourcePort", used)) is not None:
        out["src_endpoint"] = endpoint
    if (endpoint := _endpoint(g, "destinationAddress", "destinationPort", used)) is not None:
        out["dst_endpoint"] = endpoint
    return out, tuple(used)


def _mailbox_configuration(g: dict[str, Any]) -> OtherResult:
    address, upn = _text(g, "mailboxPrimaryAddress"), _text(g, "upn")
    user = _user(UserInfo(upn=upn, aad_user_id=_text(g, "externalDirectoryObjectId"),
                          display_name=_text(g, "displayName")), address)
    if user is None:
        return {}, ()
    if address is not None and not _email_t(address):  # not an e-mail address: stays in data.extra
        return {"user": user}, ("externalDirectoryObjectId", "displayName")
    return {"user": user}, ("mailboxPrimaryAddress", "externalDirectoryObjectId", "displayName")


# malwareEvidence category (lower case) -> OCSF malware classification id.
_MALWARE_CLASSES = {"adware": 1, "backdoor": 2, "bot": 3, "bootkit": 4, "ddos": 5, "downloader": 6,
                    "trojandownloader": 6, "dropper": 7, "trojandropper": 7, "exploit": 8, "exploit-kit": 8,
                    "keylogger": 9, "ransom": 10, "ransomware": 10, "remote-access-trojan": 11,
                    "remoteaccesstrojan": 11, "rogue": 14, "roguesecuritysoftware": 14, "rootkit": 15,
                    "spyware": 17, "trojan": 18, "trojanspy": 17, "virus": 19, "webshell": 20, "wiper": 21,
                    "worm": 22}


def _malware(g: dict[str, Any]) -> OtherResult:
    """The finding's `malware` (OCSF has no malware attribute in an evidence): `to_ocsf`
    moves it out of the evidence."""
    name = _text(g, "name")
    if name is None:
        return {}, ()
    category = _text(g, "category")
    malware: dict[str, Any] = {"name": name}
    if category is None:
        malware["classification_ids"] = [0]
    else:
        malware["classification_ids"] = [_MALWARE_CLASSES.get(category.lower(), 99)]
        malware["classifications"] = [category]
    return {"malware": malware}, ("name", "category")


def _service_principal(g: dict[str, Any]) -> OtherResult:
    user: dict[str, Any] = {}
    used = []
    for attribute, key in (("name", "servicePrincipalName"), ("uid", "servicePrincipalObjectId"),
                           ("uid_alt", "appId")):
        if (value := _text(g, key)) is not None:
            user[attribute] = value
            used.append(key)
    if "name" not in user and "uid" not in user:
        return {}, ()
    user["type_id"], user["type"] = 4, "Service"
    return {"user": user}, tuple(used)


def _github_user(g: dict[str, Any]) -> OtherResult:
    user: dict[str, Any] = {}
    used = []
    for attribute, key in (("name", "login"), ("uid", "userId"), ("email_addr", "email"), ("full_name", "name")):
        if (value := _text(g, key)) is not None and (attribute != "email_addr" or _email_t(value)):
            user[attribute] = value
            used.append(key)
    if "name" not in user and "uid" not in user:
        return {}, ()
    return {"user": user}, tuple(used)


def _submission_mail(g: dict[str, Any]) -> OtherResult:
    sender, recipient = _text(g, "sender"), _text(g, "recipient")
    # (one that is not an e-mail address stays in data.extra, as sent)
    sender = sender if sender is not None and _email_t(sender) else None
    recipient = recipient if recipient is not None and _email_t(recipient) else None
    if sender is None and recipient is None:
        return {}, ()
    email: dict[str, Any] = {}
    used = [key for key, value in (("sender", sender), ("recipient", recipient)) if value is not None]
    for attribute, key in (("uid", "networkMessageId"), ("subject", "subject")):
        if (value := _text(g, key)) is not None:
            email[attribute] = value
            used.append(key)
    if sender is not None:
        email["from"] = sender
    if recipient is not None:
        email["to"] = [recipient]
    if (value := _text(g, "senderIp")) is not None and _ip_t(value):
        email["x_originating_ip"] = [value]
        used.append("senderIp")
    return {"email": email}, tuple(used)


def _teams_message(g: dict[str, Any]) -> OtherResult:
    """OCSF's email is an e-mail message, not a chat message: the sender is the user."""
    sender = _text(g, "senderFromAddress")
    if not sender:
        return {}, ()
    if not _email_t(sender):  # the name still, but not the address: it stays in data.extra
        return {"user": {"name": sender}}, ()
    return {"user": {"name": sender, "email_addr": sender}}, ("senderFromAddress",)


# Graph evidence type -> its builder. A type not here (fileHashEvidence: OCSF's file needs
# a name; mailClusterEvidence: no sender or recipient; cloudLogonRequestEvidence: a request
# id alone) goes whole to `unmapped.evidence`.
_OTHER_BUILDERS: dict[str, Callable[[dict[str, Any]], OtherResult]] = {
    "activeDirectoryDomainEvidence": _resource_builder("Active Directory Domain", name="activeDirectoryDomainName"),
    "aiAgentEvidence": _resource_builder("AI Agent", name="agentName", uid="agentId"),
    "amazonResourceEvidence": _resource_builder("Amazon Resource", name="resourceName", type="resourceType",
                                                uid="amazonResourceId"),
    "azureResourceEvidence": _resource_builder("Azure Resource", name="resourceName", type="resourceType",
                                               uid="resourceId"),
    "googleCloudResourceEvidence": _resource_builder("Google Cloud Resource", name="resourceName",
                                                     type="resourceType", uid="fullResourceName"),
    "containerImageEvidence": _resource_builder("Container Image", uid="imageId"),
    "containerRegistryEvidence": _resource_builder("Container Registry", name="registry"),
    "gitHubOrganizationEvidence": _resource_builder("GitHub Organization", name="login", uid="orgId"),
    "gitHubRepoEvidence": _resource_builder("GitHub Repository", uid="repoId"),
    "kubernetesClusterEvidence": _resource_builder("Kubernetes Cluster", name="name", version="version"),
    "kubernetesControllerEvidence": _in_namespace("Kubernetes Controller"),
    "kubernetesNamespaceEvidence": _resource_builder("Kubernetes Namespace", name="name"),
    "kubernetesPodEvidence": _in_namespace("Kubernetes Pod", ip="podIp.ipAddress"),
    "kubernetesSecretEvidence": _in_namespace("Kubernetes Secret"),
    "kubernetesServiceAccountEvidence": _in_namespace("Kubernetes Service Account"),
    "kubernetesServiceEvidence": _in_namespace("Kubernetes Service", ip="clusterIP.ipAddress"),
    "sasTokenEvidence": _resource_builder("Azure Resource", name="storageResource.resourceName",
                                          type="storageResource.resourceType", uid="storageResource.resourceId"),
    "securityGroupEvidence": _resource_builder("Security Group", name="displayName", uid="securityGroupId",
                                               uid_alt="activeDirectoryObjectGuid"),
    "blobContainerEvidence": _blob_container,
    "blobEvidence": _blob,
    "cloudLogonSessionEvidence": _cloud_logon_session,
    "hostLogonSessionEvidence": _host_logon_session,
    "containerEvidence": _container,
    "dnsEvidence": _dns,
    "ioTDeviceEvidence": _iot_device,
    "nicEvidence": _nic,
    "networkConnectionEvidence": _network_connection,
    "mailboxConfigurationEvidence": _mailbox_configuration,
    "malwareEvidence": _malware,
    "servicePrincipalEvidence": _service_principal,
    "gitHubUserEvidence": _github_user,
    "submissionMailEvidence": _submission_mail,
    "teamsMessageEvidence": _teams_message,
}

# The Graph properties every evidence's model holds (EvidenceBase), left out of `data.extra`.
_BASE_PROPERTIES = frozenset({"@odata.type", "createdDateTime", "verdict", "remediationStatus", "roles",
                              "detailedRoles", "tags"})


def _other_kind(build: Callable[[dict[str, Any]], OtherResult]) -> Builder:
    def builder(e: EvidenceBase, data: dict[str, Any]) -> dict[str, Any]:
        g = e.extra
        out, used = build(g)
        rest = {key: value for key, value in g.items() if key not in _BASE_PROPERTIES and key not in used}
        if rest:
            data["extra"] = rest
        return out
    return builder


# --------------------------------------------------------------------------- evidence table
#
# Each evidence kind OCSF has an object for: its builder, and the fields the builder has no
# attribute for, which go to the evidence's `data` (dotted: a field of a sub-object, under
# the dotted name). Every kind also sends the evidence's own fields OCSF has no attribute
# for (`_EVIDENCE_DATA`) to `data`, then its `extra`. `_evidence` walks the table.

Builder = Callable[[Any, dict[str, Any]], dict[str, Any]]

# The fields of every evidence (EvidenceBase) that go to `data`, before the kind's own.
_EVIDENCE_DATA = ("created", "remediation_status", "roles", "detailed_roles", "tags")

# The `data` fields that are not JSON as they are (every other one is str or list of str).
_DATA_CONVERT: dict[str, Callable[[Any], Any]] = {"created": _ms, "received": _ms, "logged_on_users": _plain}


class _Kind(NamedTuple):
    """One row of `_KINDS`, with what `_evidence` needs of its names worked out once."""

    build: Builder
    # The `data` fields read off the evidence itself: (name, its converter or None for as-is).
    fields: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    # The values of `fields`, all in one call (a C loop, where a Python loop of getattr
    # calls costs more than a third of the evidence's whole conversion).
    read: Callable[[EvidenceBase], tuple[Any, ...]]
    # The `data` fields of a sub-object that may be absent: (dotted name, sub-object, field).
    nested: tuple[tuple[str, str, str], ...]
    # False for a type with no typed model: its builder puts what it did not use of the Graph
    # object (the evidence's `extra`) in `data["extra"]` itself.
    keeps_extra: bool = True


def _kind(build: Builder, *unexpressed: str, keeps_extra: bool = True) -> _Kind:
    names: list[str] = [*_EVIDENCE_DATA]
    nested: list[tuple[str, str, str]] = []
    for name in unexpressed:
        if "." in name:  # one level deep: "file.signer"
            outer, _, inner = name.partition(".")
            nested.append((name, outer, inner))
        else:
            names.append(name)
    return _Kind(build, tuple((name, _DATA_CONVERT.get(name)) for name in names), attrgetter(*names), tuple(nested),
                 keeps_extra)


_KINDS = {
    "device": _kind(_device, "nt_domain", "ip_addresses", "last_external_ip", "logged_on_users", "health_status"),
    "user": _kind(_user_evidence),
    "file": _kind(_file_evidence, "detection_status", "file.signer", "file.issuer"),
    "process": _kind(_process, "detection_status", "image.signer", "image.issuer",
                     "parent_image.signer", "parent_image.issuer"),
    "ip": _kind(_ip, "country_name"),
    "url": _kind(_url),
    "mailbox": _kind(_mailbox, "upn", "user.upn"),
    "mail_message": _kind(_mail_message, "sender_display_name", "received", "delivery_action",
                          "delivery_location", "direction", "urls", "threats"),
    "registry": (_REGISTRY := _kind(_registry)),
    "cloud_application": _kind(_cloud_application, "instance_name", "publisher"),
}
# The types with no typed model (OtherEvidence), by their @odata.type in lower case.
_OTHER_KINDS = {(NAMESPACE + name).lower(): _kind(_other_kind(build), keeps_extra=False)
                for name, build in _OTHER_BUILDERS.items()}


# OCSF 1.8.0's constraint on an evidence: at least one of these (not `resources`, not
# `container`); `data` meets it, so an evidence with neither an attribute of this list nor
# data of its own gets an empty `data`.
_EVIDENCE_OBJECTS = frozenset({"actor", "api", "connection_info", "data", "database", "databucket", "device",
                               "dst_endpoint", "email", "file", "process", "query", "src_endpoint", "url", "user",
                               "job", "script", "reg_key", "reg_value", "win_service"})


def _evidence(ev: EvidenceBase, kind: _Kind) -> dict[str, Any] | None:
    """The whole OCSF evidence: the builder's attributes, then name, verdict and data; None
    when there is neither an attribute nor data (OCSF needs one of them)."""
    data: dict[str, Any] = {}
    item = kind.build(ev, data)
    for (name, convert), value in zip(kind.fields, kind.read(ev)):
        if value:
            data[name] = value if convert is None else convert(value)
    for name, outer, inner in kind.nested:
        if (sub := getattr(ev, outer)) is not None and (value := getattr(sub, inner)):
            data[name] = value
    if kind.keeps_extra:
        if extra := ev.extra:
            data["extra"] = extra
    elif (extra := data.pop("extra", None)) is not None:  # after the base fields, as on every kind
        data["extra"] = extra
    if not item and not data:
        return None
    item["name"] = ev.odata_type
    verdict = ev.verdict
    item["verdict_id"], item["verdict"] = _UNKNOWN if verdict is None else _EVIDENCE_VERDICT.get(verdict) or (99, verdict)
    if data:
        item["data"] = data
    elif item.keys().isdisjoint(_EVIDENCE_OBJECTS):  # resources or container alone (OCSF lists neither)
        item["data"] = {}
    return item


def _evidences(evidence: list[EvidenceBase]) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None,
                                                   list[dict[str, Any]] | None, bool]:
    """(OCSF evidences, evidence with no OCSF object as plain data for `unmapped`, the
    finding's malware, whether a Windows registry object was written)."""
    mapped: list[dict[str, Any]] = []
    unmapped: list[dict[str, Any]] = []
    malware: list[dict[str, Any]] = []
    registry = False
    for ev in evidence:
        kind = _KINDS.get(ev.kind) or _OTHER_KINDS.get(ev.odata_type.lower())
        item = None if kind is None else _evidence(ev, kind)
        if item is None:
            unmapped.append(_plain(ev))
            continue
        if kind is _REGISTRY:
            registry = registry or "reg_key" in item or "reg_value" in item
        elif "malware" in item:  # a finding attribute, not an evidence one
            malware.append(item.pop("malware"))
            if "data" not in item and len(item) == 3:  # name and verdict alone: no evidence
                continue
        mapped.append(item)
    return mapped or None, unmapped or None, malware or None, registry


def _attacks(categories: list[str] | None, techniques: list[str]) -> list[dict[str, Any]] | None:
    """MITRE techniques (T1059.001 -> technique T1059 + sub-technique T1059.001); the tactic
    is filled only when the alert's categories name exactly one ATT&CK tactic."""
    tactic = None
    if categories:
        if len(categories) == 1:
            found = _TACTICS.get(categories[0].lower())
        else:
            tactics = {_TACTICS[c.lower()] for c in categories if c.lower() in _TACTICS}
            found = tactics.pop() if len(tactics) == 1 else None
        if found is not None:
            tactic = {"uid": found[0], "name": found[1]}
    attacks = []
    for technique in techniques:
        parent, dot, _ = technique.partition(".")
        if not parent:  # "" or ".001": no technique to name
            continue
        attack: dict[str, Any] = {"technique": {"uid": parent}}
        if dot:
            attack["sub_technique"] = {"uid": technique}
        if tactic:
            attack["tactic"] = tactic
        attacks.append(attack)
    return attacks or ([{"tactic": tactic}] if tactic else None)


def _comment(comment: Comment) -> dict[str, Any]:
    out = {}
    if (value := comment.text) is not None:
        out["text"] = value
    if (value := comment.author) is not None:
        out["author"] = value
    if (value := comment.created) is not None:
        out["created_time"] = _ms(value)
    return out


def _severity(severity: Severity, original: str | None) -> tuple[int, str]:
    if severity is Severity.unknown and (original or "").lower() not in _NOT_A_SEVERITY:
        return 99, original  # a severity Graph added later: Other, as sent
    return _SEVERITY[severity]


# --------------------------------------------------------------------------- entry points


def to_ocsf(alert: Alert) -> dict[str, Any]:
    """The alert as an OCSF Detection Finding (a JSON-ready dict)."""
    times = alert.times
    tenant_id, tenant_label = alert.tenant.id, alert.tenant.label
    title = alert.title
    status = alert.status
    last_updated = times.last_updated
    # The alert's own times are its own: no use asking _ms's cache.
    updated = (last_updated - _EPOCH) // _MS
    first = None if (value := times.first_activity) is None else (value - _EPOCH) // _MS
    last = None if (value := times.last_activity) is None else (value - _EPOCH) // _MS
    first_sight = alert.first_sight
    if status == "resolved":
        activity_id, activity, type_uid, type_name = _CLOSE
    elif first_sight is None:  # nobody knows (`convert`): judge by the status alone
        activity_id, activity, type_uid, type_name = _CREATE if status == "new" else _UPDATE
    else:
        activity_id, activity, type_uid, type_name = _CREATE if first_sight else _UPDATE
    severity_id, severity = _severity(alert.severity, alert.severity_original)
    status_id, status_name = _UNKNOWN if status is None else _STATUS.get(status) or (99, status)
    category = alert.category
    categories = alert.categories or ([category] if category else None)
    attacks = _attacks(categories, alert.mitre_techniques)
    evidences, other_evidence, malware, registry = _evidences(alert.evidence)

    info = {"uid": alert.id}
    if (value := alert.provider_alert_id) is not None:
        info["uid_alt"] = value
    if title is not None:
        info["title"] = title
    if (value := alert.description) is not None:
        info["desc"] = value
    if categories is not None:
        info["types"] = categories
    detector_id = alert.detector_id
    if detector_id is not None or title is not None:  # OCSF's analytic needs a uid or a name
        analytic = {"type_id": 1, "type": "Rule"}
        if detector_id is not None:
            analytic["uid"] = detector_id
        if title is not None:
            analytic["name"] = title
        info["analytic"] = analytic
    if attacks is not None:
        info["attacks"] = attacks
    if (value := times.created) is not None:
        info["created_time"] = (value - _EPOCH) // _MS
    if first is not None:
        info["first_seen_time"] = first
    if last is not None:
        info["last_seen_time"] = last
    info["modified_time"] = updated
    if (value := alert.alert_web_url) is not None:
        info["src_url"] = value

    service_source = alert.service_source
    product = {"name": alert.product_name or PRODUCTS.get(service_source or "", DEFAULT_PRODUCT),
               "vendor_name": VENDOR}
    if service_source is not None:
        product["uid"] = service_source
    if detection_source := alert.detection_source:
        product["feature"] = {"name": detection_source}
    metadata = {"version": OCSF_VERSION, "product": product, "profiles": list(PROFILES), "uid": alert.version_key}
    if (value := alert.incident_id) is not None:
        metadata["correlation_uid"] = value
    metadata["tenant_uid"] = tenant_id
    metadata["labels"] = [tenant_label]
    metadata["original_time"] = last_updated.isoformat()
    if (value := times.ingested) is not None:
        metadata["logged_time"] = (value - _EPOCH) // _MS
    metadata["log_name"] = alert.source
    if registry:  # reg_key, reg_value: objects of the Windows extension
        metadata["extensions"] = [_WIN_EXTENSION]

    unmapped = {"mssp": {"tenant_id": tenant_id, "customer": tenant_label},
                "schema_version": alert.schema_version}
    if (value := alert.determination) is not None:
        unmapped["determination"] = value
    if (value := alert.investigation_state) is not None:
        unmapped["investigation_state"] = value
    if (value := alert.actor_display_name) is not None:
        unmapped["actor_display_name"] = value
    if (value := alert.threat_display_name) is not None:
        unmapped["threat_display_name"] = value
    if (value := alert.threat_family_name) is not None:
        unmapped["threat_family_name"] = value
    if (value := alert.alert_policy_id) is not None:
        unmapped["alert_policy_id"] = value
    if (value := times.resolved) is not None:
        unmapped["resolved_time"] = (value - _EPOCH) // _MS
    if value := alert.system_tags:
        unmapped["system_tags"] = value
    if value := alert.comments:
        unmapped["comments"] = [_comment(c) for c in value]
    if value := alert.custom_details:
        unmapped["custom_details"] = value
    if value := alert.additional_data:
        unmapped["additional_data"] = value
    if value := alert.extra:
        unmapped["extra"] = value
    if other_evidence is not None:
        unmapped["evidence"] = other_evidence

    event = {
        **_CLASS,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": type_uid,
        "type_name": type_name,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status_name,
        "time": updated,
    }
    if first is not None:
        event["start_time"] = first
    if last is not None:
        event["end_time"] = last
    if title is not None:
        event["message"] = title
    event["is_alert"] = activity_id != 3
    event["finding_info"] = info
    if attacks is not None:
        event["attacks"] = attacks  # security_control profile: the same list as in finding_info
    event["metadata"] = metadata
    if (value := alert.incident_web_url) is not None:
        event["src_url"] = value  # incident profile: the incident's page
    if value := alert.assigned_to:
        event["assignee"] = {"name": value}
    if value := alert.recommended_actions:
        event["remediation"] = {"desc": value}
    if evidences is not None:
        event["evidences"] = evidences
    if malware is not None:
        event["malware"] = malware
    event["unmapped"] = unmapped
    if (classification := alert.classification) is not None:
        event["verdict_id"], event["verdict"] = _VERDICT.get(classification) or (99, classification)
    return event


def encode(alert: Alert | Incident) -> bytes:
    """One OCSF Detection Finding (an alert) or Incident Finding (an incident) as one line
    of JSON (no trailing newline)."""
    if alert.__class__ is Incident:  # (one identity test: the alert path stays as it was)
        return jsonutil.dumps(incident_to_ocsf(alert))
    return jsonutil.dumps(to_ocsf(alert))


# --------------------------------------------------------------------------- incidents
#
# An incident is an OCSF Incident Finding (class_uid 2005, category 2 Findings), base class
# only (its incident attributes are the class's own; no profile). docs/formats.md has the table.

INCIDENT_CLASS = {"class_uid": 2005, "class_name": "Incident Finding", "category_uid": 2,
                  "category_name": "Findings"}
INCIDENT_PRODUCT = {"name": "Microsoft Defender XDR", "vendor_name": VENDOR}
_INCIDENT_CREATE, _INCIDENT_UPDATE, _INCIDENT_CLOSE = (
    (activity_id, name, 200500 + activity_id, f"Incident Finding: {name}")
    for activity_id, name in ((1, "Create"), (2, "Update"), (3, "Close")))
# incident status -> (status_id, status): Defender's active is an open incident nobody took on
# yet (New); awaitingAction waits on someone (On Hold); a merged incident (redirected) is Closed.
INCIDENT_STATUS = {
    "unknown": (0, "Unknown"),
    "unknownFutureValue": (0, "Unknown"),
    "active": (1, "New"),
    "inProgress": (2, "In Progress"),
    "awaitingAction": (3, "On Hold"),
    "resolved": (4, "Resolved"),
    "redirected": (5, "Closed"),
}
# Incident Finding requires an assignee or an assignee group; Defender's portal calls an
# incident nobody was assigned "Unassigned".
UNASSIGNED = {"name": "Unassigned"}


def _incident_activity(incident: Incident) -> tuple[int, str, int, str]:
    """Close when resolved (or merged away); else Create on the first version the forwarder
    queued, Update later; where nobody knows (`convert`), Create when the version is the
    incident's creation (lastUpdateDateTime = createdDateTime), else Update."""
    if incident.status in ("resolved", "redirected"):
        return _INCIDENT_CLOSE
    first_sight = incident.first_sight
    if first_sight is None:
        first_sight = incident.times.created == incident.times.last_updated
    return _INCIDENT_CREATE if first_sight else _INCIDENT_UPDATE


def _tags(incident: Incident) -> list[dict[str, str]] | None:
    tags = [{"name": "custom", "value": tag} for tag in incident.custom_tags]
    tags += [{"name": "system", "value": tag} for tag in incident.system_tags]
    return tags or None


def incident_to_ocsf(incident: Incident) -> dict[str, Any]:
    """The incident as an OCSF Incident Finding (a JSON-ready dict)."""
    times = incident.times
    tenant_id, tenant_label = incident.tenant.id, incident.tenant.label
    updated = _ms(times.last_updated)
    activity_id, activity, type_uid, type_name = _incident_activity(incident)
    status = incident.status
    status_id, status_name = _UNKNOWN if status is None else INCIDENT_STATUS.get(status) or (99, status)
    severity_id, severity = _severity(incident.severity, incident.severity_original)

    info: dict[str, Any] = {"uid": incident.id}
    if (value := incident.title) is not None:
        info["title"] = value
    if (value := incident.description) is not None:
        info["desc"] = value
    if (value := times.created) is not None:
        info["created_time"] = _ms(value)
    info["modified_time"] = updated
    if (value := incident.incident_web_url) is not None:
        info["src_url"] = value
    if value := incident.alert_ids:  # linked by id: each alert is its own Detection Finding
        info["related_events"] = [{"uid": alert_id} for alert_id in value]
        info["related_events_count"] = len(value)
    if (tags := _tags(incident)) is not None:
        info["tags"] = tags

    metadata: dict[str, Any] = {"version": OCSF_VERSION, "product": {**INCIDENT_PRODUCT, "uid": incident.source},
                                "uid": incident.version_key, "correlation_uid": incident.id,
                                "tenant_uid": tenant_id, "labels": [tenant_label],
                                "original_time": times.last_updated.isoformat(),
                                "logged_time": _ms(times.ingested), "log_name": incident.source}

    unmapped: dict[str, Any] = {"mssp": {"tenant_id": tenant_id, "customer": tenant_label},
                                "schema_version": incident.schema_version, "kind": incident.kind}
    for name in ("determination", "summary", "last_modified_by", "redirect_incident_id", "priority_score"):
        if (value := getattr(incident, name)) is not None:
            unmapped[name] = value
    if value := incident.custom_tags:
        unmapped["custom_tags"] = value
    if value := incident.system_tags:
        unmapped["system_tags"] = value
    if value := incident.comments:
        unmapped["comments"] = [_comment(c) for c in value]
    if value := incident.alert_ids:
        unmapped["alert_ids"] = value
    if value := incident.extra:
        unmapped["extra"] = value

    event: dict[str, Any] = {
        **INCIDENT_CLASS,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": type_uid,
        "type_name": type_name,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status_name,
        "time": updated,
    }
    if (value := incident.title) is not None:
        event["message"] = value
    if (value := incident.description) is not None:
        event["desc"] = value
    if (value := incident.redirect_incident_id) is not None:
        event["status_detail"] = f"merged into incident {value}"
    event["finding_info_list"] = [info]
    event["metadata"] = metadata
    if (value := incident.incident_web_url) is not None:
        event["src_url"] = value
    if value := incident.assigned_to:
        assignee: dict[str, Any] = {"name": value}
        if _email_t(value):
            assignee["email_addr"] = value
        event["assignee"] = assignee
    else:
        event["assignee_group"] = UNASSIGNED
    if (classification := incident.classification) is not None:
        event["verdict_id"], event["verdict"] = _VERDICT.get(classification) or (99, classification)
    if value := incident.resolving_comment:
        event["comment"] = value
    event["unmapped"] = unmapped
    return event
