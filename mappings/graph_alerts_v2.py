"""Microsoft Graph `security/alerts_v2` alert -> `core.schema.Alert`.

The mapping is data: every table below is a list of rows (Graph property, Alert field,
converter), walked by `_Table.apply`. What no row knows is kept verbatim in an `extra`
dict (the evidence's own, or the alert's), so a new Graph property is carried along
instead of lost.

Rules (they are what a README documents):
- null or a missing property means "absent": the Alert field keeps its default.
- Types are checked strictly, against the JSON types Graph documents; a wrong one raises
  `MappingError` naming the property path (`evidence[3].fileDetails: expected an object,
  got str`), and the pipeline dead-letters the alert with that reason. A null inside a
  list is a wrong type too. The one coercion: an integer where Graph documents a string
  id (`incidentId`, which MDE sends as a number; cloud application `appId`, an Int)
  becomes its decimal string.
- Enumerations compare case-insensitively and are stored in Graph's lowerCamelCase
  spelling; a value Graph does not (yet) define is stored verbatim.
- Timestamps are ISO 8601; Graph's 7th fractional digit (100 ns) is truncated to
  microseconds, an offset is converted to UTC, and a value without offset is taken as UTC
  (Graph documents every DateTimeOffset as UTC).
- Evidence dispatches on `@odata.type` (any case). A sub-object only partly typed keeps
  its untyped members in `extra` under its own name; a list of sub-objects with untyped
  members is kept whole there. Evidence of any other type (or none) is `OtherEvidence`
  with the whole object in `extra`; nested evidence (malwareEvidence.files, ...) stays
  inside its parent's `extra`, not flattened.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ValidationError

from core.schema import (
    Alert,
    CloudApplicationEvidence,
    DeviceEvidence,
    FileEvidence,
    IpEvidence,
    MailboxEvidence,
    MailMessageEvidence,
    OtherEvidence,
    ProcessEvidence,
    RegistryEvidence,
    Severity,
    TenantRef,
    UrlEvidence,
    UserEvidence,
    version_key,
)

SOURCE = "graph_alerts"
UTC = timezone.utc


class MappingError(ValueError):
    """The alert cannot be normalised; the message names the property and the reason."""


class _Invalid(Exception):
    """One converter's complaint; the table walk prepends the property path on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []  # innermost first, as the exception unwinds

    def where(self) -> str:
        text = ""
        for part in reversed(self.path):
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text or "alert"


# --------------------------------------------------------------------------- converters

Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class Checked:
    """A row whose value is copied as is: the Alert model checks its type (strictly, in
    pydantic-core, far faster than Python could), and a wrong type comes back as a
    MappingError naming the Graph property. `what` names the JSON type, for readers.
    A `collection` target has a list/dict default: a null is not copied onto it."""

    what: str
    collection: bool = False


TEXT = Checked("a string")
INTEGER = Checked("an integer")
NUMBER = Checked("a number")
TEXT_LIST = Checked("a list of strings", collection=True)
OBJECT = Checked("an object", collection=True)


def _preview(value: Any) -> str:
    """A short rendering of a bad value for an error message (a description may be 10 MB)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(what: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {what}, got {type(value).__name__}")


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _expected("an object", value)


def _id_text(value: Any) -> str:
    """A string id; an integer is accepted and written in decimal (MDE-style ids are numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # beyond Python's int->str digit limit: no real id is
            raise _Invalid("expected a string, got an integer of over 4300 digits") from None
    raise _expected("a string", value)


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _expected("an ISO 8601 date-time string", value)
    try:
        parsed = datetime.fromisoformat(value)  # 3.11+: 'Z', any number of fraction digits
    except ValueError:
        raise _Invalid(f"not an ISO 8601 date-time: {_preview(value)}") from None
    if parsed.tzinfo is UTC:  # what Graph sends: 'Z' (or +00:00) gives the UTC singleton
        return parsed
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise _Invalid(f"out of range once converted to UTC: {_preview(value)}") from None


def _list_of(item: Convert) -> Convert:
    def convert(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _expected("a list", value)
        if not value:  # the usual case for roles: skip the loop machinery
            return value
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except _Invalid as error:
                error.path.append(index)
                raise
        return out

    return convert


def _enum(members: Iterable[str], aliases: Mapping[str, str] | None = None) -> Convert:
    """Case-insensitive match on Graph's members; unknown values are kept verbatim."""
    canonical = {member.lower(): member for member in members}
    canonical.update({alias.lower(): member for alias, member in (aliases or {}).items()})

    def convert(value: Any) -> str:
        if isinstance(value, str):
            return canonical.get(value.lower(), value)
        raise _expected("a string", value)

    return convert


# Graph's enumerations (defender-source.md §1.3, Appendix A), in metadata order.
ALERT_STATUS = _enum(("unknown", "new", "inProgress", "resolved", "unknownFutureValue"))
ALERT_CLASSIFICATION = _enum(
    ("unknown", "falsePositive", "truePositive", "informationalExpectedActivity", "unknownFutureValue",
     "benignPositive"),  # benignPositive: an older revision of the v1.0 docs still lists it
)
ALERT_DETERMINATION = _enum(
    ("unknown", "apt", "malware", "securityPersonnel", "securityTesting", "unwantedSoftware", "other",
     "multiStagedAttack", "compromisedAccount", "phishing", "maliciousUserActivity", "notMalicious",
     "notEnoughDataToValidate", "confirmedActivity", "lineOfBusinessApplication", "unknownFutureValue"),
    # The docs page's prose uses other names than the metadata for four members; the
    # metadata (SDK) spelling is the wire truth, so the prose names fold onto it.
    aliases={"compromisedUser": "compromisedAccount", "clean": "notMalicious",
             "insufficientData": "notEnoughDataToValidate", "confirmedUserActivity": "confirmedActivity"},
)
SERVICE_SOURCE = _enum(
    ("unknown", "microsoftDefenderForEndpoint", "microsoftDefenderForIdentity", "microsoftDefenderForCloudApps",
     "microsoftDefenderForOffice365", "microsoft365Defender", "azureAdIdentityProtection", "microsoftAppGovernance",
     "dataLossPrevention", "unknownFutureValue", "microsoftDefenderForCloud", "microsoftSentinel",
     "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftSecurityForAI"),
)
DETECTION_SOURCE = _enum(
    ("unknown", "microsoftDefenderForEndpoint", "antivirus", "smartScreen", "customTi",
     "microsoftDefenderForOffice365", "automatedInvestigation", "microsoftThreatExperts", "customDetection",
     "microsoftDefenderForIdentity", "cloudAppSecurity", "microsoft365Defender", "azureAdIdentityProtection",
     "manual", "microsoftDataLossPrevention", "appGovernancePolicy", "appGovernanceDetection",
     "unknownFutureValue", "microsoftDefenderForCloud", "microsoftDefenderForIoT", "microsoftDefenderForServers",
     "microsoftDefenderForStorage", "microsoftDefenderForDNS", "microsoftDefenderForDatabases",
     "microsoftDefenderForContainers", "microsoftDefenderForNetwork", "microsoftDefenderForAppService",
     "microsoftDefenderForKeyVault", "microsoftDefenderForResourceManager", "microsoftDefenderForApiManagement",
     "nrtAlerts", "scheduledAlerts", "microsoftDefenderThreatIntelligenceAnalytics", "builtInMl",
     "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftDefenderForAIServices",
     "securityCopilot", "microsoftSentinel"),
)
INVESTIGATION_STATE = _enum(
    ("unknown", "terminated", "successfullyRemediated", "benign", "failed", "partiallyRemediated", "running",
     "pendingApproval", "pendingResource", "queued", "innerFailure", "preexistingAlert", "unsupportedOs",
     "unsupportedAlertType", "suppressedAlert", "partiallyInvestigated", "terminatedByUser",
     "terminatedBySystem", "unknownFutureValue"),
)
EVIDENCE_VERDICT = _enum(("unknown", "suspicious", "malicious", "noThreatsFound", "unknownFutureValue"))
EVIDENCE_REMEDIATION_STATUS = _enum(
    ("none", "remediated", "prevented", "blocked", "notFound", "unknownFutureValue", "active", "pendingApproval",
     "declined", "unremediated", "running", "partiallyRemediated"),
)
EVIDENCE_ROLE = _enum(
    ("unknown", "contextual", "scanned", "source", "destination", "created", "added", "compromised", "edited",
     "attacked", "attacker", "commandAndControl", "loaded", "suspicious", "policyViolator", "unknownFutureValue"),
)
DETECTION_STATUS = _enum(("detected", "blocked", "prevented", "unknownFutureValue"))

_SEVERITIES = {
    "unknown": Severity.unknown,
    "informational": Severity.informational,
    "low": Severity.low,
    "medium": Severity.medium,
    "high": Severity.high,
    "unknownfuturevalue": Severity.unknown,
}


def _severity(original: Any) -> Severity:
    """Graph's alertSeverity -> Severity; an unknown value (or none) is Severity.unknown.
    The string as sent is kept in `severity_original`, whose row checks its type."""
    return _SEVERITIES.get(original.lower(), Severity.unknown) if isinstance(original, str) else Severity.unknown


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Nested:
    """Converter for a sub-object: its members go through `table`. Members the table does
    not know stay in the parent's leftovers under the property name, as a sub-object."""

    table: _Table


@dataclass(frozen=True)
class NestedList:
    """Converter for a list of sub-objects. If any item has members the table does not
    know, the whole list stays in the parent's leftovers under the property name."""

    table: _Table


@dataclass(frozen=True)
class Flattened:
    """Converter for a sub-object whose members map onto the parent itself (the row's
    target name is unused). Unknown members stay in the leftovers as for `Nested`."""

    table: _Table


@dataclass(frozen=True)
class Tagged:
    """Converter for a list of polymorphic objects, each converted to a dict tagged with its
    model's `kind`; `tables` (by tag) name the property when pydantic rejects a value."""

    convert: Convert
    tables: Mapping[str, _Table]


Row = tuple[str, str, Checked | Convert | Nested | NestedList | Flattened | Tagged]
# Where a target field came from: its Graph property path, and what describes its members.
_Origin = tuple[tuple[str, ...], "_Table | Mapping[str, _Table] | None"]


class _Table:
    """The rows for one JSON object shape. `groups` are rows of the same JSON object that
    fill a nested part of the target (the alert's `times`)."""

    def __init__(self, *rows: Row, groups: Mapping[str, _Table] | None = None) -> None:
        self.rows = rows
        checked = [(s, t, c) for s, t, c in rows if isinstance(c, Checked)]
        targets = [t for _, t, _ in checked]
        # A null must not be copied onto a list/dict target, nor over a target another
        # property (an alias) may have filled: those rows copy only real values.
        guarded = [(s, t) for s, t, c in checked if c.collection or targets.count(t) > 1]
        scalars = [(s, t) for s, t, _ in checked if (s, t) not in guarded]
        self.scalar_sources = tuple(s for s, _ in scalars)
        self.scalar_targets = tuple(t for _, t in scalars)
        self.nulls = (None,) * len(scalars)
        self.guarded = tuple(guarded)
        self.converts = tuple((s, t, c.convert if isinstance(c, Tagged) else c)
                              for s, t, c in rows if isinstance(c, Tagged) or callable(c))
        self.nested = tuple((s, t, c.table) for s, t, c in rows if isinstance(c, Nested))
        self.lists = tuple((s, t, c.table) for s, t, c in rows if isinstance(c, NestedList))
        self.flattened = tuple((s, c.table) for s, _, c in rows if isinstance(c, Flattened))
        self.groups = tuple((groups or {}).items())
        self.simple = not (self.converts or self.nested or self.lists or self.flattened)
        self.origins = self._origins()

    def _origins(self) -> dict[str, _Origin]:
        origins: dict[str, _Origin] = {}
        for source, target, convert in self.rows:
            if isinstance(convert, Flattened):
                for member, (path, table) in convert.table.origins.items():
                    origins[member] = ((source, *path), table)
            elif isinstance(convert, (Nested, NestedList)):
                origins[target] = ((source,), convert.table)
            elif isinstance(convert, Tagged):
                origins[target] = ((source,), convert.tables)
            else:
                origins[target] = ((source,), None)
        for group, table in self.groups:
            origins[group] = ((), table)
        return origins

    def rows_except(self, *sources: str) -> tuple[Row, ...]:
        """This table's rows minus some properties, to build a table on top of it."""
        return tuple(row for row in self.rows if row[0] not in sources)

    def apply(self, obj: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        """Map `obj` into `out`; return the members no row knows, verbatim (the leftovers).

        Rows pop their property from a shallow copy, so what remains is the leftovers,
        with no second pass over the object.
        """
        rest = dict(obj)
        self._take(rest, out)
        for group, table in self.groups:
            table._take(rest, out.setdefault(group, {}))
        return rest

    def _take(self, rest: dict[str, Any], out: dict[str, Any]) -> None:
        pop = rest.pop
        # Scalar targets are all optional, so absent and null both copy as None, and the
        # whole lot is moved in one C-level pass.
        out.update(zip(self.scalar_targets, map(pop, self.scalar_sources, self.nulls)))
        for source, target in self.guarded:
            value = pop(source, None)
            if value is not None:
                out[target] = value
        if self.simple:
            return
        source = ""
        try:
            for source, target, convert in self.converts:
                value = pop(source, None)
                if value is not None:
                    out[target] = convert(value)
            for source, target, table in self.nested:
                value = pop(source, None)
                if value is not None:
                    out[target] = table._sub_object(value, source, rest)
            for source, target, table in self.lists:
                value = pop(source, None)
                if value is not None:
                    out[target] = table._sub_list(value, source, rest)
            for source, table in self.flattened:
                value = pop(source, None)
                if value is not None:
                    out.update(table._sub_object(value, source, rest))
        except _Invalid as error:
            error.path.append(source)
            raise

    def _sub_object(self, value: Any, source: str, rest: dict[str, Any]) -> dict[str, Any]:
        mapped: dict[str, Any] = {}
        left = self.apply(_object(value), mapped)
        if left:
            rest[source] = left
        return mapped

    def _sub_list(self, value: Any, source: str, rest: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise _expected("a list", value)
        items: list[dict[str, Any]] = []
        kept = False
        for index, element in enumerate(value):
            mapped: dict[str, Any] = {}
            try:
                kept = bool(self.apply(_object(element), mapped)) or kept
            except _Invalid as error:
                error.path.append(index)
                raise
            items.append(mapped)
        if kept:
            rest[source] = value
        return items

    def rejected(self, error: ValidationError) -> _Invalid:
        """pydantic's first complaint, re-addressed to the Graph property it came from."""
        first = error.errors()[0]
        path: list[str | int] = []
        describes: _Table | Mapping[str, _Table] | None = self
        for part in first["loc"]:
            if isinstance(describes, _Table) and part in describes.origins:
                names, describes = describes.origins[part]
                path.extend(names)
            elif isinstance(describes, Mapping) and part in describes:
                describes = describes[part]  # the model tag pydantic adds after a list index
            else:  # a list index, or past what the tables describe
                path.append(part)
        what = _PYDANTIC_EXPECTED.get(first["type"])
        reason = f"expected {what}, got {type(first['input']).__name__}" if what else first["msg"]
        invalid = _Invalid(reason)
        invalid.path = path[::-1]
        return invalid


# pydantic's strict-mode error types -> the JSON type the field wanted, for messages.
_PYDANTIC_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}


# Complex types shared by several evidence types (Appendix A).
FILE_DETAILS = _Table(
    ("fileName", "name", TEXT),
    ("filePath", "path", TEXT),
    ("fileSize", "size", INTEGER),
    ("sha1", "sha1", TEXT),
    ("sha256", "sha256", TEXT),
    ("md5", "md5", TEXT),
    ("filePublisher", "publisher", TEXT),
    ("signer", "signer", TEXT),
    ("issuer", "issuer", TEXT),
    # sha256Ac has no typed field: kept in the evidence's extra under the parent property.
)
USER_ACCOUNT = _Table(
    ("accountName", "account_name", TEXT),
    ("domainName", "domain", TEXT),
    ("userPrincipalName", "upn", TEXT),
    ("userSid", "sid", TEXT),
    ("azureAdUserId", "aad_user_id", TEXT),
    ("displayName", "display_name", TEXT),
    # activeDirectoryObjectGuid, tenantId, resourceAccessEvents: kept in extra.
)
LOGGED_ON_USER = _Table(
    ("accountName", "account_name", TEXT),
    ("domainName", "domain", TEXT),
)
GEO_LOCATION = _Table(
    ("city", "city", TEXT),
    ("state", "state", TEXT),
    ("countryName", "country_name", TEXT),
    ("latitude", "latitude", NUMBER),
    ("longitude", "longitude", NUMBER),
)
EMAIL_SENDER = _Table(
    ("emailAddress", "sender", TEXT),
    ("displayName", "sender_display_name", TEXT),
    # domainName: kept in extra (it is the domain part of emailAddress).
)

# alertEvidence base properties (§1.4); remediationStatusDetails has no typed field.
EVIDENCE_BASE = _Table(
    ("@odata.type", "odata_type", TEXT),
    ("createdDateTime", "created", _timestamp),
    ("verdict", "verdict", EVIDENCE_VERDICT),
    ("remediationStatus", "remediation_status", EVIDENCE_REMEDIATION_STATUS),
    ("roles", "roles", _list_of(EVIDENCE_ROLE)),
    ("detailedRoles", "detailed_roles", TEXT_LIST),
    ("tags", "tags", TEXT_LIST),
)

DEVICE = _Table(
    *EVIDENCE_BASE.rows,
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("azureAdDeviceId", "aad_device_id", TEXT),
    ("deviceDnsName", "fqdn", TEXT),
    ("hostName", "hostname", TEXT),
    ("dnsDomain", "dns_domain", TEXT),
    ("ntDomain", "nt_domain", TEXT),
    ("osPlatform", "os_platform", TEXT),
    ("osBuild", "os_build", INTEGER),
    ("version", "os_version", TEXT),
    ("ipInterfaces", "ip_addresses", TEXT_LIST),
    ("lastIpAddress", "last_ip", TEXT),
    ("lastExternalIpAddress", "last_external_ip", TEXT),
    ("loggedOnUsers", "logged_on_users", NestedList(LOGGED_ON_USER)),
    ("healthStatus", "health_status", TEXT),
    ("riskScore", "risk_score", TEXT),
    ("rbacGroupName", "rbac_group", TEXT),
    # firstSeenDateTime, onboardingStatus, defenderAvStatus, rbacGroupId, vmMetadata,
    # resourceAccessEvents: kept in extra.
)
USER = _Table(
    *EVIDENCE_BASE.rows,
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    # stream: kept in extra.
)
FILE = _Table(
    *EVIDENCE_BASE.rows,
    ("fileDetails", "file", Nested(FILE_DETAILS)),
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("detectionStatus", "detection_status", DETECTION_STATUS),
)
PROCESS = _Table(
    # ProcessEvidence.created is the process creation time, so the evidence's own
    # createdDateTime has no typed field here and is kept in extra.
    *EVIDENCE_BASE.rows_except("createdDateTime"),
    ("processId", "pid", INTEGER),
    ("parentProcessId", "parent_pid", INTEGER),
    ("processCommandLine", "command_line", TEXT),
    ("processCreationDateTime", "created", _timestamp),
    ("parentProcessCreationDateTime", "parent_created", _timestamp),
    ("imageFile", "image", Nested(FILE_DETAILS)),
    ("parentProcessImageFile", "parent_image", Nested(FILE_DETAILS)),
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("detectionStatus", "detection_status", DETECTION_STATUS),
)
IP = _Table(
    *EVIDENCE_BASE.rows,
    ("ipAddress", "address", TEXT),
    ("countryLetterCode", "country_code", TEXT),
    ("location", "", Flattened(GEO_LOCATION)),  # city, state, country_name, latitude, longitude
    # stream: kept in extra.
)
URL = _Table(
    *EVIDENCE_BASE.rows,
    ("url", "url", TEXT),
)
MAILBOX = _Table(
    *EVIDENCE_BASE.rows,
    ("primaryAddress", "primary_address", TEXT),
    ("upn", "upn", TEXT),
    ("displayName", "display_name", TEXT),
    ("userAccount", "user", Nested(USER_ACCOUNT)),
)
ANALYZED_MESSAGE = _Table(
    *EVIDENCE_BASE.rows,
    ("networkMessageId", "network_message_id", TEXT),
    ("internetMessageId", "internet_message_id", TEXT),
    ("subject", "subject", TEXT),
    # p1Sender is the envelope (MAIL FROM) sender, the one senderIp belongs to;
    # p2Sender (the From: header) is kept whole in extra.
    ("p1Sender", "", Flattened(EMAIL_SENDER)),  # sender, sender_display_name
    ("recipientEmailAddress", "recipient", TEXT),
    ("senderIp", "sender_ip", TEXT),
    ("receivedDateTime", "received", _timestamp),
    ("deliveryAction", "delivery_action", TEXT),
    ("deliveryLocation", "delivery_location", TEXT),
    ("antiSpamDirection", "direction", TEXT),
    ("urls", "urls", TEXT_LIST),
    ("threats", "threats", TEXT_LIST),
    # p2Sender, attachmentsCount, urlCount, threatDetectionMethods, language, urn: kept in extra.
)
CLOUD_APPLICATION = _Table(
    *EVIDENCE_BASE.rows,
    # cloudApplicationEvidence.appId is an Int, oauthApplicationEvidence.appId a String:
    # both land in the one string field.
    ("appId", "app_id", _id_text),
    ("displayName", "display_name", TEXT),
    ("instanceName", "instance_name", TEXT),
    ("publisher", "publisher", TEXT),  # oauthApplicationEvidence only
    # instanceId, saasAppId, stream (cloud app), objectId (OAuth app): kept in extra.
)
REGISTRY = _Table(
    *EVIDENCE_BASE.rows,
    ("registryHive", "hive", TEXT),
    ("registryKey", "key", TEXT),
    ("registryValueName", "value_name", TEXT),
    ("registryValue", "value_data", TEXT),
    ("registryValueType", "value_type", TEXT),
    ("mdeDeviceId", "mde_device_id", TEXT),
)


@dataclass(frozen=True)
class _Kind:
    """How one @odata.type becomes a typed evidence model."""

    model: type[BaseModel]
    table: _Table
    # Sub-objects the model requires; an evidence whose Graph object lacks them still
    # describes something (an empty user / file), so it gets an empty one.
    required: Mapping[str, Any] = field(default_factory=dict)
    # The fields every evidence of this kind starts from: the model's tag, and `required`.
    start: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        tag = self.model.model_fields["kind"].default
        object.__setattr__(self, "start", {"kind": tag, **self.required})

    @property
    def tag(self) -> str:
        return self.start["kind"]


_NAMESPACE = "#microsoft.graph.security."
_OTHER = _Kind(OtherEvidence, EVIDENCE_BASE)

# Dispatch on @odata.type (lower-cased). Every type not listed here, including the 36
# other types of Appendix A and types Graph adds later, becomes OtherEvidence.
EVIDENCE_KINDS: Mapping[str, _Kind] = {
    f"{_NAMESPACE}{name}".lower(): kind
    for name, kind in (
        ("deviceEvidence", _Kind(DeviceEvidence, DEVICE)),
        ("userEvidence", _Kind(UserEvidence, USER, required={"user": {}})),
        ("fileEvidence", _Kind(FileEvidence, FILE, required={"file": {}})),
        ("processEvidence", _Kind(ProcessEvidence, PROCESS)),
        ("ipEvidence", _Kind(IpEvidence, IP)),
        ("urlEvidence", _Kind(UrlEvidence, URL)),
        ("mailboxEvidence", _Kind(MailboxEvidence, MAILBOX)),
        ("analyzedMessageEvidence", _Kind(MailMessageEvidence, ANALYZED_MESSAGE)),
        ("cloudApplicationEvidence", _Kind(CloudApplicationEvidence, CLOUD_APPLICATION)),
        ("oauthApplicationEvidence", _Kind(CloudApplicationEvidence, CLOUD_APPLICATION)),
        ("registryKeyEvidence", _Kind(RegistryEvidence, REGISTRY)),
        ("registryValueEvidence", _Kind(RegistryEvidence, REGISTRY)),
    )
}
_TABLE_BY_TAG: Mapping[str, _Table] = {kind.tag: kind.table for kind in (*EVIDENCE_KINDS.values(), _OTHER)}


def _evidence(value: Any) -> dict[str, Any]:
    """One alertEvidence object -> the fields of its typed model, tagged with its `kind`."""
    item = _object(value)
    odata_type = item.get("@odata.type")
    kind = EVIDENCE_KINDS.get(odata_type.lower(), _OTHER) if isinstance(odata_type, str) else _OTHER
    fields = dict(kind.start)
    leftovers = kind.table.apply(item, fields)
    # OtherEvidence keeps the whole object, base properties included, as the schema says.
    fields["extra"] = item if kind is _OTHER else leftovers
    if fields["odata_type"] is None:
        fields["odata_type"] = ""  # no @odata.type at all: an untyped evidence
    return fields


COMMENT = _Table(
    # The metadata names win over the names in the incidents docs example (§1.2), so
    # they come last; both are known, so neither lands in extra.
    ("createdBy", "author", TEXT),
    ("createdTime", "created", _timestamp),
    ("comment", "text", TEXT),
    ("createdByDisplayName", "author", TEXT),
    ("createdDateTime", "created", _timestamp),
)

TIMES = _Table(
    ("createdDateTime", "created", _timestamp),
    ("lastUpdateDateTime", "last_updated", _timestamp),
    ("firstActivityDateTime", "first_activity", _timestamp),
    ("lastActivityDateTime", "last_activity", _timestamp),
    ("resolvedDateTime", "resolved", _timestamp),
)

# Every alert property of §1.2 except tenantId: the alert is filed under the tenant that
# was polled (`tenant`), and Graph's own tenantId is kept in `extra` with anything else
# this table does not know (`@odata.type`, properties Graph adds later).
ALERT = _Table(
    ("id", "id", TEXT),
    ("providerAlertId", "provider_alert_id", TEXT),
    ("incidentId", "incident_id", _id_text),  # a number in MDE's API, a string in Graph
    ("status", "status", ALERT_STATUS),
    ("severity", "severity_original", TEXT),  # `severity` itself is derived from it, below
    ("classification", "classification", ALERT_CLASSIFICATION),
    ("determination", "determination", ALERT_DETERMINATION),
    ("title", "title", TEXT),
    ("description", "description", TEXT),
    ("recommendedActions", "recommended_actions", TEXT),
    ("category", "category", TEXT),
    ("categories", "categories", TEXT_LIST),
    ("mitreTechniques", "mitre_techniques", TEXT_LIST),
    ("serviceSource", "service_source", SERVICE_SOURCE),
    ("detectionSource", "detection_source", DETECTION_SOURCE),
    ("productName", "product_name", TEXT),
    ("detectorId", "detector_id", TEXT),
    ("alertPolicyId", "alert_policy_id", TEXT),
    ("alertWebUrl", "alert_web_url", TEXT),
    ("incidentWebUrl", "incident_web_url", TEXT),
    ("assignedTo", "assigned_to", TEXT),
    ("actorDisplayName", "actor_display_name", TEXT),
    ("threatDisplayName", "threat_display_name", TEXT),
    ("threatFamilyName", "threat_family_name", TEXT),
    ("investigationState", "investigation_state", INVESTIGATION_STATE),
    ("systemTags", "system_tags", TEXT_LIST),
    ("comments", "comments", NestedList(COMMENT)),
    ("customDetails", "custom_details", OBJECT),
    ("additionalData", "additional_data", OBJECT),
    ("evidence", "evidence", Tagged(_list_of(_evidence), _TABLE_BY_TAG)),
    groups={"times": TIMES},
)


# --------------------------------------------------------------------------- entry point


def normalise(raw: dict, tenant: TenantRef, ingested: datetime) -> Alert:
    """One alerts_v2 alert of `tenant`, read at `ingested` -> Alert (with `raw` = `raw`).

    Raises MappingError, and only MappingError, when the alert cannot be normalised.
    """
    if not isinstance(raw, dict):
        raise MappingError(f"alert: expected an object, got {type(raw).__name__}")
    fields: dict[str, Any] = {"source": SOURCE, "tenant": tenant, "raw": raw}
    try:
        extra = ALERT.apply(raw, fields)
    except _Invalid as error:
        raise MappingError(f"{error.where()}: {error.reason}") from None
    alert_id = fields.get("id")
    if not isinstance(alert_id, str) or not alert_id:
        raise MappingError("id: missing" if alert_id is None else
                           "id: empty" if alert_id == "" else f"id: expected a string, got {type(alert_id).__name__}")
    times = fields["times"]
    if "last_updated" not in times:
        raise MappingError("lastUpdateDateTime: missing")
    times["ingested"] = ingested
    fields["severity"] = _severity(fields.get("severity_original"))
    fields["version_key"] = version_key(tenant.id, alert_id, times["last_updated"])
    fields["extra"] = extra
    try:
        return Alert.model_validate(fields, strict=True)
    except ValidationError as error:
        invalid = ALERT.rejected(error)
        raise MappingError(f"{invalid.where()}: {invalid.reason}") from None
