"""`core.model.schema.Alert` -> an Elastic Common Schema (ECS 8.11) document, one JSON line.

Made so that what Elastic's own `m365_defender` integration builds on top of the `alert`
data stream (dashboards, detection rules, the Security app's alert views) works on our
documents: every field is placed where that integration's ingest pipeline for the `alert`
data stream (its revision with the 21/47/73/99 severity scale) places it, with the same
value shapes (lists where the pipeline appends, sorted sets where its scripts collect,
strings where it renders templates). The choices, which docs/formats.md documents:

- `@timestamp` = lastUpdateDateTime. Every timestamp is ISO 8601 UTC with exactly three
  fraction digits and `Z` (`2023-10-20T09:54:07.503Z`), as the pipeline's date processor
  writes them (Graph's 100 ns digits are truncated, not rounded). `event.duration` is in ns,
  computed from those millisecond values as the pipeline does.
- `event.kind` alert, `event.id` id, `event.created/start/end` created / first / last
  activity, `event.provider` serviceSource, `event.url` alertWebUrl, `message` description
  (the title is only `m365_defender.alert.title`, as in Elastic's), `cloud.account.id`
  Graph's tenantId (the polled tenant's id when Graph sends none), `event.severity`
  informational/low 21, medium 47, high 73, critical 99 (absent otherwise),
  `threat.tactic.name` category, `threat.technique.subtechnique.id` every mitreTechniques
  value as sent, `threat.group.name` threatFamilyName, `source.user.name` assignedTo,
  `event.category`/`event.type` from the evidence types and the determination (the
  pipeline's algorithm, quirks included), `event.action` the evidence detection statuses.
- Evidence lands in `host.*`, `device.id`, `user.*`, `process.*`, `file.*`, `registry.*`,
  `email.*`, `source.ip`, `cloud.*`, `group.*` and `related.{hosts,user,ip,hash}` by the
  pipeline's rules (see `_GRAPH_RULES` and the evidence builders), in its order.
- Every evidence keeps its identity: after the pipeline's values, `related.hash`,
  `related.ip` (valid IP addresses only), `related.hosts` and `related.user` also take each
  evidence's identifying values of those kinds (`mappings.evidence.IDENTITIES`, kinds hash,
  ip, host, user and email), de-duplicated, in evidence order; the pipeline reads only some
  of them (not a device's lastIpAddress, a DNS evidence's addresses, a mailbox's address...).
- Beyond the pipeline, where it leaves an ECS field empty (additions, nothing it sets is
  changed): `threat.technique.id` (the parent technique of each id), `threat.framework`
  "MITRE ATT&CK", `threat.tactic.name` also takes the newer `categories`, `url.full` from
  url evidence, `host.name` (lower-cased deviceDnsName, else hostName, of device evidence),
  `file.hash.md5`/`process.hash.md5`/`process.parent.hash.md5` (+ `related.hash`), and
  `organization.id`/`organization.name` = the customer tenant id and label.
- `m365_defender.alert.*` carries the vendor fields with the pipeline's names: what it
  keeps by default (classification, determination, status, severity as sent, title,
  detector_id, detection_source, incident_id, incident_web_url split like its `uri_parts`,
  provider_alert_id, recommended_actions, resolved_datetime, threat_display_name,
  actor_display_name, comments, odata_type) plus what it drops but we keep so that nothing
  is lost: product_name, alert_policy_id, categories, investigation_state, system_tags,
  custom_details, additional_data, and every alert property Graph adds later under its
  Graph name. The alert-level copies the pipeline removes by default (its
  `preserve_duplicate_custom_fields` tag off) are left out: each is exactly an ECS field
  (description = message, id = event.id, tenant_id = cloud.account.id, ...). A Graph
  tenantId that differs from the polled tenant is kept as `m365_defender.alert.tenant_id`.
- `m365_defender.alert.evidence[]` is each evidence as the pipeline leaves it, per-evidence
  copies included (as with `preserve_duplicate_custom_fields`): the ECS fields are
  de-duplicated lists across all evidence, so only here does a value stay with its
  evidence. Properties the pipeline renames get its names (`mde_device_id`,
  `user_account.account_name`, `process.id`, `image_file.sha256`, ...); properties it does
  not know keep their Graph name at the same place (`hostName`, `countryLetterCode`,
  `userAccount.displayName`), as the pipeline leaves them. Unlike the pipeline, network and
  internet message ids stay in their evidence too, and a value the pipeline's converters
  reject (an IP that is not one, a date that does not parse) is kept under its Graph name
  instead of being dropped.
- Nulls, empty strings, and empty lists and objects are left out everywhere, as the
  pipeline's last step removes them.
- MSSP context: `defender_forwarder: {customer, tenant_id, version_key, source, ingested}`
  (customer label, polled tenant id, the version key `_id` can be built on, the source
  API, the time the forwarder read the alert).
- `ecs.version` is the ECS the fields follow (the pipeline's). Not set here: what an ingest
  side adds (`event.ingested`, `data_stream.*`, `event.dataset`, `tags`, `event.original`).
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
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
from mappings.evidence import identities_of, path_steps, plain_names, plain_value, values_along

ECS_VERSION = "8.11.0"
_NS = "#microsoft.graph.security."

# --------------------------------------------------------------------------- tables

# Graph's severity as sent (lower-cased) -> event.severity: the pipeline's scale, which
# compares the text case-insensitively (and knows "critical", which Graph has not sent
# so far); any other value leaves event.severity out.
EVENT_SEVERITY = {"informational": 21, "low": 21, "medium": 47, "high": 73, "critical": 99}
# The same by the normalised Severity, for an alert with no original text.
_SEVERITY_SCORE = tuple(EVENT_SEVERITY.get(Severity(n).name) for n in range(max(Severity) + 1))

# Evidence -> event.category: by the schema's evidence kind, and by @odata.type for the
# types with no typed model (the pipeline's table, keyed on @odata.type).
CATEGORY_OF_KIND = {
    "device": "host",
    "user": "iam",
    "file": "file",
    "process": "process",
    "ip": "network",
    "mailbox": "email",
    "mail_message": "email",
    "registry": "registry",
}
CATEGORY_OF_TYPE = {
    _NS + "mailClusterEvidence": "email",
    _NS + "securityGroupEvidence": "iam",
}
# determination (lower-cased) -> event.category.
CATEGORY_OF_DETERMINATION = {"malware": "malware", "malicioususeractivity": "malware", "phishing": "email",
                             "apt": "threat"}

# ECS fields filled from the evidence, in document order: (path, slots, how). Values are
# collected into named slots while the evidence is read; a field is its slots' values in
# slot order, which is the order of the pipeline's processors (each goes over every
# evidence in turn), so `related.*` come out as the pipeline appends them.
#   "list":   de-duplicated, in order (the pipeline's `append`, allow_duplicates false)
#   "sorted": a sorted set (the pipeline's scripts that collect into a HashSet and sort)
LIST, SORTED = "list", "sorted"
EVIDENCE_FIELDS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("event", "action"), ("event.action",), LIST),
    (("cloud", "provider"), ("cloud.provider",), SORTED),
    (("cloud", "instance", "id"), ("cloud.instance.id",), LIST),
    (("cloud", "instance", "name"), ("cloud.instance.name",), LIST),
    (("device", "id"), ("device.id",), LIST),
    (("host", "id"), ("host.id",), SORTED),
    (("host", "name"), ("host.name",), LIST),
    (("host", "ip"), ("host.ip",), LIST),
    (("host", "os", "name"), ("host.os.name",), LIST),
    (("host", "os", "version"), ("host.os.version",), LIST),
    (("user", "domain"), ("user.domain",), SORTED),
    (("user", "id"), ("user.id",), SORTED),
    (("user", "name"), ("user.name",), SORTED),
    (("user", "email"), ("user.email",), SORTED),
    (("process", "command_line"), ("process.command_line",), LIST),
    (("process", "hash", "md5"), ("process.hash.md5",), LIST),
    (("process", "hash", "sha1"), ("process.hash.sha1",), LIST),
    (("process", "hash", "sha256"), ("process.hash.sha256",), LIST),
    (("process", "pid"), ("process.pid",), SORTED),
    (("process", "start"), ("process.start",), LIST),
    (("process", "parent", "hash", "md5"), ("process.parent.hash.md5",), LIST),
    (("process", "parent", "hash", "sha1"), ("process.parent.hash.sha1",), LIST),
    (("process", "parent", "hash", "sha256"), ("process.parent.hash.sha256",), LIST),
    (("process", "parent", "pid"), ("process.parent.pid",), SORTED),
    (("process", "parent", "start"), ("process.parent.start",), LIST),
    (("process", "user", "id"), ("process.user.id",), SORTED),
    (("process", "user", "name"), ("process.user.name",), SORTED),
    (("file", "hash", "md5"), ("file.hash.md5",), LIST),
    (("file", "hash", "sha1"), ("file.hash.sha1",), LIST),
    (("file", "hash", "sha256"), ("file.hash.sha256",), LIST),
    (("file", "name"), ("file.name",), LIST),
    (("file", "path"), ("file.path",), LIST),
    (("file", "size"), ("file.size",), SORTED),
    (("registry", "hive"), ("registry.hive",), LIST),
    (("registry", "key"), ("registry.key",), LIST),
    (("registry", "value"), ("registry.value",), LIST),
    (("registry", "data", "type"), ("registry.data.type",), LIST),
    (("email", "delivery_timestamp"), ("email.delivery_timestamp",), LIST),
    (("email", "direction"), ("email.direction",), LIST),
    (("email", "from", "address"), ("email.sender.address", "email.from.address.p2"), LIST),  # p1, then p2
    (("email", "local_id"), ("email.local_id",), LIST),
    (("email", "message_id"), ("email.message_id",), LIST),
    (("email", "sender", "address"), ("email.sender.address",), LIST),
    (("email", "subject"), ("email.subject",), LIST),
    (("email", "to", "address"), ("email.to.address",), LIST),
    (("source", "ip"), ("source.ip",), LIST),
    (("url", "full"), ("url.full",), LIST),
    (("group", "id"), ("group.id",), LIST),
    (("group", "name"), ("group.name",), SORTED),
)
# related.* (after the fields above), each from its slots in the pipeline's processor order.
# Most slots are those of an ECS field above: the pipeline appends the same value to both.
RELATED_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hash", ("file.hash.sha1", "file.hash.sha256", "process.hash.sha1", "process.hash.sha256",
              "process.parent.hash.sha1", "process.parent.hash.sha256",
              "file.hash.md5", "process.hash.md5", "process.parent.hash.md5", "identity.hash")),
    ("hosts", ("hosts.p1_domain", "hosts.p2_domain", "hosts.mde_device_id", "host.os.name", "host.os.version",
               "hosts.dns_name", "hosts.logged_on_domain", "hosts.account_domain", "identity.host")),
    ("ip", ("source.ip", "host.ip", "identity.ip")),
    ("user", ("user.assigned_to", "user.comment_author", "email.to.address", "user.p1_name", "email.sender.address",
              "user.p2_name", "email.from.address.p2", "user.logged_on", "user.aad_id", "user.upn", "user.account",
              "user.sid", "identity.user")),
)
# The identifying values of every evidence (mappings.evidence.IDENTITIES), by kind -> the
# slot that feeds their related.* field, after the pipeline's own slots: what the pipeline
# puts there stays first and in its order, and an identity it does not read (a device's
# addresses, a DNS or network-connection evidence's IPs, a mailbox's address, a blob's hash,
# ...) is still there to pivot on. related.ip takes only valid IP addresses (an `ip` field).
IDENTITY_SLOTS = {"hash": "identity.hash", "host": "identity.host", "ip": "identity.ip", "user": "identity.user",
                  "email": "identity.user"}

_FRAMEWORK = "MITRE ATT&CK"  # threat.framework, when the alert names tactics or techniques

# --------------------------------------------------------------------------- values

# "YYYY-MM-DDTHH:MM:" of the minutes seen lately, and the other parts as text: an ISO
# timestamp is then three lookups and a join, a quarter of `isoformat`'s time (which
# consults the time zone), and an alert has a dozen timestamps.
_MINUTES: dict[int, str] = {}
_SECONDS = tuple(f"{n:02d}" for n in range(60))
_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))


def _iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds (truncated) and `Z`, as Elasticsearch's date
    processor writes: 2023-10-20T09:54:07.503Z."""
    if moment.tzinfo is not UTC:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    minute = moment.toordinal() * 1440 + moment.hour * 60 + moment.minute
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) >= 16384:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = moment.replace(second=0, microsecond=0, tzinfo=None).isoformat()[:17]
    return prefix + _SECONDS[moment.second] + _MILLIS[moment.microsecond // 1000]


def _duration_ns(start: datetime, end: datetime) -> int:
    """end - start in ns, between the millisecond values (as the pipeline computes it from
    event.start and event.end): the microseconds below the millisecond do not count."""
    delta = end - start
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (micros - end.microsecond % 1000 + start.microsecond % 1000) * 1000


_GRAPH_TIMES: dict[str, str | None] = {}


def _graph_date(value: Any) -> str | None:
    """A Graph timestamp string (of an untyped property) -> `_iso` text; None if it is not one."""
    if not isinstance(value, str):
        return None
    text = _GRAPH_TIMES.get(value)
    if text is None and value not in _GRAPH_TIMES:
        try:
            moment = datetime.fromisoformat(value)
            text = _iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        except (ValueError, OverflowError):
            text = None
        if len(_GRAPH_TIMES) >= 4096:
            _GRAPH_TIMES.clear()
        _GRAPH_TIMES[value] = text
    return text


_IPS: dict[str, bool] = {}


def _ip(value: Any) -> str | None:
    """`value` if it is an IP address (the pipeline's `convert: ip`; Elasticsearch would
    reject the document for an `ip` field that is not one), else None."""
    if not isinstance(value, str):
        return None
    valid = _IPS.get(value)
    if valid is None:
        try:
            ipaddress.ip_address(value)
            valid = True
        except ValueError:
            valid = False
        if len(_IPS) >= 4096:
            _IPS.clear()
        _IPS[value] = valid
    return value if valid else None


def _long(value: Any) -> int | None:
    """The pipeline's `convert: long`; None for what is not a 64-bit integer (which
    Elasticsearch would reject for a `long` field)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:  # not a number, or beyond int()'s digit limit
            return None
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return None


def _string(value: Any) -> str | None:
    """The pipeline's `convert: string` (ids Graph sends as numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


_DROP = object()


def _clean(value: Any) -> Any:
    """`value` without nulls, empty strings and empty lists/objects, at any depth (the
    pipeline's last step); `_DROP` when nothing is left. (Scalars are tested inline, not
    recursed into: untyped evidence is mostly flat objects of text.)"""
    cls = value.__class__
    if cls is dict:
        out = {}
        for key, item in value.items():
            if item is None or item == "":
                continue
            if item.__class__ is dict or item.__class__ is list:
                item = _clean(item)
                if item is _DROP:
                    continue
            out[key] = item
        return out or _DROP
    if cls is list:
        items = []
        for item in value:
            if item is None or item == "":
                continue
            if item.__class__ is dict or item.__class__ is list:
                item = _clean(item)
                if item is _DROP:
                    continue
            items.append(item)
        return items or _DROP
    if value is None or value == "":
        return _DROP
    return value


def _merge(out: dict[str, Any], key: str, value: Any) -> None:
    """Put `value` at `out[key]`, merging objects with what is already there."""
    old = out.get(key)
    if old.__class__ is dict and value.__class__ is dict:
        for sub, item in value.items():
            _merge(old, sub, item)
    else:
        out[key] = value


def _at(out: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The object at `path` in `out`, made on the way."""
    for part in path:
        inner = out.get(part)
        if inner is None:
            inner = out[part] = {}
        out = inner
    return out


def _uri_parts(url: str) -> dict[str, Any]:
    """The pipeline's `uri_parts` (keep_original) of a portal URL: original, scheme,
    domain, port, path, extension, query, fragment, user_info/username/password."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return {"original": url}  # not an absolute URL: uri_parts fails; the original is kept
    rest, hash_sign, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    user_info, at, host = authority.rpartition("@")
    port = ""
    if host.startswith("["):  # an IPv6 literal keeps its brackets, as java.net.URI's host does
        end = host.find("]")
        if end > 0 and host[end + 1:end + 2] == ":":
            host, port = host[:end + 1], host[end + 2:]
    elif ":" in host:
        host, _, port = host.partition(":")
    parts: dict[str, Any] = {"original": url, "scheme": scheme}
    if host:
        parts["domain"] = host
    if port.isdigit():
        parts["port"] = int(port)
    if path:
        parts["path"] = path
        dot = path.rfind(".")
        if dot > path.rfind("/"):  # an extension of the last segment only
            parts["extension"] = path[dot + 1:]
    if question and query:
        parts["query"] = query
    if hash_sign and fragment:
        parts["fragment"] = fragment
    if at and user_info:
        parts["user_info"] = user_info
        if ":" in user_info:
            parts["username"], _, parts["password"] = user_info.partition(":")
    return parts


# --------------------------------------------------------------------------- typed evidence
#
# Each builder reads one typed evidence's fields (plain attributes of the model, each read
# once), writes the evidence as the pipeline leaves it into `out`, and appends its ECS values
# to the slots in `acc`.

Slots = defaultdict  # slot name -> values, in evidence order


class _FileSlots(NamedTuple):
    """The slots the values of a FileInfo feed (None: the value feeds no slot)."""

    sha1: str
    sha256: str
    md5: str
    name: str | None = None
    path: str | None = None
    size: str | None = None


_FILE_SLOTS = _FileSlots("file.hash.sha1", "file.hash.sha256", "file.hash.md5", "file.name", "file.path", "file.size")
_IMAGE_SLOTS = _FileSlots("process.hash.sha1", "process.hash.sha256", "process.hash.md5", "process.name")
_PARENT_IMAGE_SLOTS = _FileSlots("process.parent.hash.sha1", "process.parent.hash.sha256", "process.parent.hash.md5")


def _file_details(info: FileInfo, out: dict[str, Any], name: str, graph_name: str, acc: Slots,
                  slots: _FileSlots) -> None:
    """FileInfo -> out[name] with the pipeline's names (fileName -> name, ...), its values
    appended to `slots`; md5, which the pipeline does not rename, stays under the Graph
    property name."""
    sha1_slot, sha256_slot, md5_slot, name_slot, path_slot, size_slot = slots
    details: dict[str, Any] = {}
    if value := info.name:
        details["name"] = value
        if name_slot:
            acc[name_slot].append(value)
    if value := info.path:
        details["path"] = value
        if path_slot:
            acc[path_slot].append(value)
    if (value := info.size) is not None:
        details["size"] = value
        if size_slot:
            acc[size_slot].append(value)
    if value := info.sha1:
        details["sha1"] = value
        acc[sha1_slot].append(value)
    if value := info.sha256:
        details["sha256"] = value
        acc[sha256_slot].append(value)
    if value := info.publisher:
        details["publisher"] = value
    if value := info.signer:
        details["signer"] = value
    if value := info.issuer:
        details["issuer"] = value
    if details:
        out[name] = details
    if value := info.md5:
        out[graph_name] = {"md5": value}
        acc[md5_slot].append(value)


def _user_account(info: UserInfo | None, out: dict[str, Any], acc: Slots, role: str) -> None:
    """userAccount -> `user_account` + related.*; `role` "user" also fills user.* (user and
    mailbox evidence), "process" fills process.user.* (process evidence)."""
    if info is None:
        return
    account: dict[str, Any] = {}
    if value := info.account_name:
        account["account_name"] = value
        acc["user.account"].append(value)
        if role == "user":
            acc["user.name"].append(value)
        elif role == "process":
            acc["process.user.name"].append(value)
    if value := info.domain:
        account["domain_name"] = value
        acc["hosts.account_domain"].append(value)
        if role == "user":
            acc["user.domain"].append(value)
    if value := info.sid:
        account["user_sid"] = value
        acc["user.sid"].append(value)
    if value := info.aad_user_id:
        account["azure_ad_user_id"] = value
        acc["user.aad_id"].append(value)
        if role == "user":
            acc["user.id"].append(value)
        elif role == "process":
            acc["process.user.id"].append(value)
    if value := info.upn:
        account["user_principal_name"] = value
        acc["user.upn"].append(value)
        if role == "user":
            acc["user.email"].append(value)
    if account:
        out["user_account"] = account
    if value := info.display_name:
        out["userAccount"] = {"displayName": value}  # the pipeline renames no displayName here


def _device(e: DeviceEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.mde_device_id:
        out["mde_device_id"] = value
        acc["hosts.mde_device_id"].append(value)
        acc["host.id"].append(value)
    if value := e.aad_device_id:
        out["azure_ad_device_id"] = value
        acc["device.id"].append(value)
    fqdn, hostname = e.fqdn, e.hostname
    if fqdn:
        out["device_dns_name"] = fqdn
        acc["hosts.dns_name"].append(fqdn)
    if hostname:
        out["hostName"] = hostname
    if name := fqdn or hostname:
        acc["host.name"].append(name.lower())  # lower case, as Elastic Agent reports host.name
    if value := e.dns_domain:
        out["dnsDomain"] = value
    if value := e.nt_domain:
        out["ntDomain"] = value
    if value := e.os_platform:
        out["os_platform"] = value
        acc["host.os.name"].append(value)
    if (value := e.os_build) is not None:
        out["os_build"] = str(value)
    if value := e.os_version:
        out["version"] = value
        acc["host.os.version"].append(value)
    if value := e.ip_addresses:
        out["ip_interfaces"] = value
    if value := e.last_ip:
        out["lastIpAddress"] = value
    if value := e.last_external_ip:
        out["lastExternalIpAddress"] = value
    if users := e.logged_on_users:
        logged_on = []
        for user in users:
            item = {}
            if value := user.account_name:
                item["account_name"] = value
                acc["user.logged_on"].append(value)
            if value := user.domain:
                item["domain_name"] = value
                acc["hosts.logged_on_domain"].append(value)
            if item:
                logged_on.append(item)
        if logged_on:
            out["logged_on_users"] = logged_on
    if value := e.health_status:
        out["health_status"] = value
    if value := e.risk_score:
        out["risk_score"] = value
    if value := e.rbac_group:
        out["rbac_group"] = {"name": value}


def _user(e: UserEvidence, out: dict[str, Any], acc: Slots) -> None:
    _user_account(e.user, out, acc, "user")


def _file(e: FileEvidence, out: dict[str, Any], acc: Slots) -> None:
    if (info := e.file) is not None:
        _file_details(info, out, "file_details", "fileDetails", acc, _FILE_SLOTS)
    _device_and_status(e, out, acc)


def _device_and_status(e: FileEvidence | ProcessEvidence, out: dict[str, Any], acc: Slots) -> None:
    """mdeDeviceId and detectionStatus, which file and process evidence share."""
    if value := e.mde_device_id:
        out["mde_device_id"] = value
        acc["hosts.mde_device_id"].append(value)
    if value := e.detection_status:
        out["detection_status"] = value
        acc["event.action"].append(value)


def _process(e: ProcessEvidence, out: dict[str, Any], acc: Slots) -> None:
    process: dict[str, Any] = {}
    if value := e.command_line:
        process["command_line"] = value
        acc["process.command_line"].append(value)
    if (value := e.process_created) is not None:
        process["creation_datetime"] = text = _iso(value)
        acc["process.start"].append(text)
    if (value := e.pid) is not None:
        process["id"] = value
        acc["process.pid"].append(value)
    if process:
        out["process"] = process
    if (image := e.image) is not None:
        _file_details(image, out, "image_file", "imageFile", acc, _IMAGE_SLOTS)
    parent: dict[str, Any] = {}
    if (value := e.parent_created) is not None:
        parent["creation_datetime"] = text = _iso(value)
        acc["process.parent.start"].append(text)
    if (value := e.parent_pid) is not None:
        parent["id"] = value
        acc["process.parent.pid"].append(value)
    if (image := e.parent_image) is not None:
        _file_details(image, parent, "image_file", "parentProcessImageFile", acc, _PARENT_IMAGE_SLOTS)
        # The md5 holder belongs beside parent_process, not in it (as the pipeline leaves it).
        if md5 := parent.pop("parentProcessImageFile", None):
            out["parentProcessImageFile"] = md5
    if parent:
        out["parent_process"] = parent
    _user_account(e.user, out, acc, "process")
    _device_and_status(e, out, acc)


def _ip_evidence(e: IpEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.address:
        if _ip(value) is not None:
            out["ip_address"] = value
            acc["host.ip"].append(value)
        else:
            out["ipAddress"] = value  # not an IP: kept, out of the ip-typed fields
    if value := e.country_code:
        out["countryLetterCode"] = value
    location: dict[str, Any] = {}
    if value := e.city:
        location["city"] = value
    if value := e.state:
        location["state"] = value
    if value := e.country_name:
        location["countryName"] = value
    if (value := e.latitude) is not None:
        location["latitude"] = value
    if (value := e.longitude) is not None:
        location["longitude"] = value
    if location:
        out["location"] = location  # the pipeline does not touch Graph's geolocation


def _url(e: UrlEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.url:
        out["url"] = value
        acc["url.full"].append(value)


def _mailbox(e: MailboxEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.primary_address:
        out["primary_address"] = value
    if value := e.upn:
        out["upn"] = value
    if value := e.display_name:
        out["display_name"] = value
    _user_account(e.user, out, acc, "user")


def _mail_message(e: MailMessageEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.network_message_id:
        out["network_message_id"] = value
        acc["email.local_id"].append(value)
    if value := e.internet_message_id:
        out["internet_message_id"] = value
        acc["email.message_id"].append(value)
    if value := e.subject:
        out["subject"] = value
        acc["email.subject"].append(value)
    sender: dict[str, Any] = {}
    if value := e.sender_display_name:
        sender["display_name"] = value
        acc["user.p1_name"].append(value)
    if value := e.sender:
        sender["email_address"] = value
        acc["email.sender.address"].append(value)
    if sender:
        out["p1_sender"] = sender
    if value := e.recipient:
        out["recipient_email_address"] = value
        acc["email.to.address"].append(value)
    if value := e.sender_ip:
        if _ip(value) is not None:
            out["sender_ip"] = value
            acc["source.ip"].append(value)
        else:
            out["senderIp"] = value
    if (value := e.received) is not None:
        out["received_datetime"] = text = _iso(value)
        acc["email.delivery_timestamp"].append(text)
    if value := e.delivery_action:
        out["delivery_action"] = value
    if value := e.delivery_location:
        out["delivery_location"] = value
    if value := e.direction:
        out["antispam_direction"] = value
        acc["email.direction"].append(value)
    if value := e.urls:
        out["urls"] = value
    if value := e.threats:
        out["threats"] = value


def _cloud_application(e: CloudApplicationEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.app_id:
        out["app_id"] = value
    if value := e.display_name:
        out["display_name"] = value
    if value := e.instance_name:
        out["instance_name"] = value
        acc["cloud.instance.name"].append(value)
    if value := e.publisher:
        out["publisher"] = value


def _registry(e: RegistryEvidence, out: dict[str, Any], acc: Slots) -> None:
    if value := e.hive:
        out["registry_hive"] = value
        acc["registry.hive"].append(value)
    if value := e.key:
        out["registry_key"] = value
        acc["registry.key"].append(value)
    if value := e.value_type:
        out["registry_value_type"] = value
        acc["registry.data.type"].append(value)
    if value := e.value_data:
        out["registry_value"] = value  # registryValue is the data; the pipeline puts it in registry.value
        acc["registry.value"].append(value)
    if value := e.value_name:
        out["registry_value_name"] = value
    if value := e.mde_device_id:
        out["mde_device_id"] = value
        acc["hosts.mde_device_id"].append(value)


# A builder per typed evidence kind (the schema's `kind`); the others have no typed model.
EVIDENCE_BUILDERS: dict[str, Callable[[Any, dict[str, Any], Slots], None]] = {
    "device": _device,
    "user": _user,
    "file": _file,
    "process": _process,
    "ip": _ip_evidence,
    "url": _url,
    "mailbox": _mailbox,
    "mail_message": _mail_message,
    "cloud_application": _cloud_application,
    "registry": _registry,
}

# --------------------------------------------------------------------------- Graph-named properties
#
# What has no typed field (an evidence's `extra`; the whole object of an evidence type the
# schema has no model for) still carries Graph's property names. `_GRAPH_RULES` is the
# pipeline's treatment of each name it knows, whatever the evidence type: where the value
# goes in the evidence (a path), how it is converted, and which slots it feeds. A name no
# rule knows is kept under its Graph name.

Rule = Callable[[Any, dict[str, Any], Slots, str, str], None]  # (value, out, acc, odata_type, name)
# A plain rename: (the pipeline's name, slots the value is appended to when it is text).
Rename = tuple[str, tuple[str, ...]]


def _rename(path: str | tuple[str, ...], convert: Callable[[Any], Any] | None = None, *slots: str) -> Rule:
    """A rule: the value (converted) goes to `path` and is appended to `slots`. A value
    the converter rejects stays under its Graph name (the pipeline would drop it)."""
    parent, key = ((), path) if isinstance(path, str) else (path[:-1], path[-1])

    def rule(value: Any, out: dict[str, Any], acc: Slots, odata_type: str, name: str) -> None:
        if convert is None:
            if value.__class__ is str:  # the usual case: no cleaning, nothing to merge with
                if value:
                    (_at(out, parent) if parent else out)[key] = value
                    for slot in slots:
                        acc[slot].append(value)
                return
            value = _clean(value)
            if value is _DROP:
                return
        else:
            converted = convert(value)
            if converted is None or converted == "":
                cleaned = _clean(value)
                if cleaned is not _DROP:
                    _merge(out, name, cleaned)
                return
            value = converted
        if value.__class__ is dict:
            _merge(_at(out, parent) if parent else out, key, value)
        else:  # what `_merge` does with anything but an object
            (_at(out, parent) if parent else out)[key] = value
        if slots and value.__class__ is str:  # the pipeline appends rendered text
            for slot in slots:
                acc[slot].append(value)

    return rule


def _only_for(odata_type: str, slot: str, rule: Rule, convert: Callable[[Any], Any] | None = None) -> Rule:
    """`rule`, and for evidence of `odata_type` only, the (converted) value also into `slot`."""
    def typed_rule(value: Any, out: dict[str, Any], acc: Slots, evidence_type: str, name: str) -> None:
        rule(value, out, acc, evidence_type, name)
        if evidence_type == odata_type:
            converted = value if convert is None else convert(value)
            if converted is not None and converted != "":
                acc[slot].append(converted)
    return typed_rule


SubObjectHook = Callable[[dict[str, Any], dict[str, Any], Slots, str], None]  # (renamed, rest, acc, odata_type)


def _sub_object(path: tuple[str, ...], members: dict[str, tuple[str, tuple[str, ...]]],
                ecs: SubObjectHook | None = None) -> Rule:
    """A rule for a Graph sub-object: the members in `members` (Graph name -> (pipeline
    name, slots)) go to the object at `path`; the others stay under the Graph name. `ecs`
    sees both parts first (to fill type-specific slots, or move back what it rejects)."""
    def rule(value: Any, out: dict[str, Any], acc: Slots, odata_type: str, name: str) -> None:
        if value.__class__ is not dict:
            cleaned = _clean(value)
            if cleaned is not _DROP:
                _merge(out, name, cleaned)
            return
        renamed: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for member, item in value.items():
            if item is None or item == "":
                continue
            if item.__class__ is not str and (item := _clean(item)) is _DROP:
                continue
            target = members.get(member)
            if target is None:
                rest[member] = item
                continue
            renamed[target[0]] = item
            if item.__class__ is str:
                for slot in target[1]:
                    acc[slot].append(item)
        if ecs is not None and renamed:
            ecs(renamed, rest, acc, odata_type)
        if renamed:
            _merge(_at(out, path[:-1]), path[-1], renamed)
        if rest:
            _merge(out, name, rest)

    return rule


def _account_roles(account: dict[str, Any], rest: dict[str, Any], acc: Slots, odata_type: str) -> None:
    """user.* for user and mailbox evidence, process.user.* for process evidence."""
    if odata_type in (_NS + "userEvidence", _NS + "mailboxEvidence"):
        for member, slot in (("domain_name", "user.domain"), ("azure_ad_user_id", "user.id"),
                             ("user_principal_name", "user.email"), ("account_name", "user.name")):
            if (value := account.get(member)).__class__ is str:
                acc[slot].append(value)
    elif odata_type == _NS + "processEvidence":
        for member, slot in (("azure_ad_user_id", "process.user.id"), ("account_name", "process.user.name")):
            if (value := account.get(member)).__class__ is str:
                acc[slot].append(value)


def _file_size(details: dict[str, Any], rest: dict[str, Any], acc: Slots, odata_type: str) -> None:
    """file.size comes from file evidence only (the pipeline's script); fileSize is a long
    (one that is not stays under its Graph name)."""
    if (size := details.get("size")) is not None:
        converted = _long(size)
        if converted is None:
            rest["fileSize"] = details.pop("size")
        else:
            details["size"] = converted
            if odata_type == _NS + "fileEvidence":
                acc["file.size"].append(converted)


def _image_name(details: dict[str, Any], rest: dict[str, Any], acc: Slots, odata_type: str) -> None:
    """process.name from imageFile.fileName, of any evidence (as the pipeline)."""
    _file_size(details, rest, acc, "")
    if (value := details.get("name")).__class__ is str:
        acc["process.name"].append(value)


def _cloud_provider(metadata: dict[str, Any], rest: dict[str, Any], acc: Slots, odata_type: str) -> None:
    provider = metadata.get("cloud_provider")
    if provider.__class__ is str and provider.lower() == "azure":
        acc["cloud.provider"].append("azure")


def _logged_on_users(value: Any, out: dict[str, Any], acc: Slots, odata_type: str, name: str) -> None:
    users = _clean(value)
    if users is _DROP:
        return
    if users.__class__ is not list:
        _merge(out, name, users)
        return
    renamed = []
    for user in users:
        if user.__class__ is dict:
            user = {_LOGGED_ON_MEMBERS.get(key, key): item for key, item in user.items()}
            if (account := user.get("account_name")).__class__ is str:
                acc["user.logged_on"].append(account)
            if (domain := user.get("domain_name")).__class__ is str:
                acc["hosts.logged_on_domain"].append(domain)
        renamed.append(user)
    out["logged_on_users"] = renamed


_LOGGED_ON_MEMBERS = {"accountName": "account_name", "domainName": "domain_name", "@odata.type": "odata_type"}

_FILE_MEMBERS = {"@odata.type": "odata_type", "fileName": "name", "filePath": "path", "fileSize": "size",
                 "filePublisher": "publisher", "issuer": "issuer", "signer": "signer"}


def _file_members(sha1_slots: tuple[str, ...],
                  sha256_slots: tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """fileDetails members -> (the pipeline's name, slots): the hashes feed `*_slots`."""
    members: dict[str, tuple[str, tuple[str, ...]]] = {
        graph: (renamed, ()) for graph, renamed in _FILE_MEMBERS.items()}
    members["sha1"] = ("sha1", sha1_slots)
    members["sha256"] = ("sha256", sha256_slots)
    return members


def _sender(prefix: str, address_slots: tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        "@odata.type": ("odata_type", ()),
        "displayName": ("display_name", (f"user.{prefix}_name",)),
        "domainName": ("domain_name", (f"hosts.{prefix}_domain",)),
        "emailAddress": ("email_address", address_slots),
    }


_GRAPH_RULES: dict[str, Rename | Rule] = {
    # every evidence
    "@odata.type": ("odata_type", ()),
    "createdDateTime": _rename("created_datetime", _graph_date),
    "remediationStatus": ("remediation_status", ()),
    "remediationStatusDetails": ("remediation_status_details", ()),
    "detailedRoles": ("detailed_roles", ()),
    "detectionStatus": ("detection_status", ("event.action",)),
    "mdeDeviceId": _only_for(_NS + "deviceEvidence", "host.id",
                            _rename("mde_device_id", None, "hosts.mde_device_id")),
    "displayName": _only_for(_NS + "securityGroupEvidence", "group.name", _rename("display_name")),
    # mail
    "receivedDateTime": _rename("received_datetime", _graph_date, "email.delivery_timestamp"),
    "antiSpamDirection": ("antispam_direction", ("email.direction",)),
    "subject": ("subject", ("email.subject",)),
    "recipientEmailAddress": ("recipient_email_address", ("email.to.address",)),
    "attachmentsCount": _rename("attachments_count", _long),
    "deliveryAction": ("delivery_action", ()),
    "deliveryLocation": ("delivery_location", ()),
    "internetMessageId": ("internet_message_id", ("email.message_id",)),
    "networkMessageId": ("network_message_id", ("email.local_id",)),
    "p1Sender": _sub_object(("p1_sender",), _sender("p1", ("email.sender.address",))),
    "p2Sender": _sub_object(("p2_sender",), _sender("p2", ("email.from.address.p2",))),
    "senderIp": _rename("sender_ip", _ip, "source.ip"),
    "threatDetectionMethods": ("threat_detection_methods", ()),
    "urlCount": _rename("url_count", _long),
    "clusterBy": ("cluster_by", ()),
    "clusterByValue": ("cluster_by_value", ()),
    "emailCount": _rename("email_count", _long),
    "networkMessageIds": ("network_message_ids", ()),
    "primaryAddress": ("primary_address", ()),
    # cloud applications
    "instanceId": _rename("instance_id", _string, "cloud.instance.id"),
    "instanceName": ("instance_name", ("cloud.instance.name",)),
    "appId": _rename("app_id", _string),
    "saasAppId": _rename("saas_app_id", _string),
    "objectId": ("object_id", ()),
    # devices
    "vmMetadata": _sub_object(("vm_metadata",), {
        "@odata.type": ("odata_type", ()), "cloudProvider": ("cloud_provider", ()),
        "resourceId": ("resource_id", ()), "subscriptionId": ("subscription_id", ()), "vmId": ("vm_id", ()),
    }, _cloud_provider),
    "osPlatform": ("os_platform", ("host.os.name",)),
    "version": ("version", ("host.os.version",)),
    "azureAdDeviceId": ("azure_ad_device_id", ("device.id",)),
    "defenderAvStatus": ("defender_av_status", ()),
    "deviceDnsName": ("device_dns_name", ("hosts.dns_name",)),
    "firstSeenDateTime": _rename("first_seen_datetime", _graph_date),
    "healthStatus": ("health_status", ()),
    "loggedOnUsers": _logged_on_users,
    "onboardingStatus": ("onboarding_status", ()),
    "osBuild": _rename("os_build", _string),
    "rbacGroupId": _rename(("rbac_group", "id"), _string),
    "rbacGroupName": _rename(("rbac_group", "name")),
    "riskScore": ("risk_score", ()),
    "ipInterfaces": ("ip_interfaces", ()),
    # files, processes, accounts
    "fileDetails": _sub_object(("file_details",), {
        **_file_members(("file.hash.sha1",), ("file.hash.sha256",)),
        "fileName": ("name", ("file.name",)), "filePath": ("path", ("file.path",)),
    }, _file_size),
    "ipAddress": _rename("ip_address", _ip, "host.ip"),
    "userAccount": _sub_object(("user_account",), {
        "@odata.type": ("odata_type", ()),
        "domainName": ("domain_name", ("hosts.account_domain",)),
        "azureAdUserId": ("azure_ad_user_id", ("user.aad_id",)),
        "userPrincipalName": ("user_principal_name", ("user.upn",)),
        "accountName": ("account_name", ("user.account",)),
        "userSid": ("user_sid", ("user.sid",)),
    }, _account_roles),
    "processCommandLine": _rename(("process", "command_line"), None, "process.command_line"),
    "imageFile": _sub_object(("image_file",), _file_members(
        ("process.hash.sha1",), ("process.hash.sha256",)), _image_name),
    "parentProcessImageFile": _sub_object(("parent_process", "image_file"), _file_members(
        ("process.parent.hash.sha1",), ("process.parent.hash.sha256",)),
        lambda details, rest, acc, odata_type: _file_size(details, rest, acc, "")),
    "processId": _only_for(_NS + "processEvidence", "process.pid", _rename(("process", "id"), _long), _long),
    "parentProcessId": _only_for(_NS + "processEvidence", "process.parent.pid",
                                 _rename(("parent_process", "id"), _long), _long),
    "processCreationDateTime": _rename(("process", "creation_datetime"), _graph_date, "process.start"),
    "parentProcessCreationDateTime": _rename(("parent_process", "creation_datetime"), _graph_date,
                                             "process.parent.start"),
    # registry, groups
    "registryHive": ("registry_hive", ("registry.hive",)),
    "registryKey": ("registry_key", ("registry.key",)),
    "registryValueType": ("registry_value_type", ("registry.data.type",)),
    "registryValue": ("registry_value", ("registry.value",)),
    "registryValueName": ("registry_value_name", ()),
    "securityGroupId": ("security_group_id", ("group.id",)),
}


def _graph_properties(properties: dict[str, Any], out: dict[str, Any], acc: Slots, odata_type: str,
                      rules: dict[str, Rename | Rule | None] = _GRAPH_RULES) -> None:
    """Graph-named evidence properties -> `out` (the pipeline's names) and the slots."""
    for name, value in properties.items():
        if value is None:
            continue
        rule = rules.get(name, _UNKNOWN)
        if rule is _UNKNOWN:  # a property the pipeline does not know: kept under its Graph name
            if value.__class__ is str:
                if value:
                    out[name] = value
            elif (value := _clean(value)) is not _DROP:
                if value.__class__ is dict:
                    _merge(out, name, value)
                else:  # what `_merge` does with anything but an object
                    out[name] = value
        elif rule.__class__ is tuple:  # a plain rename (most of them)
            if value.__class__ is str:
                if value:
                    out[rule[0]] = value
                    for slot in rule[1]:
                        acc[slot].append(value)
            elif (value := _clean(value)) is not _DROP:
                if value.__class__ is dict:
                    _merge(out, rule[0], value)
                else:
                    out[rule[0]] = value
        elif rule is not None:
            rule(value, out, acc, odata_type, name)


_UNKNOWN = object()
# For an evidence type with no typed model, whose `extra` is the whole object: the base
# properties were already written from the typed base fields (parsed once, by the mapping).
_UNTYPED_RULES: dict[str, Rename | Rule | None] = {
    **_GRAPH_RULES,
    **dict.fromkeys(("@odata.type", "createdDateTime", "verdict", "remediationStatus", "roles", "detailedRoles",
                     "tags")),
}


# odata_type -> ((the names of a path without `[]`, else None; the path's steps; slot; whether
# the value must be an IP) of each identity row of the type that feeds a related.* field),
# worked out once per evidence type.
_IDENTITY_PLANS: dict[str, tuple[tuple[tuple[str, ...] | None, tuple[tuple[str, bool], ...], str, bool], ...]] = {}


def _identities(ev: EvidenceBase, odata_type: str, acc: Slots) -> None:
    """The evidence's identifying values of the kinds IDENTITY_SLOTS routes -> their slots
    (an address only if it is an IP address; numbers as text): `mappings.evidence.values_at`
    of each row, the usual one-value paths inline."""
    plan = _IDENTITY_PLANS.get(odata_type)
    if plan is None:
        if len(_IDENTITY_PLANS) >= 4096:
            _IDENTITY_PLANS.clear()
        rows = []
        for row in identities_of(ev):
            if row.kind in IDENTITY_SLOTS:
                steps = path_steps(row.common)
                rows.append((plain_names(steps), steps, IDENTITY_SLOTS[row.kind], row.kind == "ip"))
        plan = _IDENTITY_PLANS[odata_type] = tuple(rows)
    for names, steps, slot, is_ip in plan:
        if names is not None:
            value = plain_value(ev, names)
            if value is None:
                continue
            values: Any = (value,)
        else:
            values = values_along(ev, steps)
        for value in values:
            value = _ip(value) if is_ip else value if value.__class__ is str else _string(value)
            if value:
                acc[slot].append(value)


# --------------------------------------------------------------------------- evidence


def _evidence(evidence: list[EvidenceBase], acc: Slots) -> tuple[list[dict[str, Any]], list[str]]:
    """Every evidence -> (the pipeline's evidence objects, the event.category of each
    evidence that has one, in evidence order)."""
    items: list[dict[str, Any]] = []
    categories: list[str] = []
    builders = EVIDENCE_BUILDERS
    # The evidence of an alert mostly share one createdDateTime: its text is made once.
    created_at: datetime | None = None
    created_text = ""
    for ev in evidence:
        kind = ev.kind  # type: ignore[attr-defined]  # every evidence model has its tag
        odata_type = ev.odata_type
        # The alertEvidence base properties, which every evidence has typed.
        out: dict[str, Any] = {"odata_type": odata_type} if odata_type else {}
        if (value := ev.created) is not None:
            if value != created_at:
                created_at, created_text = value, _iso(value)
            out["created_datetime"] = created_text
        if value := ev.verdict:
            out["verdict"] = value
        if value := ev.remediation_status:
            out["remediation_status"] = value
        if value := ev.roles:
            out["roles"] = value
        if value := ev.detailed_roles:
            out["detailed_roles"] = value
        if value := ev.tags:
            out["tags"] = value
        extra = ev.extra
        build = builders.get(kind)
        if build is None:  # no typed model: the rest of the whole object in `extra`, Graph-named
            _graph_properties(extra, out, acc, odata_type, _UNTYPED_RULES)
            category = CATEGORY_OF_TYPE.get(odata_type)
        else:
            build(ev, out, acc)
            # (An extra of only Graph's usual `"remediationStatusDetails": null` adds nothing.)
            if extra and (len(extra) != 1 or extra.get("remediationStatusDetails", 1) is not None):
                _graph_properties(extra, out, acc, odata_type)
            category = CATEGORY_OF_KIND.get(kind)
        _identities(ev, odata_type, acc)
        if category is not None:
            categories.append(category)
        if out:
            items.append(out)
    return items, categories


# (evidence categories..., determination) -> (event.category, event.type): alerts repeat a
# handful of combinations, and sorting sets for each one costs more than a lookup.
_EVENT_CATEGORIES: dict[tuple[str | None, ...], tuple[list[str], list[str]]] = {}


def _event_category(categories: list[str], determination: str | None) -> tuple[list[str], list[str]]:
    """(event.category, event.type) as the pipeline's script derives them. Its rule is
    order-dependent: each categorised evidence adds "access" once a registry evidence was
    seen (itself included), "info" before that; the determination adds "indicator" when
    the categories hold "threat" (only the determination apt gives it), "info" otherwise."""
    types = set()
    if categories:
        if categories[0] != "registry":
            types.add("info")
        if "registry" in categories:
            types.add("access")
    found = set(categories)
    if determination:
        category = CATEGORY_OF_DETERMINATION.get(determination.lower())
        if category is not None:
            found.add(category)
            types.add("indicator" if "threat" in found else "info")
    return sorted(found), sorted(types)


def _process_names(acc: Slots) -> str | list[str] | None:
    """process.name: the image file names, then the first word of each command line (its
    last `/` part, quotes removed), as the pipeline's script; one name is a string."""
    names = dict.fromkeys(acc["process.name"]) if "process.name" in acc else {}
    for command_line in dict.fromkeys(acc.get("process.command_line", ())):
        word = command_line.strip().split(" ", 1)[0]
        if "/" in word:
            word = word.rsplit("/", 1)[1]
        word = word.replace('"', "")
        if word:
            names[word] = None
    if not names:
        return None
    return next(iter(names)) if len(names) == 1 else list(names)


def _in_order(values: list[Any]) -> list[Any]:
    """LIST: de-duplicated, first occurrence first."""
    return list(dict.fromkeys(values))


def _sorted_set(values: list[Any]) -> list[Any]:
    """SORTED: the distinct values, sorted."""
    return sorted(set(values))


class _Row(NamedTuple):
    """An ECS field the evidence fills: the object it is a member of (made when first
    needed), its name, the slots its values come from (`slot`: the one slot, when a row has
    only one), and how more than one value is reduced to the field's list."""

    parent: tuple[str, ...]
    name: str
    slots: tuple[str, ...]
    slot: str | None
    reduce: Callable[[list[Any]], list[Any]]


def _rows() -> tuple[_Row, ...]:
    """EVIDENCE_FIELDS then RELATED_FIELDS as rows, in document order. Equal parent paths
    are one tuple, so that a walk sees a change of object by identity."""
    parents: dict[tuple[str, ...], tuple[str, ...]] = {}
    fields = [(path, slots, _sorted_set if how == SORTED else _in_order) for path, slots, how in EVIDENCE_FIELDS]
    fields += [(("related", name), slots, _in_order) for name, slots in RELATED_FIELDS]
    return tuple(_Row(parents.setdefault(path[:-1], path[:-1]), path[-1], slots, None, reduce)
                 for path, slots, reduce in fields)


_ROWS = _rows()
# The rows an alert writes depend only on which slots hold values, and alerts repeat a
# handful of evidence combinations: the rows for each set of slots are worked out once, so
# an alert walks its ~20 rows, not all 60 and their absent slots. (Keyed by the slots in the
# order they were filled: a tuple is hashed and compared at half a frozenset's cost, and
# the same evidence combination fills them in the same order.)
_PLANS: dict[tuple[str, ...], tuple[_Row, ...]] = {}


def _plan(present: tuple[str, ...]) -> tuple[_Row, ...]:
    """The rows the slots `present` feed, each with only those of its slots."""
    plan = []
    for row in _ROWS:
        slots = tuple(slot for slot in row.slots if slot in present)
        if slots:
            plan.append(row._replace(slots=slots, slot=slots[0] if len(slots) == 1 else None))
    return tuple(plan)


def _fill_slots(doc: dict[str, Any], acc: Slots) -> None:
    """Every row whose slots hold values, in table order. A field with one value takes the
    slot's list as it is (no copy: most fields have one value); more values are reduced."""
    present = tuple(acc)
    plan = _PLANS.get(present)
    if plan is None:
        if len(_PLANS) >= 4096:
            _PLANS.clear()
        plan = _PLANS[present] = _plan(present)
    parent: tuple[str, ...] | None = None
    target = doc
    for row_parent, name, slots, slot, reduce in plan:
        if slot is not None:
            values = acc[slot]
            if len(values) > 1:
                values = reduce(values)
        else:  # two or more slots; a slot is only made by appending to it, so each holds a value
            values = reduce([value for slot in slots for value in acc[slot]])
        if row_parent is not parent:
            parent, target = row_parent, _at(doc, row_parent)
        target[name] = values


def _fill_evidence_fields(doc: dict[str, Any], acc: Slots) -> None:
    """The ECS fields the evidence fed, then process.name and the entity ids."""
    _fill_slots(doc, acc)
    if ("process.name" in acc or "process.command_line" in acc) and (names := _process_names(acc)) is not None:
        _at(doc, ("process",))["name"] = names
    process = doc.get("process")
    if process is not None:
        # process.entity_id / parent.entity_id: the pids as text (the pipeline renders them).
        if pids := process.get("pid"):
            process["entity_id"] = [str(pid) for pid in pids]
        if (parent := process.get("parent")) and (pids := parent.get("pid")):
            parent["entity_id"] = [str(pid) for pid in pids]


# --------------------------------------------------------------------------- the alert


def _threat(alert: Alert) -> dict[str, Any] | None:
    """threat.*: tactic names from the category (and the newer categories), techniques."""
    threat: dict[str, Any] = {}
    category, categories, techniques = alert.category, alert.categories, alert.mitre_techniques
    if categories and categories != [category]:
        tactics = list(dict.fromkeys(c for c in ([category, *categories] if category else categories) if c))
    else:
        tactics = [category] if category else None
    if "" in techniques:
        techniques = [t for t in techniques if t]
    if tactics or techniques:
        threat["framework"] = _FRAMEWORK
    if value := alert.threat_family_name:
        threat["group"] = {"name": value}
    if tactics:
        threat["tactic"] = {"name": tactics}
    if techniques:
        parents = [t.partition(".")[0] for t in techniques]
        threat["technique"] = {
            "id": parents if len(parents) == 1 else list(dict.fromkeys(parents)),
            "subtechnique": {"id": techniques},  # every id, parents included, as the pipeline
        }
    return threat or None


def _comment(comment: Comment) -> dict[str, Any]:
    """A comment with the field names the integration maps (comments.message, ...)."""
    out: dict[str, Any] = {}
    if value := comment.author:
        out["created_by_display_name"] = value
    if (value := comment.created) is not None:
        out["created_datetime"] = _iso(value)
    if value := comment.text:
        out["message"] = value
    return out


# Alert fields kept as they are under m365_defender.alert, in this order: (field, name).
_VENDOR_TEXT = (
    ("actor_display_name", "actor_display_name"),
    ("classification", "classification"),
    ("detector_id", "detector_id"),
    ("detection_source", "detection_source"),
    ("determination", "determination"),
    ("incident_id", "incident_id"),
    ("provider_alert_id", "provider_alert_id"),
    ("recommended_actions", "recommended_actions"),
    ("severity_original", "severity"),
    ("status", "status"),
    ("threat_display_name", "threat_display_name"),
    ("title", "title"),
    # Not in the pipeline (it drops them); kept so that nothing is lost.
    ("product_name", "product_name"),
    ("alert_policy_id", "alert_policy_id"),
    ("investigation_state", "investigation_state"),
)


def _vendor(alert: Alert, resolved: datetime | None, tenant_id: str,
            evidence: list[dict[str, Any]]) -> dict[str, Any]:
    """m365_defender.alert: what no ECS field holds, with the pipeline's names."""
    out: dict[str, Any] = {}
    for field, name in _VENDOR_TEXT:
        if value := getattr(alert, field):
            out[name] = value
    if value := alert.incident_web_url:
        out["incident_web_url"] = _uri_parts(value)
    if resolved is not None:
        out["resolved_datetime"] = _iso(resolved)
    if value := alert.comments:
        comments = [c for c in map(_comment, value) if c]
        if comments:
            out["comments"] = comments
    if value := alert.categories:
        out["categories"] = value
    if value := alert.system_tags:
        out["system_tags"] = value
    if (value := alert.custom_details) and (value := _clean(value)) is not _DROP:
        out["custom_details"] = value
    if (value := alert.additional_data) and (value := _clean(value)) is not _DROP:
        out["additional_data"] = value
    if extra := alert.extra:
        for name, value in extra.items():
            if name == "tenantId" and value == tenant_id:
                continue  # it is cloud.account.id
            if value.__class__ is str:
                if not value:
                    continue
            elif (value := _clean(value)) is _DROP:
                continue
            if name == "@odata.type":
                out["odata_type"] = value
            elif name == "tenantId":
                out["tenant_id"] = value
            else:
                out[name] = value  # a property Graph added later: kept under its Graph name
    if evidence:
        out["evidence"] = evidence
    return out


def to_ecs(alert: Alert) -> dict[str, Any]:
    """The alert as an ECS document (a JSON-ready dict). Lists of text the alert holds
    (roles, tags, urls, mitreTechniques, ...) are shared with it, not copied: copy the
    document before changing it in place."""
    times = alert.times
    tenant = alert.tenant
    tenant_id, label = tenant.id, tenant.label
    extra = alert.extra
    graph_tenant = extra.get("tenantId") if extra else None
    account_id = graph_tenant if graph_tenant.__class__ is str and graph_tenant else tenant_id
    assigned_to = alert.assigned_to
    comments = alert.comments
    determination = alert.determination

    acc: Slots = defaultdict(list)
    if assigned_to:
        acc["user.assigned_to"].append(assigned_to)
    for comment in comments:
        if value := comment.author:
            acc["user.comment_author"].append(value)
    evidence, categories = _evidence(evidence, acc) if (evidence := alert.evidence) else ([], [])

    event: dict[str, Any] = {"kind": "alert", "id": alert.id}
    if categories or determination:
        key = (*categories, determination)
        known = _EVENT_CATEGORIES.get(key)
        if known is None:
            if len(_EVENT_CATEGORIES) >= 4096:
                _EVENT_CATEGORIES.clear()
            known = _EVENT_CATEGORIES[key] = _event_category(categories, determination)
        if known[0]:
            event["category"] = list(known[0])  # copies: the document is the caller's to change
            event["type"] = list(known[1])
    if (value := times.created) is not None:
        event["created"] = _iso(value)
    first, last = times.first_activity, times.last_activity
    if first is not None:
        event["start"] = _iso(first)
    if last is not None:
        event["end"] = _iso(last)
    if first is not None and last is not None:
        event["duration"] = _duration_ns(first, last)
    original = alert.severity_original
    if value := EVENT_SEVERITY.get(original.lower()) if original else _SEVERITY_SCORE[alert.severity]:
        event["severity"] = value
    if value := alert.service_source:
        event["provider"] = value
    if value := alert.alert_web_url:
        event["url"] = value

    doc: dict[str, Any] = {"@timestamp": _iso(times.last_updated), "ecs": {"version": ECS_VERSION},
                           "event": event}
    if value := alert.description:
        doc["message"] = value
    doc["cloud"] = {"account": {"id": account_id}}
    doc["organization"] = {"id": tenant_id, "name": label}
    if (threat := _threat(alert)) is not None:
        doc["threat"] = threat
    if assigned_to:
        doc["source"] = {"user": {"name": assigned_to}}
    if acc:
        _fill_evidence_fields(doc, acc)
    doc["m365_defender"] = {"alert": _vendor(alert, times.resolved, account_id, evidence)}
    doc["defender_forwarder"] = {
        "customer": label,
        "tenant_id": tenant_id,
        "version_key": alert.version_key,
        "source": alert.source,
        "ingested": _iso(times.ingested),
    }
    return doc


def encode(alert: Alert | Incident) -> bytes:
    """One ECS document as one line of JSON (no trailing newline). An alert of the Defender for
    Endpoint API takes the shape of Elastic's microsoft_defender_endpoint integration instead."""
    if alert.__class__ is Incident:  # (one identity test: the alert path stays as it was)
        return jsonutil.dumps(incident_to_ecs(alert))
    if alert.source == "mde_alerts":
        from mappings.ecs_mde import to_ecs_mde

        return jsonutil.dumps(to_ecs_mde(alert, _iso))
    return jsonutil.dumps(to_ecs(alert))


# --------------------------------------------------------------------------- incidents
#
# An incident is shaped as Elastic's m365_defender `incident` data stream builds it (its
# pipeline revision with the 21/47/73/99 severity scale): the incident's own fields where that
# pipeline puts them. Elastic's collector embeds one alert per document (`$expand=alerts`, split)
# and fills `m365_defender.incident.alert.*` and the ECS groups of that alert's evidence from it;
# we never embed alerts (each is its own `alert` document), so an incident document links its
# alerts by id, in `m365_defender.incident.alert.id` (a list: the field Elastic's
# dashboards join on). docs/formats.md has the table.

# Incident fields kept as they are under m365_defender.incident: (field, name).
_INCIDENT_TEXT = (
    ("assigned_to", "assigned_to"),
    ("classification", "classification"),
    ("determination", "determination"),
    ("title", "display_name"),
    ("id", "id"),
    ("severity_original", "severity"),
    ("status", "status"),
    # Not in Elastic's pipeline (Graph added them later, or its fixture has none): our names.
    ("description", "description"),
    ("summary", "summary"),
    ("last_modified_by", "last_modified_by"),
    ("redirect_incident_id", "redirect_incident_id"),
    ("priority_score", "priority_score"),
    ("resolving_comment", "resolving_comment"),
)


def _split_user(value: str) -> dict[str, str]:
    """source.user of assignedTo, as the pipeline splits an address: name@domain."""
    name, at, domain = value.partition("@")
    if at and name and domain:
        return {"domain": domain, "email": value, "name": name}
    return {"name": value}


def _incident_comments(incident: Incident) -> list[Any] | None:
    """The comments as the pipeline keeps them: Graph's objects as sent (comment, createdBy,
    createdTime with Graph's digits); from the model where there is no original."""
    raw = incident.raw
    if isinstance(raw, dict) and isinstance(comments := raw.get("comments"), list):
        return comments or None
    built = []
    for comment in incident.comments:
        item: dict[str, Any] = {}
        if comment.text is not None:
            item["comment"] = comment.text
        if comment.author is not None:
            item["createdBy"] = comment.author
        if comment.created is not None:
            item["createdTime"] = comment.created.isoformat().replace("+00:00", "Z")
        built.append(item)
    return built or None


def incident_to_ecs(incident: Incident) -> dict[str, Any]:
    """The incident as an ECS document (a JSON-ready dict)."""
    times = incident.times
    tenant_id, label = incident.tenant.id, incident.tenant.label
    extra = incident.extra
    graph_tenant = extra.get("tenantId") if extra else None
    account_id = graph_tenant if graph_tenant.__class__ is str and graph_tenant else tenant_id
    assigned_to = incident.assigned_to

    event: dict[str, Any] = {"kind": "alert", "id": incident.id}
    if determination := incident.determination:
        categories, types = _event_category([], determination)
        if categories:
            event["category"], event["type"] = categories, types
    if (value := times.created) is not None:
        event["created"] = _iso(value)
    original = incident.severity_original
    if value := EVENT_SEVERITY.get(original.lower()) if original else _SEVERITY_SCORE[incident.severity]:
        event["severity"] = value
    if value := incident.incident_web_url:
        event["url"] = value

    doc: dict[str, Any] = {"@timestamp": _iso(times.last_updated), "ecs": {"version": ECS_VERSION},
                           "event": event}
    if value := incident.title:
        doc["message"] = value  # the pipeline's message is displayName
    doc["cloud"] = {"account": {"id": account_id}}
    doc["organization"] = {"id": tenant_id, "name": label}
    related: list[str] = []
    if assigned_to:
        user = _split_user(assigned_to)
        doc["source"] = {"user": user}
        related += [user["name"], assigned_to]
    related += [c.author for c in incident.comments if c.author]
    if related:
        doc["related"] = {"user": list(dict.fromkeys(related))}

    vendor: dict[str, Any] = {}
    for field, name in _INCIDENT_TEXT:
        if (value := getattr(incident, field)) is not None and value != "":
            vendor[name] = value
    if value := incident.alert_ids:
        vendor["alert"] = {"id": value}
    if (comments := _incident_comments(incident)) is not None:
        vendor["comments"] = comments
    if (value := times.created) is not None:
        vendor["created_datetime"] = _iso(value)
    vendor["last_update_datetime"] = _iso(times.last_updated)
    if value := incident.custom_tags:
        vendor["tags"] = value
    if value := incident.system_tags:
        vendor["system_tags"] = value
    if value := incident.incident_web_url:
        vendor["web_url"] = _uri_parts(value)
    for name, value in (extra or {}).items():
        if (value := _clean(value)) is _DROP:
            continue
        if name == "@odata.type":
            vendor["odata_type"] = value
        elif name == "tenantId":
            vendor["tenant_id"] = value  # the pipeline keeps it (cloud.account.id holds it too)
        else:
            vendor[name] = value  # a property Graph added later: kept under its Graph name
    doc["m365_defender"] = {"incident": dict(sorted(vendor.items()))}
    doc["defender_forwarder"] = {
        "customer": label,
        "tenant_id": tenant_id,
        "version_key": incident.version_key,
        "source": incident.source,
        "kind": incident.kind,
        "ingested": _iso(times.ingested),
    }
    return doc
