"""Microsoft Graph `security/alerts_v2` alert -> `core.model.schema.Alert`.

The mapping is data: every table below is a list of rows (Graph property, Alert field,
converter). What no row knows is kept verbatim in an `extra` dict (the evidence's own, or
the alert's), so a new Graph property is carried along instead of lost.

Rules (docs/formats.md documents them):
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

How a table is applied: `fill` walks it over one object, property by property, each converter
checking its value and naming what is wrong; the plain strings of an object are taken and
checked together. The models are built from what the tables checked, without a second
validation.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from core.model.checks import InvalidValue, check_record_id
from core.model.schema import (
    Alert,
    AlertTimes,
    CloudApplicationEvidence,
    Comment,
    DeviceEvidence,
    EvidenceBase,
    FileEvidence,
    FileInfo,
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
    UserInfo,
    version_key,
)
from core.model.times import parse_timestamp

SOURCE = "graph_alerts"


class MappingError(ValueError):
    """The alert cannot be normalised; the message names the property and the reason."""


class _Invalid(InvalidValue):
    """One converter's complaint; the walk adds the property path on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []  # innermost first, as the exception unwinds

    def where(self) -> str:
        text = ""
        for part in reversed(self.path):
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text or "alert"


def _at(part: str | int, error: _Invalid) -> _Invalid:
    """`error`, one level further out (property name or list index)."""
    error.path.append(part)
    return error


def _expected(what: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {what}, got {type(value).__name__}")


def _object(value: Any) -> dict[str, Any]:
    if value.__class__ is dict or isinstance(value, dict):
        return value
    raise _expected("an object", value)


def _list(value: Any) -> list[Any]:
    if value.__class__ is list or isinstance(value, list):
        return value
    raise _expected("a list", value)


# --------------------------------------------------------------------------- converters
#
# A converter says how one property becomes its field's value:
# - `convert(value)`: the conversion of the value as sent (never None: null means absent),
#   raising `_Invalid` with the reason; the walk adds the property to the path;
# - `put(value, row, fields, rest)`: where the result goes: its field, by default; a
#   sub-object also hands what its table does not know to `rest`, the leftovers of the
#   object being walked.


class Row(NamedTuple):
    graph: str  # the Graph property
    field: str  # the model field it fills ('' for a `Flattened` sub-object)
    convert: Converter


class Converter:
    def convert(self, value: Any) -> Any:
        raise NotImplementedError

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        fields[row.field] = self.convert(value)

    @property
    def plain(self) -> bool:
        """Whether `put` only stores `convert`'s result (the walk then calls `convert` itself)."""
        return type(self).put is Converter.put


class _Text(Converter):
    """A string. (`fill` checks a table's strings together; this is for the odd one out.)"""


    def convert(self, value: Any) -> str:
        if value.__class__ is str or isinstance(value, str):
            return value
        raise _expected("a string", value)


class _Integer(Converter):
    """An integer; a bool is not one."""


    def convert(self, value: Any) -> int:
        if value.__class__ is int or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise _expected("an integer", value)


class _Number(Converter):
    """A number, stored as a float (an integer too); a bool or a string is not one."""


    def convert(self, value: Any) -> float:
        if value.__class__ is float:
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _expected("a number", value)
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise _expected("a number", value) from None


class _TextList(Converter):
    """A list of strings, copied."""


    def convert(self, value: Any) -> list[str]:
        value = _list(value)
        if _STR_ONLY.issuperset(map(type, value)):
            return value[:]
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise _at(index, _expected("a string", item))
        return list(value)


class _Object(Converter):
    """A JSON object kept as it is (a shallow copy)."""


    def convert(self, value: Any) -> dict[str, Any]:
        return dict(_object(value))


class _Fallback(Converter):
    """A string that fills its field only where the table's main property for it did not."""

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        text = TEXT.convert(value)
        if fields.get(row.field) is None:
            fields[row.field] = text


TEXT = _Text()
INTEGER = _Integer()
NUMBER = _Number()
TEXT_LIST = _TextList()
OBJECT = _Object()
FALLBACK_TEXT = _Fallback()

_STR_ONLY = frozenset({str})
_STR_OR_NONE = frozenset({str, type(None)})


class _Timestamp(Converter):
    """ISO 8601 -> an aware UTC datetime: `core.model.times.parse_timestamp` ('Z' or an offset,
    the 7th fraction digit truncated; its complaint is named by the walk like any other)."""

    convert = staticmethod(parse_timestamp)  # type: ignore[assignment]


TIMESTAMP = _Timestamp()


class Enum(Converter):
    """Case-insensitive match on Graph's members; unknown values are kept verbatim."""


    def __init__(self, members: Iterable[str], aliases: Mapping[str, str] | None = None) -> None:
        folded = {member.lower(): member for member in members}
        folded.update({alias.lower(): member for alias, member in (aliases or {}).items()})
        self.folded = folded
        # The exact spellings first: most values come spelled as Graph spells them.
        self.exact = {name: folded[name.lower()] for name in (*folded.values(), *(aliases or {}))}

    def convert(self, value: Any) -> str:
        if value.__class__ is str or isinstance(value, str):
            return self.exact.get(value) or self.folded.get(value.lower(), value)
        raise _expected("a string", value)


class ListOf(Converter):
    """A list whose every item goes through `item`."""

    def __init__(self, item: Converter) -> None:
        self.item = item

    def convert(self, value: Any) -> list[Any]:
        value = _list(value)
        out = []
        convert = self.item.convert
        try:
            for element in value:
                out.append(convert(element))
        except _Invalid as error:
            raise _at(len(out), error) from None  # the index of the item that failed
        return out


class _IdText(Converter):
    """A string id; an integer is accepted and written in decimal (MDE-style ids are numbers)."""


    def convert(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return str(value)
            except ValueError:  # beyond Python's int->str digit limit: no real id is
                raise _Invalid("expected a string, got an integer of over 4300 digits") from None
        raise _expected("a string", value)


ID_TEXT = _IdText()


class Nested(Converter):
    """A sub-object: its members go through `table` into `table.model`. Members the table
    does not know stay in the parent's leftovers under the property name, as a sub-object."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        fields[row.field], left = self.table.build(value)
        if left:
            rest[row.graph] = left


class NestedList(Converter):
    """A list of sub-objects. If any item has members the table does not know, the whole
    list stays in the parent's leftovers under the property name."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        value = _list(value)
        items = []
        kept = False
        build = self.table.build
        try:
            for element in value:
                item, left = build(element)
                items.append(item)
                kept = kept or bool(left)
        except _Invalid as error:
            raise _at(len(items), error) from None
        fields[row.field] = items
        if kept:
            rest[row.graph] = value  # kept whole


class Flattened(Converter):
    """A sub-object whose members map onto the parent's own fields (the row's field name is
    unused). Unknown members stay in the leftovers as for `Nested`."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        own = dict(_object(value))
        fields.update(fill(self.table, own))
        if own:
            rest[row.graph] = own


class _EvidenceList(Converter):
    """The alert's evidence: each item into the model of its @odata.type (`EVIDENCE_TABLES`),
    any other type (or none) into OtherEvidence with the whole object in its `extra`."""

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        value = _list(value)
        out: list[EvidenceBase] = []
        try:
            for item in value:
                table = _evidence_table(_object(item))
                if table is None:
                    out.append(_other_evidence(item))
                else:
                    out.append(table.build(item)[0])
        except _Invalid as error:
            raise _at(len(out), error) from None  # the index of the evidence that failed
        fields[row.field] = out


EVIDENCE = _EvidenceList()


# --------------------------------------------------------------------------- tables


class Table:
    """The rows for one JSON object shape, and the model they fill (`model`; a table only
    ever `Flattened` into another needs none). A model with an `extra` field keeps what the
    rows do not know there; a sub-object hands it to its parent instead."""

    def __init__(self, *rows: tuple[str, str, Converter], model: type[msgspec.Struct] | None = None) -> None:
        self.rows = tuple(Row(*row) for row in rows)
        self.model = model
        # For the walk: the plain strings, taken and checked together; then the others, as
        # (property, field, convert, row), `convert` for a plain converter, else the row,
        # whose converter's `put` stores what it makes. (Bound methods spare a lookup.)
        texts = [row for row in self.rows if row.convert is TEXT]
        self.text_properties = tuple(row.graph for row in texts)
        self.text_fields = tuple(row.field for row in texts)
        self.nulls = (None,) * len(texts)
        self.others = tuple((row.graph, row.field, row.convert.convert if row.convert.plain else None, row)
                            for row in self.rows if row.convert is not TEXT)
        self.keeps_extra = model is not None and "extra" in model.__struct_fields__

    def build(self, value: Any) -> tuple[Any, dict[str, Any] | None]:
        """obj -> (model instance, leftovers); leftovers are None where the model keeps them."""
        rest = dict(value if value.__class__ is dict else _object(value))
        fields = fill(self, rest)
        if self.keeps_extra:
            fields["extra"] = rest
            return self.make(fields), None
        return self.make(fields), rest

    def make(self, fields: dict[str, Any]) -> Any:
        """The model, from {field: value}; a field not in `fields` takes its default."""
        return self.model(**fields)  # type: ignore[misc]


def fill(table: Table, rest: dict[str, Any]) -> dict[str, Any]:
    """Take every property `table` knows out of `rest`: {field: value}. What the table does
    not know stays in `rest` (with the leftovers of its sub-objects added)."""
    texts = tuple(map(rest.pop, table.text_properties, table.nulls))
    if not _STR_OR_NONE.issuperset(map(type, texts)):
        _name_the_bad_text(table.text_properties, texts)
    fields = dict(zip(table.text_fields, texts))
    pop = rest.pop
    for graph, field, convert, row in table.others:
        value = pop(graph, None)
        if value is not None:
            try:
                if convert is not None:
                    fields[field] = convert(value)
                else:
                    row.convert.put(value, row, fields, rest)
            except InvalidValue as error:
                raise _at(graph, error if isinstance(error, _Invalid) else _Invalid(str(error))) from None
    return fields


def _name_the_bad_text(properties: tuple[str, ...], values: tuple[Any, ...]) -> None:
    """Raise for the first value that is neither a string nor null (a str subclass passes)."""
    for prop, value in zip(properties, values):
        if value is not None and not isinstance(value, str):
            raise _at(prop, _expected("a string", value))


# Graph's enumerations, in the order of Graph's v1.0 metadata.
ALERT_STATUS = Enum(("unknown", "new", "inProgress", "resolved", "unknownFutureValue"))
ALERT_CLASSIFICATION = Enum(
    ("unknown", "falsePositive", "truePositive", "informationalExpectedActivity", "unknownFutureValue",
     "benignPositive"),  # benignPositive: an older revision of the v1.0 docs still lists it
)
ALERT_DETERMINATION = Enum(
    ("unknown", "apt", "malware", "securityPersonnel", "securityTesting", "unwantedSoftware", "other",
     "multiStagedAttack", "compromisedAccount", "phishing", "maliciousUserActivity", "notMalicious",
     "notEnoughDataToValidate", "confirmedActivity", "lineOfBusinessApplication", "unknownFutureValue"),
    # The docs page's prose uses other names than the metadata for four members; the
    # metadata (SDK) spelling is the wire truth, so the prose names fold onto it.
    aliases={"compromisedUser": "compromisedAccount", "clean": "notMalicious",
             "insufficientData": "notEnoughDataToValidate", "confirmedUserActivity": "confirmedActivity"},
)
SERVICE_SOURCE = Enum(
    ("unknown", "microsoftDefenderForEndpoint", "microsoftDefenderForIdentity", "microsoftDefenderForCloudApps",
     "microsoftDefenderForOffice365", "microsoft365Defender", "azureAdIdentityProtection", "microsoftAppGovernance",
     "dataLossPrevention", "unknownFutureValue", "microsoftDefenderForCloud", "microsoftSentinel",
     "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftSecurityForAI"),
)
DETECTION_SOURCE = Enum(
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
INVESTIGATION_STATE = Enum(
    ("unknown", "terminated", "successfullyRemediated", "benign", "failed", "partiallyRemediated", "running",
     "pendingApproval", "pendingResource", "queued", "innerFailure", "preexistingAlert", "unsupportedOs",
     "unsupportedAlertType", "suppressedAlert", "partiallyInvestigated", "terminatedByUser",
     "terminatedBySystem", "unknownFutureValue"),
)
EVIDENCE_VERDICT = Enum(("unknown", "suspicious", "malicious", "noThreatsFound", "unknownFutureValue"))
EVIDENCE_REMEDIATION_STATUS = Enum(
    ("none", "remediated", "prevented", "blocked", "notFound", "unknownFutureValue", "active", "pendingApproval",
     "declined", "unremediated", "running", "partiallyRemediated"),
)
EVIDENCE_ROLE = Enum(
    ("unknown", "contextual", "scanned", "source", "destination", "created", "added", "compromised", "edited",
     "attacked", "attacker", "commandAndControl", "loaded", "suspicious", "policyViolator", "unknownFutureValue"),
)
DETECTION_STATUS = Enum(("detected", "blocked", "prevented", "unknownFutureValue"))


# Graph's alertSeverity (lower-cased) -> Severity, which `normalise` derives; an unknown
# value (or none) is Severity.unknown. The string as sent is kept in `severity_original`.
_SEVERITIES = {
    "unknown": Severity.unknown,
    "informational": Severity.informational,
    "low": Severity.low,
    "medium": Severity.medium,
    "high": Severity.high,
    "unknownfuturevalue": Severity.unknown,
}


# Complex types shared by several evidence types (Graph's evidence model).
FILE_DETAILS = Table(
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
    model=FileInfo,
)
USER_ACCOUNT = Table(
    ("accountName", "account_name", TEXT),
    ("domainName", "domain", TEXT),
    ("userPrincipalName", "upn", TEXT),
    ("userSid", "sid", TEXT),
    ("azureAdUserId", "aad_user_id", TEXT),
    ("displayName", "display_name", TEXT),
    # activeDirectoryObjectGuid, tenantId, resourceAccessEvents: kept in extra.
    model=UserInfo,
)
LOGGED_ON_USER = Table(
    ("accountName", "account_name", TEXT),
    ("domainName", "domain", TEXT),
    model=UserInfo,
)
GEO_LOCATION = Table(
    ("city", "city", TEXT),
    ("state", "state", TEXT),
    ("countryName", "country_name", TEXT),
    ("latitude", "latitude", NUMBER),
    ("longitude", "longitude", NUMBER),
)
EMAIL_SENDER = Table(
    ("emailAddress", "sender", TEXT),
    ("displayName", "sender_display_name", TEXT),
    # domainName: kept in extra (it is the domain part of emailAddress).
)

# alertEvidence base properties; remediationStatusDetails has no typed field.
# On its own, the table of an evidence type with no typed model (OtherEvidence).
EVIDENCE_BASE = Table(
    ("@odata.type", "odata_type", TEXT),
    ("createdDateTime", "created", TIMESTAMP),
    ("verdict", "verdict", EVIDENCE_VERDICT),
    ("remediationStatus", "remediation_status", EVIDENCE_REMEDIATION_STATUS),
    ("roles", "roles", ListOf(EVIDENCE_ROLE)),
    ("detailedRoles", "detailed_roles", TEXT_LIST),
    ("tags", "tags", TEXT_LIST),
    model=OtherEvidence,
)

DEVICE = Table(
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
    model=DeviceEvidence,
)
USER = Table(
    *EVIDENCE_BASE.rows,
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    # stream: kept in extra.
    model=UserEvidence,
)
FILE = Table(
    *EVIDENCE_BASE.rows,
    ("fileDetails", "file", Nested(FILE_DETAILS)),
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("detectionStatus", "detection_status", DETECTION_STATUS),
    model=FileEvidence,
)
PROCESS = Table(
    *EVIDENCE_BASE.rows,  # createdDateTime -> created, as on every evidence
    ("processId", "pid", INTEGER),
    ("parentProcessId", "parent_pid", INTEGER),
    ("processCommandLine", "command_line", TEXT),
    ("processCreationDateTime", "process_created", TIMESTAMP),
    ("parentProcessCreationDateTime", "parent_created", TIMESTAMP),
    ("imageFile", "image", Nested(FILE_DETAILS)),
    ("parentProcessImageFile", "parent_image", Nested(FILE_DETAILS)),
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    ("mdeDeviceId", "mde_device_id", TEXT),
    ("detectionStatus", "detection_status", DETECTION_STATUS),
    model=ProcessEvidence,
)
IP = Table(
    *EVIDENCE_BASE.rows,
    ("ipAddress", "address", TEXT),
    ("countryLetterCode", "country_code", TEXT),
    ("location", "", Flattened(GEO_LOCATION)),  # city, state, country_name, latitude, longitude
    # stream: kept in extra.
    model=IpEvidence,
)
URL = Table(
    *EVIDENCE_BASE.rows,
    ("url", "url", TEXT),
    model=UrlEvidence,
)
MAILBOX = Table(
    *EVIDENCE_BASE.rows,
    ("primaryAddress", "primary_address", TEXT),
    ("upn", "upn", TEXT),
    ("displayName", "display_name", TEXT),
    ("userAccount", "user", Nested(USER_ACCOUNT)),
    model=MailboxEvidence,
)
ANALYZED_MESSAGE = Table(
    *EVIDENCE_BASE.rows,
    ("networkMessageId", "network_message_id", TEXT),
    ("internetMessageId", "internet_message_id", TEXT),
    ("subject", "subject", TEXT),
    # p1Sender is the envelope (MAIL FROM) sender, the one senderIp belongs to;
    # p2Sender (the From: header) is kept whole in extra.
    ("p1Sender", "", Flattened(EMAIL_SENDER)),  # sender, sender_display_name
    ("recipientEmailAddress", "recipient", TEXT),
    ("senderIp", "sender_ip", TEXT),
    ("receivedDateTime", "received", TIMESTAMP),
    ("deliveryAction", "delivery_action", TEXT),
    ("deliveryLocation", "delivery_location", TEXT),
    ("antiSpamDirection", "direction", TEXT),
    ("urls", "urls", TEXT_LIST),
    ("threats", "threats", TEXT_LIST),
    # p2Sender, attachmentsCount, urlCount, threatDetectionMethods, language, urn: kept in extra.
    model=MailMessageEvidence,
)
CLOUD_APPLICATION = Table(
    *EVIDENCE_BASE.rows,
    # cloudApplicationEvidence.appId is an Int, oauthApplicationEvidence.appId a String:
    # both land in the one string field.
    ("appId", "app_id", ID_TEXT),
    ("displayName", "display_name", TEXT),
    ("instanceName", "instance_name", TEXT),
    ("publisher", "publisher", TEXT),  # oauthApplicationEvidence only
    # instanceId, saasAppId, stream (cloud app), objectId (OAuth app): kept in extra.
    model=CloudApplicationEvidence,
)
REGISTRY = Table(
    *EVIDENCE_BASE.rows,
    ("registryHive", "hive", TEXT),
    ("registryKey", "key", TEXT),
    ("registryValueName", "value_name", TEXT),
    ("registryValue", "value_data", TEXT),
    ("registryValueType", "value_type", TEXT),
    ("mdeDeviceId", "mde_device_id", TEXT),
    model=RegistryEvidence,
)


_NAMESPACE = "#microsoft.graph.security."

# Dispatch on @odata.type. Every type not listed here, including the 36 other types of
# Graph's evidence model and types Graph adds later, becomes OtherEvidence (EVIDENCE_BASE).
EVIDENCE_TABLES: Mapping[str, Table] = {
    f"{_NAMESPACE}{name}": table
    for name, table in (
        ("deviceEvidence", DEVICE),
        ("userEvidence", USER),
        ("fileEvidence", FILE),
        ("processEvidence", PROCESS),
        ("ipEvidence", IP),
        ("urlEvidence", URL),
        ("mailboxEvidence", MAILBOX),
        ("analyzedMessageEvidence", ANALYZED_MESSAGE),
        ("cloudApplicationEvidence", CLOUD_APPLICATION),
        ("oauthApplicationEvidence", CLOUD_APPLICATION),
        ("registryKeyEvidence", REGISTRY),
        ("registryValueEvidence", REGISTRY),
    )
}
_TABLES_FOLDED: Mapping[str, Table] = {name.lower(): table for name, table in EVIDENCE_TABLES.items()}


def _evidence_table(item: dict[str, Any]) -> Table | None:
    """The table of an evidence's @odata.type, in any case; None: no typed model."""
    odata_type = item.get("@odata.type")
    if odata_type.__class__ is not str and not isinstance(odata_type, str):
        return None
    return EVIDENCE_TABLES.get(odata_type) or _TABLES_FOLDED.get(odata_type.lower())


def _other_evidence(item: dict[str, Any]) -> EvidenceBase:
    """OtherEvidence keeps the whole object, base properties included, as the schema says."""
    fields = fill(EVIDENCE_BASE, dict(item))
    if fields["odata_type"] is None:
        fields["odata_type"] = ""  # no @odata.type at all: an untyped evidence
    fields["extra"] = dict(item)
    return EVIDENCE_BASE.make(fields)


COMMENT = Table(
    # The metadata's names win over the names in the incidents docs example, which fill a
    # field only when the metadata's name is absent; both are known, so neither is in extra.
    ("comment", "text", TEXT),
    ("createdByDisplayName", "author", TEXT),
    ("createdBy", "author", FALLBACK_TEXT),
    ("createdTime", "created", TIMESTAMP),
    ("createdDateTime", "created", TIMESTAMP),
    model=Comment,
)

TIMES = Table(
    ("createdDateTime", "created", TIMESTAMP),
    ("lastUpdateDateTime", "last_updated", TIMESTAMP),
    ("firstActivityDateTime", "first_activity", TIMESTAMP),
    ("lastActivityDateTime", "last_activity", TIMESTAMP),
    ("resolvedDateTime", "resolved", TIMESTAMP),
    # and `ingested`, the time the forwarder read the alert
)

# Every alert property Graph documents except tenantId: the alert is filed under the tenant
# that was polled (`tenant`), and Graph's own tenantId is kept in `extra` with anything else
# this table does not know (`@odata.type`, properties Graph adds later).
ALERT = Table(
    ("id", "id", TEXT),
    ("providerAlertId", "provider_alert_id", TEXT),
    ("incidentId", "incident_id", ID_TEXT),  # a number in MDE's API, a string in Graph
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
    ("evidence", "evidence", EVIDENCE),
    model=Alert,
)


# --------------------------------------------------------------------------- entry point


def normalise(raw: dict, tenant: TenantRef, ingested: datetime) -> Alert:
    """One alerts_v2 alert of `tenant`, read at `ingested` -> Alert (with `raw` = `raw`).

    Raises MappingError, and only MappingError, when the alert cannot be normalised.
    """
    if not isinstance(raw, dict):
        raise MappingError(f"alert: expected an object, got {type(raw).__name__}")
    rest = dict(raw)
    try:
        fields = fill(ALERT, rest)
        times = fill(TIMES, rest)
    except _Invalid as error:
        raise MappingError(f"{error.where()}: {error.reason}") from None
    alert_id, last_updated = identity(fields, times, "lastUpdateDateTime")
    return Alert(**fields, source=SOURCE, tenant=tenant, times=AlertTimes(**times, ingested=ingested), extra=rest,
                 version_key=_version_key(raw, tenant.id, alert_id, last_updated), raw=raw,
                 severity=severity_of(fields["severity_original"]))


def identity(fields: dict[str, Any], times: dict[str, Any], time_property: str) -> tuple[str, datetime]:
    """A record's id and version time, as filled from its tables: MappingError naming the
    property when either is missing, or the id is empty or unfit to be one (every source's
    mapping checks the two the same way: dedupe and the version key stand on them)."""
    record_id = fields.get("id")
    if not record_id:
        raise MappingError("id: missing" if record_id is None else "id: empty")
    try:
        check_record_id(record_id)
    except InvalidValue as error:
        raise MappingError(f"id: {error}") from None
    last_updated = times.get("last_updated")
    if last_updated is None:
        raise MappingError(f"{time_property}: missing")
    return record_id, last_updated


def severity_of(original: str | None, table: Mapping[str, Severity] = _SEVERITIES) -> Severity:
    """The Severity of a source's severity text (any case); unknown for none or an unknown one."""
    return table.get(original.lower(), Severity.unknown) if original else Severity.unknown


def _version_key(raw: dict[str, Any], tenant_id: str, alert_id: str, last_updated: datetime) -> str:
    sent = raw["lastUpdateDateTime"]
    if (len(sent) == 28 and sent[27] == "Z" and sent[19] == "." and sent[10] == "T" and sent[7] == "-"
            and sent[4] == "-" and sent[0] != "0"):
        # Graph's own spelling, 'YYYY-MM-DDTHH:MM:SS.fffffffZ' (year 1000 on), parsed above:
        # its first 26 characters are what `version_key` formats (µs truncated), at a fifth
        # of the cost.
        return f"{tenant_id}/{alert_id}/{sent[:26]}Z"
    return version_key(tenant_id, alert_id, last_updated)
