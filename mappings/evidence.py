"""What identifies each evidence type: the values an analyst pivots on (ids, names, addresses,
hashes, URLs, command lines, registry keys and values, resource ids), per Graph evidence type,
and where each sits in the common schema. Every output format reads an evidence's identity
through this one table, so that no format forgets one; `tests/mappings/test_official_schema.py`
checks it against Microsoft's metadata (every type named, every path resolving to what Graph
sent).

A row names the Graph property path (`a.b`; `a[]` is every item of list `a`), the path of the
same value in the common-schema evidence (`core.model.schema`: the typed fields of the eleven
typed kinds; for every other type, the Graph object kept whole in `extra`), and what the
value is (`KINDS`), which decides where a format puts it (an address goes to the IP fields,
a hash to the hash fields, ...).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.model.schema import EvidenceBase

NAMESPACE = "#microsoft.graph.security."

# What an identifying value is. The formats route on it (e.g. ECS related.ip / related.hosts /
# related.user / related.hash).
KINDS = ("id", "name", "host", "ip", "mac", "port", "user", "email", "hash", "url", "command", "registry",
         "domain", "resource")


@dataclass(frozen=True)
class Identity:
    graph: str  # the property path in Graph's evidence object
    common: str  # the path in the common-schema evidence
    kind: str  # one of KINDS

    @property
    def name(self) -> str:
        """The Graph path as one camelCase word (`imageFile.sha256` -> `imageFileSha256`):
        the last part of a format's key for it."""
        parts = self.graph.replace("[]", "").split(".")
        return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _other(*rows: tuple[str, str]) -> tuple[Identity, ...]:
    """Rows of a type with no typed model: its Graph object is the evidence's `extra`."""
    return tuple(Identity(graph, "extra." + graph, kind) for graph, kind in rows)


def _typed(*rows: tuple[str, str, str]) -> tuple[Identity, ...]:
    return tuple(Identity(graph, common, kind) for graph, common, kind in rows)


_REGISTRY_KEY = (("registryHive", "hive", "registry"), ("registryKey", "key", "registry"))

IDENTITIES: dict[str, tuple[Identity, ...]] = {
    # ---- the typed kinds (core.model.schema) --------------------------------------------
    "deviceEvidence": _typed(
        ("mdeDeviceId", "mde_device_id", "id"),
        ("azureAdDeviceId", "aad_device_id", "id"),
        ("deviceDnsName", "fqdn", "host"),
        ("hostName", "hostname", "host"),
        ("lastIpAddress", "last_ip", "ip"),
        ("lastExternalIpAddress", "last_external_ip", "ip"),
        ("ipInterfaces[]", "ip_addresses[]", "ip"),
        ("loggedOnUsers[].accountName", "logged_on_users[].account_name", "user"),
        ("vmMetadata.resourceId", "extra.vmMetadata.resourceId", "resource"),
        ("vmMetadata.vmId", "extra.vmMetadata.vmId", "id"),
    ),
    "userEvidence": _typed(
        ("userAccount.userPrincipalName", "user.upn", "user"),
        ("userAccount.accountName", "user.account_name", "user"),
        ("userAccount.userSid", "user.sid", "id"),
        ("userAccount.azureAdUserId", "user.aad_user_id", "id"),
    ),
    "fileEvidence": _typed(
        ("fileDetails.fileName", "file.name", "name"),
        ("fileDetails.filePath", "file.path", "name"),
        ("fileDetails.sha1", "file.sha1", "hash"),
        ("fileDetails.sha256", "file.sha256", "hash"),
        ("fileDetails.md5", "file.md5", "hash"),
        ("mdeDeviceId", "mde_device_id", "id"),
    ),
    "processEvidence": _typed(
        ("processId", "pid", "id"),
        ("processCommandLine", "command_line", "command"),
        ("imageFile.fileName", "image.name", "name"),
        ("imageFile.filePath", "image.path", "name"),
        ("imageFile.sha1", "image.sha1", "hash"),
        ("imageFile.sha256", "image.sha256", "hash"),
        ("parentProcessId", "parent_pid", "id"),
        ("parentProcessImageFile.fileName", "parent_image.name", "name"),
        ("userAccount.accountName", "user.account_name", "user"),
        ("mdeDeviceId", "mde_device_id", "id"),
    ),
    "ipEvidence": _typed(("ipAddress", "address", "ip")),
    "urlEvidence": _typed(("url", "url", "url")),
    "mailboxEvidence": _typed(
        ("primaryAddress", "primary_address", "email"),
        ("upn", "upn", "user"),
    ),
    "analyzedMessageEvidence": _typed(
        ("networkMessageId", "network_message_id", "id"),
        ("internetMessageId", "internet_message_id", "id"),
        ("p1Sender.emailAddress", "sender", "email"),
        ("p2Sender.emailAddress", "extra.p2Sender.emailAddress", "email"),
        ("recipientEmailAddress", "recipient", "email"),
        ("senderIp", "sender_ip", "ip"),
        ("urls[]", "urls[]", "url"),
    ),
    "cloudApplicationEvidence": _typed(
        ("appId", "app_id", "id"),
        ("displayName", "display_name", "name"),
        ("instanceId", "extra.instanceId", "id"),
        ("instanceName", "instance_name", "name"),
        ("saasAppId", "extra.saasAppId", "id"),
    ),
    "oauthApplicationEvidence": _typed(
        ("appId", "app_id", "id"),
        ("objectId", "extra.objectId", "id"),
        ("displayName", "display_name", "name"),
    ),
    "registryKeyEvidence": _typed(*_REGISTRY_KEY),
    "registryValueEvidence": _typed(
        *_REGISTRY_KEY,
        ("registryValueName", "value_name", "registry"),
        ("registryValue", "value_data", "registry"),
        ("mdeDeviceId", "mde_device_id", "id"),
    ),
    # ---- every other type: its Graph object is in `extra` -------------------------------
    "activeDirectoryDomainEvidence": _other(
        ("activeDirectoryDomainName", "domain"), ("trustedDomains[].activeDirectoryDomainName", "domain")),
    "aiAgentEvidence": _other(("agentId", "id"), ("agentName", "name")),
    "amazonResourceEvidence": _other(
        ("amazonAccountId", "id"), ("amazonResourceId", "resource"), ("resourceName", "name")),
    "azureResourceEvidence": _other(("resourceId", "resource"), ("resourceName", "name")),
    "blobContainerEvidence": _other(("name", "name"), ("url", "url"), ("storageResource.resourceId", "resource")),
    "blobEvidence": _other(("name", "name"), ("url", "url"), ("fileHashes[].value", "hash")),
    "cloudLogonRequestEvidence": _other(("requestId", "id")),
    "cloudLogonSessionEvidence": _other(
        ("sessionId", "id"), ("deviceName", "host"), ("account.userAccount.userPrincipalName", "user")),
    "containerEvidence": _other(
        ("containerId", "id"), ("name", "name"), ("image.imageId", "id"), ("pod.name", "name")),
    "containerImageEvidence": _other(
        ("imageId", "id"), ("digestImage.imageId", "id"), ("registry.registry", "name")),
    "containerRegistryEvidence": _other(("registry", "name")),
    "dnsEvidence": _other(
        ("domainName", "domain"), ("dnsServerIp.ipAddress", "ip"), ("hostIpAddress.ipAddress", "ip"),
        ("ipAddresses[].ipAddress", "ip")),
    "fileHashEvidence": _other(("value", "hash")),
    "gitHubOrganizationEvidence": _other(
        ("orgId", "id"), ("login", "user"), ("displayName", "name"), ("email", "email"), ("webUrl", "url")),
    "gitHubRepoEvidence": _other(("repoId", "id"), ("baseUrl", "url"), ("login", "user"), ("owner", "user")),
    "gitHubUserEvidence": _other(
        ("userId", "id"), ("login", "user"), ("name", "name"), ("email", "email"), ("webUrl", "url")),
    "googleCloudResourceEvidence": _other(
        ("fullResourceName", "resource"), ("projectId", "id"), ("projectNumber", "id"), ("resourceName", "name")),
    "hostLogonSessionEvidence": _other(
        ("sessionId", "id"), ("account.userAccount.userPrincipalName", "user"), ("host.mdeDeviceId", "id"),
        ("host.deviceDnsName", "host")),
    "ioTDeviceEvidence": _other(
        ("deviceId", "id"), ("deviceName", "host"), ("macAddress", "mac"), ("ipAddress.ipAddress", "ip"),
        ("serialNumber", "id"), ("ioTSecurityAgentId", "id"), ("ioTHub.resourceId", "resource")),
    "kubernetesClusterEvidence": _other(("name", "name"), ("cloudResource.resourceId", "resource")),
    "kubernetesControllerEvidence": _other(("name", "name"), ("namespace.name", "name")),
    "kubernetesNamespaceEvidence": _other(("name", "name"), ("cluster.name", "name")),
    "kubernetesPodEvidence": _other(("name", "name"), ("namespace.name", "name"), ("podIp.ipAddress", "ip")),
    "kubernetesSecretEvidence": _other(("name", "name"), ("namespace.name", "name")),
    "kubernetesServiceAccountEvidence": _other(("name", "name"), ("namespace.name", "name")),
    "kubernetesServiceEvidence": _other(
        ("name", "name"), ("namespace.name", "name"), ("clusterIP.ipAddress", "ip"),
        ("externalIPs[].ipAddress", "ip")),
    "mailClusterEvidence": _other(("urn", "id"), ("networkMessageIds[]", "id"), ("clusterByValue", "name")),
    "mailboxConfigurationEvidence": _other(
        ("configurationId", "id"), ("externalDirectoryObjectId", "id"), ("mailboxPrimaryAddress", "email"),
        ("upn", "user")),
    "malwareEvidence": _other(("name", "name"), ("files[].fileDetails.sha256", "hash")),
    "networkConnectionEvidence": _other(
        ("sourceAddress.ipAddress", "ip"), ("sourcePort", "port"), ("destinationAddress.ipAddress", "ip"),
        ("destinationPort", "port")),
    "nicEvidence": _other(("macAddress", "mac"), ("ipAddress.ipAddress", "ip")),
    "sasTokenEvidence": _other(
        ("signatureHash", "hash"), ("storageResource.resourceId", "resource"), ("allowedIpAddresses", "ip")),
    "securityGroupEvidence": _other(
        ("securityGroupId", "id"), ("activeDirectoryObjectGuid", "id"), ("sid", "id"),
        ("distinguishedName", "name"), ("displayName", "name")),
    "servicePrincipalEvidence": _other(
        ("servicePrincipalObjectId", "id"), ("appId", "id"), ("servicePrincipalName", "name"), ("tenantId", "id"),
        ("appOwnerTenantId", "id")),
    "submissionMailEvidence": _other(
        ("submissionId", "id"), ("networkMessageId", "id"), ("sender", "email"), ("recipient", "email"),
        ("senderIp", "ip"), ("submitter", "email")),
    "teamsMessageEvidence": _other(
        ("messageId", "id"), ("threadId", "id"), ("channelId", "id"), ("groupId", "id"),
        ("senderFromAddress", "email"), ("senderIP", "ip"), ("recipients[]", "email"), ("urls[].url", "url")),
}
_FOLDED = {name.lower(): rows for name, rows in IDENTITIES.items()}


def type_name(evidence: EvidenceBase) -> str:
    """`deviceEvidence` of `#microsoft.graph.security.deviceEvidence` (any case of the prefix)."""
    odata_type = evidence.odata_type
    return odata_type[len(NAMESPACE):] if odata_type[:len(NAMESPACE)].lower() == NAMESPACE.lower() else odata_type


def identities_of(evidence: EvidenceBase) -> tuple[Identity, ...]:
    """The identity rows of an evidence's type; none for a type the table does not know."""
    return _FOLDED.get(type_name(evidence).lower(), ())


def values_at(item: Any, path: str) -> list[Any]:
    """The values at `path` of a common-schema evidence (struct attributes, then the dicts of
    `extra`): `a[]` steps into every item of list `a`; absent, None and "" values are skipped."""
    return values_along(item, path_steps(path))


def path_steps(path: str) -> tuple[tuple[str, bool], ...]:
    """`path` as steps for `values_along`: (name, whether it steps into every item of a list).
    A format that reads the same paths for every alert splits them once."""
    return tuple((part[:-2], True) if part.endswith("[]") else (part, False) for part in path.split("."))


def plain_names(steps: tuple[tuple[str, bool], ...]) -> tuple[str, ...] | None:
    """The names of a path with no `[]` step (at most one value: a format walks it inline,
    `getattr` / `dict.get` per name, None or "" meaning none); None for a path with one."""
    return None if any(many for _, many in steps) else tuple(name for name, _ in steps)


def plain_value(item: Any, names: tuple[str, ...]) -> Any:
    """The one value at a path with no `[]` step (`plain_names`), or None; "" counts as none."""
    value = getattr(item, names[0], None)  # an evidence is a struct
    for name in names[1:]:
        if value is None:
            return None
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return None if value == "" else value


def values_along(item: Any, steps: tuple[tuple[str, bool], ...]) -> list[Any]:
    """`values_at` with the path already split by `path_steps`."""
    found = [item]
    for name, many in steps:
        step: list[Any] = []
        for value in found:
            got = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
            if got is None or got == "":
                continue
            if many and isinstance(got, list):
                step.extend(v for v in got if v is not None and v != "")
            else:
                step.append(got)
        if not step:
            return step
        found = step
    return found


def identity_values(evidence: EvidenceBase) -> Iterator[tuple[Identity, list[Any]]]:
    """(row, its values) for every identity row of the evidence's type that has a value."""
    for row in identities_of(evidence):
        found = values_at(evidence, row.common)
        if found:
            yield row, found
