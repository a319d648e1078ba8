"""Alert -> CEF: every line the encoder writes is read back with the strict parser of
`tests/cef_parser.py` (written from the CEF spec, not from the encoder) and compared with
the Alert fields the mapping table names, after the documented text rules (control
characters, trimming, length limits with a marked cut), which this file implements again
on its own. Hypothesis throws `|`, `=`, `\\`, CR, LF, NUL and arbitrary Unicode at every
mapped field."""
from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model.schema import Alert, Severity, TenantRef
from mappings import cef
from mappings.evidence import identities_of, type_name, values_at
from mappings.graph_alerts_v2 import normalise
from tests.cef_parser import KNOWN_KEYS, CefError, CefEvent, parse, parse_bytes
from tests.helpers import shared_sample
from tests.mappings.cef_keys import CEF_KEYS, EVIDENCE_KEYS, numbered, split_key

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."
MARK = "\u2026"

# The limits of the CEF specification's key table, as the docstring documents them.
LIMITS = {
    "externalId": 40, "act": 63, "fileHash": 255,
    **{key: 1023 for key in ("cat", "sourceServiceName", "msg", "dhost", "duser", "fname", "filePath", "request",
                             "flexString1", "flexString2", "cs1", "cs2", "cs3", "cs4", "cs5", "cs6")},
}
HEADER_LIMITS = {"product": 63, "device_version": 31, "signature_id": 1023, "name": 512}
TIME_KEYS = ("rt", "start", "end", "deviceCustomDate1")
LABELS = {"flexString1": "alertWebUrl", "flexString2": "incidentWebUrl", "deviceCustomDate1": "createdDateTime",
          "cs1": "tenantId", "cs2": "customer", "cs3": "alertId", "cs4": "mitreTechniques", "cs5": "incidentId",
          "cs6": "sha256", "c6a2": "Source IPv6 Address", "c6a3": "Destination IPv6 Address"}
CEF_SEVERITY = {"informational": "1", "low": "3", "medium": "5", "high": "8", "critical": "10"}


# --------------------------------------------------------------------------- the documented rules


def _controls(text: str, header: bool) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char == "\t":
            out.append(" ")
        elif char in "\r\n":
            out.append(" " if header else char)
        elif code < 0x20 or 0x7F <= code <= 0x9F or char in "\u2028\u2029" or 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(char)
    return "".join(out)


def cleaned(text: str | None, header: bool = False) -> str:
    """`text` after the control-character and trimming rules, before any cut."""
    return "" if text is None else _controls(text, header).strip(" ")


def stored(text: str | None, limit: int, header: bool = False) -> str:
    """What a reader gets back for `text` under a limit of `limit` UTF-8 bytes ("" = absent)."""
    text = cleaned(text, header)
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len(MARK.encode())].decode("utf-8", "ignore") + MARK


def assert_fitted(value: str, original: str | None, limit: int, header: bool = False) -> None:
    """The length rules as properties: within the limit; a cut value is a marked prefix of the
    cleaned original, as long as the limit allows (only a partial code point dropped)."""
    full = cleaned(original, header)
    assert len(value.encode()) <= limit
    if len(full.encode()) <= limit:
        assert value == full
    else:
        assert value.endswith(MARK), (value[-20:], limit)
        kept = value[: -len(MARK)]
        assert full.startswith(kept)
        assert len(kept.encode()) > limit - len(MARK.encode()) - 4


def ms(moment: datetime | None) -> str | None:
    return None if moment is None else str((moment - EPOCH) // timedelta(milliseconds=1))


def ip_version(text: str | None) -> int:
    try:
        return ipaddress.ip_address(text).version if text and "%" not in text else 0
    except ValueError:
        return 0


def account(user: Any) -> str | None:
    if user is None:
        return None
    if user.upn:
        return user.upn
    if user.account_name and user.domain:
        return f"{user.domain}\\{user.account_name}"
    return user.account_name or None


def full_path(name: str | None, folder: str | None) -> str | None:
    if not folder:
        return name
    if not name:
        return folder
    separator = "\\" if "\\" in folder else "/"
    return folder + name if folder.endswith(separator) else folder + separator + name


def mapped_values(alert: Alert) -> dict[str, Any]:
    """The Alert value (before the text rules) of each extension key, from the docstring table."""
    evidence = alert.evidence
    device = next((e for e in evidence if e.kind == "device"), None)
    user = None
    for e in evidence:
        if e.kind == "user":
            user = account(e.user)
        elif e.kind == "mailbox":
            user = account(e.user) or e.upn or e.primary_address
        if user:
            break
    ip = next((e.address for e in evidence if e.kind == "ip" and e.address), None)
    url = next((e.url for e in evidence if e.kind == "url" and e.url), None)
    info = next((e.file for e in evidence if e.kind == "file"), None) or next(
        (e.image for e in evidence if e.kind == "process" and e.image is not None), None)
    device_ip = None if device is None else device.last_ip or (device.ip_addresses or [None])[0]
    values = {
        "rt": ms(alert.times.last_updated),
        "start": ms(alert.times.first_activity),
        "end": ms(alert.times.last_activity),
        "externalId": alert.id,
        "cat": alert.category or (alert.categories or [None])[0],
        "act": alert.status,
        "sourceServiceName": alert.detection_source,
        "msg": alert.description,
        "dhost": None if device is None else device.fqdn or device.hostname,
        "dst": device_ip if ip_version(device_ip) == 4 else None,
        "c6a3": device_ip if ip_version(device_ip) == 6 else None,
        "duser": user,
        "src": ip if ip_version(ip) == 4 else None,
        "c6a2": ip if ip_version(ip) == 6 else None,
        "fname": info and info.name,
        "filePath": info and full_path(info.name, info.path),
        "fileHash": info and (info.sha1 or info.sha256 or info.md5),
        "request": url,
        "flexString1": alert.alert_web_url,
        "flexString2": alert.incident_web_url,
        "deviceCustomDate1": ms(alert.times.created),
        "cs1": alert.tenant.id,
        "cs2": alert.tenant.label,
        "cs3": alert.id,
        "cs4": ",".join(alert.mitre_techniques),
        "cs5": alert.incident_id,
        "cs6": info and info.sha256,
    }
    return values


def evidence_values(alert: Alert) -> dict[str, str]:
    """The evidence keys as documented: for each evidence, each identity row of its type, each
    value (text as is, numbers in decimal, anything else left out) not already written under
    that key, after the text rules (String 1023), under `ms<type><property>` numbered N2..."""
    out: dict[str, str] = {}
    written: dict[str, list[str]] = {}
    for item in alert.evidence:
        name = type_name(item)
        for row in identities_of(item):
            key = next(k for k, (t, r) in EVIDENCE_KEYS.items() if t.lower() == name.lower() and r == row)
            for value in values_at(item, row.common):
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    continue
                text = str(value)
                done = written.setdefault(key, [])
                if text in done or not stored(text, 1023):
                    continue
                done.append(text)
                out[numbered(key, len(done))] = stored(text, 1023)
    return out


def expected_extension(alert: Alert) -> dict[str, str]:
    out = {}
    for key, value in mapped_values(alert).items():
        if key in LIMITS:
            value = stored(value, LIMITS[key]) or None
        if value:
            if key in LABELS:
                out[f"{key}Label"] = LABELS[key]
            out[key] = value
    return out | evidence_values(alert)


def expected_header(alert: Alert) -> dict[str, str]:
    originals = header_originals(alert)
    return {
        "product": stored(originals["product"], 63, header=True) or "Microsoft Defender",
        "device_version": "alerts_v2",
        "signature_id": stored(originals["signature_id"], 1023, header=True) or "alert",
        "name": stored(originals["name"], 512, header=True) or "Microsoft Defender alert",
        "severity": CEF_SEVERITY.get(alert.severity.name, "0"),
    }


def header_originals(alert: Alert) -> dict[str, str | None]:
    return {
        "product": cef.PRODUCTS.get(alert.service_source or "") or alert.product_name or alert.service_source,
        "signature_id": alert.detector_id or alert.alert_policy_id or alert.category,
        "name": alert.title,
    }


def check_line(alert: Alert) -> CefEvent:
    """Encode, check the wire form, parse strictly, compare with the mapping; the event."""
    data = cef.encode(alert)
    assert isinstance(data, bytes)
    assert b"\n" not in data and b"\r" not in data and b"\x00" not in data
    text = data.decode("utf-8")  # strict: never a cut UTF-8 sequence or a lone surrogate
    assert len(text.splitlines()) == 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text)
    event = parse_bytes(data, known_keys=CEF_KEYS)
    assert (event.version, event.vendor) == (0, "Microsoft")
    assert {"product": event.product, "device_version": event.device_version, "signature_id": event.signature_id,
            "name": event.name, "severity": event.severity} == expected_header(alert)
    for field, original in header_originals(alert).items():
        if cleaned(original, header=True):
            assert_fitted(getattr(event, field), original, HEADER_LIMITS[field], header=True)
    assert event.extension == expected_extension(alert)
    order = [row.key for row in cef.EXTENSION]
    keys = [key for key in event.extension if not key.endswith("Label")]
    table_keys = [key for key in keys if split_key(key) is None]
    evidence_keys = keys[len(table_keys):]
    assert evidence_keys == list(evidence_values(alert))  # last, in evidence, row and value order
    assert table_keys == sorted(table_keys, key=order.index)  # the table's order
    for key, value in event.extension.items():
        if key in LIMITS:
            assert_fitted(value, mapped_values(alert)[key], LIMITS[key])
        elif split_key(key):
            assert len(value.encode()) <= 1023
        elif key in TIME_KEYS:
            assert value.isdigit()
    assert cef.encode(alert) == data  # deterministic
    return event


# --------------------------------------------------------------------------- inputs


def _alert(**properties: Any) -> Alert:
    raw = {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", **properties}
    return normalise(raw, TENANT, INGESTED)


def _sample_alerts() -> list[dict[str, Any]]:
    alerts = list(shared_sample("graph_alerts_v2_list_docs.json")["value"])
    alerts.append(shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json"))
    for incident in shared_sample("graph_incidents_expand_alerts_docs.json")["value"]:
        alerts.extend(incident.get("alerts") or [])
    return alerts


# --------------------------------------------------------------------------- the table


def test_docstring_carries_the_table() -> None:
    assert cef.markdown_table() in cef.__doc__
    for row in cef.EXTENSION:  # the encoder's limits are the spec's
        if row.key in LIMITS:
            assert row.limit == LIMITS[row.key], row.key
        assert (row.label or None) == LABELS.get(row.key), row.key
    assert {row.key for row in cef.EXTENSION} == set(LIMITS) | set(TIME_KEYS) | {"dst", "src", "c6a2", "c6a3"}


# --------------------------------------------------------------------------- factory and samples


@pytest.mark.parametrize("seed", [1, 7])
def test_factory_alerts_round_trip(seed: int) -> None:
    factory = pytest.importorskip("tests.peers.alert_factory")
    raws = factory.make_alerts(150, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3), seed=seed)
    seen: set[str] = set()
    for raw in raws:
        event = check_line(normalise(raw, TENANT, INGESTED))
        seen.update(event.extension)
    # Every key has something to say for real-looking data (IPv6 only where the data has it).
    assert seen >= {"rt", "start", "end", "externalId", "cat", "act", "sourceServiceName", "msg", "dhost", "dst",
                    "duser", "src", "fname", "filePath", "fileHash", "request", "flexString1", "flexString2",
                    "deviceCustomDate1", "cs1", "cs2", "cs3", "cs4", "cs5", "cs6"}


def test_sample_alerts_round_trip() -> None:
    for raw in _sample_alerts():
        check_line(normalise(raw, TENANT, INGESTED))


def test_powershell_sample_values() -> None:
    raw = shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json")
    line = cef.encode(normalise(raw, TENANT, INGESTED)).decode()
    assert line.startswith("CEF:0|Microsoft|Microsoft Defender for Endpoint|alerts_v2|"
                           "7f1c3609-a3ff-40e2-995b-c01770161d68|Suspicious PowerShell command line|5|rt=1697795647503 ")
    assert "?tid\\=3adb963c" in line  # `=` escaped in the URL
    assert "msg=A suspicious PowerShell activity was observed on the machine. \\nThis behavior" in line
    ext = parse(line).extension
    assert ext["externalId"] == ext["cs3"] == "daefa1828b-dd4e-405c-8a3b-aa28596830dd_1"  # exactly 40
    assert ext["start"] == "1697795499515" and ext["end"] == "1697795501993"
    assert ext["deviceCustomDate1"] == "1697795589883"
    assert ext["dhost"] == "clw555test" and ext["dst"] == "192.168.5.65"
    assert ext["duser"] == "AzureAD\\CDPUserIS-38411"
    assert ext["src"] == "127.0.0.1" and ext["request"] == "http://127.0.0.1/1.exe"
    assert ext["fname"] == "powershell.exe"
    assert ext["filePath"] == "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
    assert ext["fileHash"] == "a72c41316307889e43fe8605a0dca4a72e72a011"
    assert ext["cs6"] == "d783ba6567faf10fdff2d0ea3864f6756862d6c733c7f4467283da81aedc3a80"
    assert (ext["cs1"], ext["cs2"], ext["cs4"], ext["cs5"]) == (TENANT.id, "contoso", "T1059.001", "23")
    assert (ext["cat"], ext["act"], ext["sourceServiceName"]) == ("Execution", "new", "microsoftDefenderForEndpoint")


# --------------------------------------------------------------------------- chosen behaviour


@pytest.mark.parametrize(("severity", "expected"), [
    (Severity.unknown, "0"), (Severity.informational, "1"), (Severity.low, "3"), (Severity.medium, "5"),
    (Severity.high, "8"), (Severity.critical, "10"),
])
def test_severity(severity: Severity, expected: str) -> None:
    alert = msgspec.structs.replace(_alert(), severity=severity)
    assert parse(cef.encode(alert).decode()).severity == expected


@pytest.mark.parametrize(("sent", "expected"), [("Medium", "5"), ("unknownFutureValue", "0"), ("catastrophic", "0"),
                                                (None, "0")])
def test_severity_as_graph_sends_it(sent: str | None, expected: str) -> None:
    assert parse(cef.encode(_alert(severity=sent)).decode()).severity == expected


def test_header_escapes_and_newlines() -> None:
    alert = _alert(title="a|b\\c\r\nd=e\x00f\tg", detectorId="x|y", serviceSource="newThing", productName="P|Q")
    line = cef.encode(alert).decode()
    assert line.startswith("CEF:0|Microsoft|P\\|Q|alerts_v2|x\\|y|a\\|b\\\\c  d=e\ufffdf g|0|")
    event = check_line(alert)
    assert (event.product, event.signature_id, event.name) == ("P|Q", "x|y", "a|b\\c  d=e\ufffdf g")


def test_header_defaults() -> None:
    event = check_line(_alert(title="  ", serviceSource="brandNewService"))
    assert (event.product, event.signature_id, event.name) == ("brandNewService", "alert", "Microsoft Defender alert")
    event = check_line(_alert(category="Execution"))
    assert (event.product, event.signature_id) == ("Microsoft Defender", "Execution")


def test_extension_escapes() -> None:
    alert = _alert(description=" a=b \\ c\nd\re|f \x00 g\u2028h ", category="x y=z")
    line = cef.encode(alert).decode()
    assert " msg=a\\=b \\\\ c\\nd\\re|f \ufffd g\ufffdh " in line
    assert " cat=x y\\=z " in line
    assert parse(line).extension["msg"] == "a=b \\ c\nd\re|f \ufffd g\ufffdh"


def test_truncation_is_marked_and_within_limits() -> None:
    long_id = "da" + "7" * 60
    alert = _alert(id=long_id, description="é" * 2000, status="x" * 100, title="😀" * 300)
    event = check_line(alert)
    ext = event.extension
    assert ext["externalId"] == long_id[:37] + MARK and len(ext["externalId"].encode()) == 40
    assert ext["cs3"] == long_id  # the whole id
    assert ext["msg"] == "é" * 510 + MARK  # 1020 bytes of 2-byte characters, then the marker
    assert ext["act"] == "x" * 60 + MARK
    assert event.name == "😀" * 127 + MARK  # 508 bytes (4 each) + 3 = 511 <= 512


def test_truncation_never_splits_an_escape() -> None:
    # The cut lands where a `\` and a `=` sit: escaping after the cut keeps both whole.
    alert = _alert(description="\\" * 600 + "=" * 600)
    event = check_line(alert)
    assert event.extension["msg"] == "\\" * 600 + "=" * 420 + MARK


def test_ipv6_goes_to_the_ipv6_fields() -> None:
    alert = _alert(evidence=[
        {"@odata.type": NS + "deviceEvidence", "deviceDnsName": "h1", "ipInterfaces": ["2001:db8::5", "10.0.0.1"]},
        {"@odata.type": NS + "ipEvidence", "ipAddress": "2001:db8::99"},
    ])
    ext = check_line(alert).extension
    assert ext["c6a3"] == "2001:db8::5" and ext["c6a3Label"] == "Destination IPv6 Address"
    assert ext["c6a2"] == "2001:db8::99" and ext["c6a2Label"] == "Source IPv6 Address"
    assert "dst" not in ext and "src" not in ext


@pytest.mark.parametrize("address", ["not an ip = 1", "fe80::1%x y=z", "fe80::1%eth0", "010.1.1.1", "1.1.1.1 "])
def test_a_value_that_is_no_address_is_left_out(address: str) -> None:
    alert = _alert(evidence=[{"@odata.type": NS + "ipEvidence", "ipAddress": address}])
    ext = check_line(alert).extension
    assert not {"src", "c6a2", "c6a2Label"} & set(ext)


def test_absent_values_leave_keys_and_labels_out() -> None:
    ext = check_line(_alert()).extension
    assert set(ext) == {"rt", "externalId", "cs1Label", "cs1", "cs2Label", "cs2", "cs3Label", "cs3"}


def test_evidence_picks() -> None:
    alert = _alert(evidence=[
        {"@odata.type": NS + "userEvidence", "userAccount": {"userSid": "S-1-5-18"}},  # no name: skipped
        {"@odata.type": NS + "mailboxEvidence", "primaryAddress": "ann@contoso.test"},
        {"@odata.type": NS + "userEvidence", "userAccount": {"userPrincipalName": "bob@contoso.test"}},
        {"@odata.type": NS + "processEvidence", "imageFile": {"fileName": "a.exe", "filePath": "/usr/bin"}},
        {"@odata.type": NS + "fileEvidence", "fileDetails": {"fileName": "b.dll", "filePath": "C:\\x\\",
                                                              "sha256": "ab" * 32, "md5": "cd" * 16}},
    ])
    ext = check_line(alert).extension
    assert ext["duser"] == "ann@contoso.test"
    assert (ext["fname"], ext["filePath"], ext["fileHash"], ext["cs6"]) == ("b.dll", "C:\\x\\b.dll", "ab" * 32,
                                                                          "ab" * 32)
    alert = _alert(evidence=[{"@odata.type": NS + "processEvidence",
                              "imageFile": {"fileName": "a.exe", "filePath": "/usr/bin", "md5": "ef" * 16}}])
    ext = check_line(alert).extension
    assert (ext["fname"], ext["filePath"], ext["fileHash"]) == ("a.exe", "/usr/bin/a.exe", "ef" * 16)


# --------------------------------------------------------------------------- hostile input

_SPECIAL = ["|", "=", "\\", "\r", "\n", "\x00", "\t", " ", "\u2028", "\u0085", "\x7f", "\x1b", "\ud800", "é", "€",
            "😀", "\u0301", "\ufeff", " k=", "\\n"]
_PIECE = st.one_of(st.characters(), st.sampled_from(_SPECIAL))
_SHORT = st.lists(_PIECE, max_size=16).map("".join)
_LONG = st.builds(lambda part, times: part * times, st.lists(_PIECE, min_size=1, max_size=4).map("".join),
                  st.integers(5, 700))
TEXT = st.one_of(_SHORT, _SHORT, _LONG)


def _usable_id(text: str) -> bool:
    """What the mapping takes as an id (a blank one or a lone surrogate is a dead letter)."""
    return bool(text) and not text.isspace() and text.encode("utf-8", "surrogatepass") == text.encode(
        "utf-8", "replace")
MAYBE = st.one_of(st.none(), TEXT)
ADDRESS = st.one_of(st.ip_addresses().map(str), TEXT,
                    st.builds(lambda ip, zone: f"{ip}%{zone}", st.ip_addresses(v=6).map(str), TEXT))


def _user_account() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={"accountName": MAYBE, "domainName": MAYBE,
                                               "userPrincipalName": MAYBE})


def _file_details() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={"fileName": MAYBE, "filePath": MAYBE, "sha1": MAYBE,
                                               "sha256": MAYBE, "md5": MAYBE})


EVIDENCE = st.one_of(
    st.fixed_dictionaries({"@odata.type": st.just(NS + "deviceEvidence")},
                          optional={"deviceDnsName": MAYBE, "hostName": MAYBE, "lastIpAddress": ADDRESS,
                                    "ipInterfaces": st.lists(ADDRESS, max_size=3)}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "userEvidence"), "userAccount": _user_account()}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "mailboxEvidence")},
                          optional={"primaryAddress": MAYBE, "upn": MAYBE, "userAccount": _user_account()}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "fileEvidence"), "fileDetails": _file_details()}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "processEvidence")}, optional={"imageFile": _file_details()}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "urlEvidence")}, optional={"url": MAYBE}),
    st.fixed_dictionaries({"@odata.type": st.just(NS + "ipEvidence")}, optional={"ipAddress": ADDRESS}),
)


@st.composite
def hostile_alerts(draw: st.DrawFn) -> Alert:
    raw = draw(st.fixed_dictionaries(
        {"id": TEXT.filter(_usable_id), "lastUpdateDateTime": st.just("2026-11-29T10:00:00.1234567Z")},
        optional={
            "title": MAYBE, "description": MAYBE, "category": MAYBE, "categories": st.lists(TEXT, max_size=2),
            "status": MAYBE, "detectionSource": MAYBE, "productName": MAYBE, "detectorId": MAYBE,
            "alertPolicyId": MAYBE, "incidentId": MAYBE, "alertWebUrl": MAYBE, "incidentWebUrl": MAYBE,
            "mitreTechniques": st.lists(TEXT, max_size=4),
            "serviceSource": st.one_of(st.sampled_from(sorted(cef.PRODUCTS)), MAYBE),
            "severity": st.one_of(st.sampled_from(["informational", "low", "medium", "high", "critical"]), MAYBE),
            "createdDateTime": st.just("2026-11-29T09:00:00.5Z"),
            "firstActivityDateTime": st.just("1970-01-01T00:00:00Z"),
            "evidence": st.lists(EVIDENCE, max_size=5),
        },
    ))
    tenant = TenantRef(id=draw(TEXT), label=draw(TEXT))
    return normalise(raw, tenant, INGESTED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_alerts())
def test_hostile_text_in_every_field(alert: Alert) -> None:
    check_line(alert)


# --------------------------------------------------------------------------- the parser can fail

GOOD = "CEF:0|security|threatmanager|1.0|100|worm successfully stopped|10|src=10.0.0.1 dst=2.1.2.2 spt=1232"


@pytest.mark.parametrize("line", [
    GOOD,
    "CEF:0|security|threatmanager|1.0|100|detected a \\| in message|10|src=10.0.0.1 act=blocked a | dst=1.1.1.1",
    "CEF:0|security|threatmanager|1.0|100|detected a \\\\ in packet|10|src=10.0.0.1 act=blocked a \\\\ dst=1.1.1.1",
    "CEF:0|security|threatmanager|1.0|100|detected a = in message|10|src=10.0.0.1 act=blocked a \\= dst=1.1.1.1",
    "CEF:0|security|threatmanager|1.0|100|multi-line|Very-High|msg=Detected a threat.\\n No action needed.",
    "CEF:1|v|p|1|id|name|0|",
])
def test_parser_accepts_the_spec_examples(line: str) -> None:
    parse(line)


def test_parser_unescapes() -> None:
    event = parse("CEF:0|a\\|b|c\\\\d|1|id|n|5|msg=x\\=y \\\\z\\nw\\r cs1Label=l cs1=v")
    assert (event.vendor, event.product) == ("a|b", "c\\d")
    assert event.extension == {"msg": "x=y \\z\nw\r", "cs1Label": "l", "cs1": "v"}


@pytest.mark.parametrize(("line", "complaint"), [
    (GOOD.replace("stopped", "stopped\n"), "raw LF"),
    (GOOD + "\r", "raw CR"),
    (GOOD.replace("1232", "12\x0032"), "raw NUL"),
    ("LEEF:0|a|b|c|d|e|1|", "CEF:"),
    ("CEF:0|a|b|c|d|e", "unescaped '|'"),
    ("CEF:0|a|b|c|d|e|f|g|h|x=1", "severity"),  # a pipe too many in the header
    ("CEF:0|a|b|c|d|e\\n|1|x=1", "invalid header escape"),
    ("CEF:0|a|b|c|d|e|11|x=1", "severity"),
    ("CEF:2|a|b|c|d|e|1|x=1", "version"),
    ("CEF:0||b|c|d|e|1|x=1", "empty vendor"),
    ("CEF:0|a|b|c|d|e|1|src=1.1.1.1 msg=a=b", "unescaped '='"),
    ("CEF:0|a|b|c|d|e|1|msg=a\\tb", "invalid extension escape"),
    ("CEF:0|a|b|c|d|e|1|msg=a\\|b", "invalid extension escape"),
    ("CEF:0|a|b|c|d|e|1|msg=ab\\", "invalid extension escape"),
    ("CEF:0|a|b|c|d|e|1|x=1 x=2", "duplicate key"),
    ("CEF:0|a|b|c|d|e|1|x-y=1", "invalid key"),
    ("CEF:0|a|b|c|d|e|1| x=1", "invalid key"),
    ("CEF:0|a|b|c|d|e|1|x=1 ", "ends with a space"),
    ("CEF:0|a|b|c|d|e|1|x=1  y=2", "ends with a space"),
    ("CEF:0|a|b|c|d|e|1|x= a y=2", "begins or ends"),
    ("CEF:0|a|b|c|d|e|1|x=", "empty value"),
    ("CEF:0|a|b|c|d|e|1|just text", "no key=value"),
    ("CEF:0|a|b|c|d|e|1|cs1Label=tenant", "cs1Label without cs1"),
    ("CEF:0|a|b|c|d|e|1|cs2=v", "cs2 without cs2Label"),
])
def test_parser_rejects(line: str, complaint: str) -> None:
    with pytest.raises(CefError, match=complaint.replace("|", "\\|")):
        parse(line)


def test_parser_rejects_unknown_keys_and_bad_utf8() -> None:
    with pytest.raises(CefError, match="unknown keys"):
        parse("CEF:0|a|b|c|d|e|1|madeUpKey=1", known_keys=KNOWN_KEYS)
    with pytest.raises(CefError, match="not UTF-8"):
        parse_bytes(b"CEF:0|a|b|c|d|e|1|msg=\xe2\x80")
