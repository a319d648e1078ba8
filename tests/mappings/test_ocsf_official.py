"""OCSF lines against the official OCSF 1.8.0 schema, for every Graph evidence type.

The alerts are generated from Microsoft's Graph v1.0 metadata (`official_alerts`): one per
evidence type with every property filled (plain and with hostile text), and one per member of
every enum. Each is normalised and encoded as the forwarder does, then:

- validated against the JSON Schema of the Detection Finding class, with the profiles the line
  declares in `metadata.profiles`, that PyPI `ocsf-json-schema` generates from the OCSF 1.8.0
  export it ships (objects closed, required attributes, at_least_one / just_one constraints,
  enum ids, typed-string patterns such as ip_t, email_t, mac_t);
- checked to put each evidence type in the OCSF attribute `HOMES` names (its typed home), the
  table docs/formats.md states;
- checked to carry every identifying value of `mappings.evidence.IDENTITIES`, as Graph sent it,
  somewhere in the line, and for a type with a typed home at least one in a typed attribute.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators

from core.model.schema import TenantRef
from mappings import ocsf
from mappings.evidence import IDENTITIES
from mappings.graph_alerts_v2 import MappingError, normalise
from tests.mappings.official_alerts import TENANT_ID, enum_alerts, evidence_alerts, graph_values, schema, short

REPO = Path(__file__).resolve().parents[2]
FORMATS_DOC = REPO / "docs" / "formats.md"
TENANT = TenantRef(id=TENANT_ID, label="contoso")
INGESTED = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)

# Where each Graph evidence type lands: the attributes its evidence in `evidences[]` has
# (`malware`: the finding's own malware list, OCSF having none in an evidence), for an
# evidence with every property filled. An ipEvidence is a src_endpoint when its role is
# source or attacker. () : no typed home, the evidence is in `unmapped.evidence`.
HOMES: dict[str, tuple[str, ...]] = {
    "activeDirectoryDomainEvidence": ("resources",),
    "aiAgentEvidence": ("resources",),
    "amazonResourceEvidence": ("resources",),
    "analyzedMessageEvidence": ("email",),
    "azureResourceEvidence": ("resources",),
    "blobContainerEvidence": ("databucket",),
    "blobEvidence": ("databucket",),
    "cloudApplicationEvidence": ("resources",),
    "cloudLogonRequestEvidence": (),
    "cloudLogonSessionEvidence": ("actor", "device"),
    "containerEvidence": ("container",),
    "containerImageEvidence": ("resources",),
    "containerRegistryEvidence": ("resources",),
    "deviceEvidence": ("device",),
    "dnsEvidence": ("query", "src_endpoint", "dst_endpoint"),
    "fileEvidence": ("file", "device"),
    "fileHashEvidence": (),
    "gitHubOrganizationEvidence": ("resources",),
    "gitHubRepoEvidence": ("resources",),
    "gitHubUserEvidence": ("user",),
    "googleCloudResourceEvidence": ("resources",),
    "hostLogonSessionEvidence": ("actor", "device"),
    "ioTDeviceEvidence": ("device",),
    "ipEvidence": ("dst_endpoint",),
    "kubernetesClusterEvidence": ("resources",),
    "kubernetesControllerEvidence": ("resources",),
    "kubernetesNamespaceEvidence": ("resources",),
    "kubernetesPodEvidence": ("resources",),
    "kubernetesSecretEvidence": ("resources",),
    "kubernetesServiceAccountEvidence": ("resources",),
    "kubernetesServiceEvidence": ("resources",),
    "mailClusterEvidence": (),
    "mailboxConfigurationEvidence": ("user",),
    "mailboxEvidence": ("user",),
    "malwareEvidence": ("malware",),
    "networkConnectionEvidence": ("connection_info", "src_endpoint", "dst_endpoint"),
    "nicEvidence": ("device",),
    "oauthApplicationEvidence": ("resources",),
    "processEvidence": ("process", "device"),
    "registryKeyEvidence": ("reg_key",),
    "registryValueEvidence": ("reg_value", "device"),
    "sasTokenEvidence": ("resources",),
    "securityGroupEvidence": ("resources",),
    "servicePrincipalEvidence": ("user",),
    "submissionMailEvidence": ("email",),
    "teamsMessageEvidence": ("user",),
    "urlEvidence": ("url",),
    "userEvidence": ("user",),
}
TYPED_HOMES = sum(1 for homes in HOMES.values() if homes)
# An evidence's own attributes that are not a typed home.
_NOT_HOMES = frozenset({"name", "uid", "verdict", "verdict_id", "data"})


# --------------------------------------------------------------------------- the official schema


def _is_integer(_checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # not 3.0, not True


_Validator = validators.extend(Draft202012Validator,
                               type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


@cache
def _official(profiles: tuple[str, ...]) -> Any:
    """A validator of the official OCSF 1.8.0 Detection Finding with these profiles."""
    try:
        from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions
    except ImportError:
        pytest.skip("PyPI ocsf-json-schema is not installed (the `test` extra installs it): no official "
                    "OCSF schema to validate against")
    if ocsf.OCSF_VERSION not in get_packaged_versions():
        pytest.skip(f"ocsf-json-schema does not ship OCSF {ocsf.OCSF_VERSION}")
    class_schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(ocsf.OCSF_VERSION)).get_class_schema(
        "detection_finding", list(profiles))
    _Validator.check_schema(class_schema)
    return _Validator(class_schema)


def _line(raw: dict[str, Any]) -> dict[str, Any]:
    """The OCSF line of a Graph alert, as a SIEM reads it."""
    return json.loads(ocsf.encode(normalise(raw, TENANT, INGESTED)))


def _violations(event: dict[str, Any]) -> list[str]:
    validator = _official(tuple(sorted(event["metadata"].get("profiles", []))))
    return [f"{error.json_path}: {error.message[:300]}" for error in validator.iter_errors(event)]


def test_the_official_schema_is_strict() -> None:
    """The validator rejects what OCSF rejects (so that passing means something)."""
    (_, raw), *_ = evidence_alerts()
    event = _line(raw)
    assert _violations(event) == []
    broken = [
        {**event, "severity_id": 7},  # not an enum member
        {**event, "evidences": [{"name": "x"}]},  # an evidence with no object (at_least_one)
        {**event, "evidences": [{"data": {}, "resources": [{"type": "t"}]}]},  # a resource with neither name nor uid
        {**event, "evidences": [{"resources": [{"name": "n"}]}]},  # OCSF's evidence constraint does not list resources
        {**event, "evidences": [{"data": {}, "resources": [{"name": "n", "region": "r"}]}]},  # cloud profile only
        {**event, "evidences": [{"src_endpoint": {"ip": "not an address"}}]},  # ip_t pattern
        {**event, "evidences": [{"reg_key": {"is_system": True}}]},  # reg_key without its path
        {**event, "malware": [{"name": "m"}]},  # malware without classification_ids
        {**event, "time": "2026-11-30T12:00:00Z"},  # timestamp_t is an integer
        {**event, "metadata": {**event["metadata"], "profiles": []}, "attacks": [{"technique": {"uid": "T1"}}]},
    ]
    for case in broken:
        assert _violations(case), case


@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile"])
def test_every_evidence_type_is_valid_against_official_ocsf(hostile: bool) -> None:
    failures = {}
    for name, raw in evidence_alerts(hostile=hostile):
        if violations := _violations(_line(raw)):
            failures[name] = violations[:5]
    assert failures == {}


def test_every_enum_member_is_valid_against_official_ocsf() -> None:
    failures = {}
    count = 0
    for enum, member, raw in enum_alerts():
        count += 1
        if violations := _violations(_line(raw)):
            failures[f"{enum}.{member}"] = violations[:5]
    assert failures == {}
    assert count > 100


# --------------------------------------------------------------------------- typed homes


def _homes(event: dict[str, Any], odata_type: str) -> tuple[str, ...]:
    """The typed attributes the line gives an evidence of `odata_type`."""
    found: list[str] = []
    for evidence in event.get("evidences", []):
        if evidence["name"] == odata_type:
            found += [key for key in evidence if key not in _NOT_HOMES]
    if event.get("malware"):
        found.append("malware")
    return tuple(found)


def test_every_evidence_type_lands_in_its_typed_home() -> None:
    official = schema()
    assert set(HOMES) == {short(t) for t in official.evidence_types}  # every type of Microsoft's metadata
    got = {}
    for name, raw in evidence_alerts():
        event = _line(raw)
        got[name] = _homes(event, raw["evidence"][0]["@odata.type"])
        if not HOMES[name]:  # no typed home: whole in unmapped.evidence
            assert [e["extra"]["@odata.type"] for e in event["unmapped"]["evidence"]] == ["#" + NS_ + name]
        else:
            assert "evidence" not in event["unmapped"], name
    assert got == HOMES
    assert TYPED_HOMES == 45


NS_ = "microsoft.graph.security."


def _documented_homes() -> tuple[int, int, dict[str, set[str]]]:
    """(typed homes, types, {OCSF attribute: Graph types}) as the ocsf section of
    docs/formats.md states them."""
    text = FORMATS_DOC.read_text(encoding="utf-8")
    section = text[text.index("\n## ocsf"):]
    section = section[:section.index("\n## ", 1)]
    count = re.search(r"\*\*(\d+) of the (\d+)\*\* Graph evidence types", section)
    assert count, "docs/formats.md (## ocsf) states how many evidence types have a typed home"
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) == 2:
            table[cells[0]] = set(re.findall(r"`(\w+Evidence)`", cells[1]))
    return int(count.group(1)), int(count.group(2)), table


def test_docs_state_the_typed_homes() -> None:
    typed, total, table = _documented_homes()
    assert (typed, total) == (TYPED_HOMES, len(HOMES))
    documented = {name: attribute for attribute, names in table.items() for name in names}
    expected = {}
    for name, homes in HOMES.items():
        if not homes:
            expected[name] = "`unmapped.evidence`"
        elif homes[0] == "malware":
            expected[name] = "`malware`"
        else:
            expected[name] = f"`evidences[].{homes[0]}`"
    expected["ipEvidence"] = "`evidences[].src_endpoint` / `dst_endpoint`"
    assert documented == expected


# --------------------------------------------------------------------------- identities


def _leaves(value: Any, path: str, out: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            _leaves(item, f"{path}.{key}", out)
    elif isinstance(value, list):
        for item in value:
            _leaves(item, f"{path}[]", out)
    else:
        out.append((path, value))
    return out


def _typed(path: str) -> bool:
    """A path in a typed attribute: not an evidence's free-form data, not unmapped."""
    return not path.startswith(".unmapped") and ".data." not in path and not path.endswith(".data")


def _found(value: Any, leaves: list[tuple[str, Any]]) -> list[str]:
    """The paths that carry `value`: itself, its text (an Int64 id is text in the common
    schema, as in OCSF's uid), or inside a longer string (a registry path holds its hive and key)."""
    text = value if isinstance(value, str) else str(value) if type(value) is int else None
    return [path for path, leaf in leaves
            if leaf == value and type(leaf) is type(value) or text is not None and isinstance(leaf, str)
            and (leaf == text if text is not value else value in leaf)]


@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile"])
def test_every_identifying_value_is_in_the_line(hostile: bool) -> None:
    missing, untyped = [], []
    for name, raw in evidence_alerts(hostile=hostile):
        evidence = raw["evidence"][0]
        leaves = _leaves(_line(raw), "", [])
        in_typed = False
        for row in IDENTITIES[name]:
            for value in graph_values(evidence, row.graph):
                paths = _found(value, leaves)
                if not paths:
                    missing.append(f"{name}.{row.graph} = {value!r}")
                in_typed = in_typed or any(_typed(path) for path in paths)
        if HOMES[name] and not in_typed:
            untyped.append(name)
    assert missing == []
    assert untyped == []  # a type with a typed home carries at least one identity there


# The evidence properties every format reads through the common schema's own fields (the
# verdict as verdict_id, the creation time in ms, ...), and values a format writes as its own
# enum (a device's riskScore as OCSF's risk_level): not looked for verbatim.
_BASE = frozenset({"@odata.type", "createdDateTime", "verdict", "remediationStatus", "roles", "detailedRoles", "tags"})
_AS_ENUM = {("deviceEvidence", "riskScore")}
_TIME = re.compile(r"\d{4}-\d\d-\d\dT")


def test_every_evidence_is_recoverable_from_the_line() -> None:
    """Every value of every property of every evidence type (bar times, booleans and the
    base properties, written in OCSF's own forms) is somewhere in the line: in a typed
    attribute or in the evidence's data."""
    missing = []
    for name, raw in evidence_alerts():
        leaves = _leaves(_line(raw), "", [])
        for key, value in raw["evidence"][0].items():
            if key in _BASE or (name, key) in _AS_ENUM:
                continue
            for path, leaf in _leaves(value, key, []):
                if isinstance(leaf, bool) or isinstance(leaf, str) and _TIME.match(leaf):
                    continue
                if not _found(leaf, leaves):
                    missing.append(f"{name}.{path} = {leaf!r}")
    assert missing == []


# --------------------------------------------------------------------------- hostile shapes
#
# Graph's objects as a broken or newer Graph might send them: any property of an evidence of
# any type left out, emptied, or of another JSON type (a number for a string, a list for an
# object, ...), a port out of range, a MAC address without separators. What normalise accepts
# must still encode a valid line. Addresses that are not ones: `_mangled_addresses` below.

_ODD = st.sampled_from([None, "", " ", "\x00", "a\nb", 0, -1, 70000, 2**63, 1.5, True, [], [None], ["x"], {},
                        {"ipAddress": None}, {"name": ""}, "00155D0A1B2C", "AA-BB-CC-DD-EE-FF"])
# Properties that hold an IP or e-mail address (or an object that does): only left out or emptied.
_ADDRESS = re.compile(r"(ip|ips|ipaddress|ipaddresses|ipinterfaces|address|email|emailaddress|sender|recipient"
                      r"|recipients|submitter|upn|p1sender|p2sender|useraccount|account|host)$", re.IGNORECASE)
_EMPTY = st.sampled_from([None, [], {}])


@st.composite
def _mangled_alert(draw: st.DrawFn) -> dict[str, Any]:
    alerts = _full_alerts()
    name = draw(st.sampled_from(sorted(alerts)))
    alert = copy.deepcopy(alerts[name])
    evidence = alert["evidence"][0]
    for key in draw(st.lists(st.sampled_from(sorted(k for k in evidence if k != "@odata.type")), max_size=6,
                                       unique=True)):
        if draw(st.booleans()):
            del evidence[key]
        else:
            evidence[key] = draw(_EMPTY if _ADDRESS.search(key) else _ODD)
    return alert


@cache
def _full_alerts() -> dict[str, dict[str, Any]]:
    return dict(evidence_alerts())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_mangled_alert())
def test_every_mangled_evidence_that_normalises_is_valid_against_official_ocsf(raw: dict[str, Any]) -> None:
    _valid_event(raw)


def _valid_event(raw: dict[str, Any]) -> dict[str, Any]:
    """The OCSF line of `raw` (hypothesis rejects an alert that does not normalise), asserted
    valid against the official schema."""
    try:
        alert = normalise(raw, TENANT, INGESTED)
    except MappingError:
        reject()
    event = json.loads(ocsf.encode(alert))
    assert _violations(event) == []
    return event


# --------------------------------------------------------------------------- addresses that are not ones
#
# Every address-like property of every evidence type (IP and MAC addresses, e-mail addresses,
# ports, host and domain names, URLs), nested ones included, set to what a broken Graph might
# send: padded, scoped, truncated or plain garbage. A value that does not fit its OCSF type
# (ip_t, email_t, mac_t, port_t) must not be written there; it stays in the evidence's `data`
# (or `unmapped`), as Graph sent it, so nothing is lost; and the line stays valid.

_ADDRESS_LIKE = re.compile(
    r"(ipaddress|ipinterfaces|lastipaddress|lastexternalipaddress|allowedipaddresses|senderip|macaddress"
    r"|emailaddress|email|mailboxprimaryaddress|primaryaddress|recipient|recipientemailaddress|recipients"
    r"|suspiciousrecipients|sender|senderfromaddress|submitter|upn|userprincipalname|sourceport|destinationport"
    r"|port|nodeport|targetport|hostname|devicednsname|domainname|url|weburl|baseurl|urls|devicepagelink)",
    re.IGNORECASE)
_PORT_LIKE = re.compile(r"port$", re.IGNORECASE)
_BAD_ADDRESSES = ("", " ", "10.0.0.1 ", " 10.0.0.1", "10.0.0.1\n", "10.0.0.1/24", "not-an-ip", "fe80::1%eth0",
                  "256.256.256.256", "1.2.3", "010.0.0.1", "1.2.3.4.5", ":::", "::ffff:zz", "user", "user@",
                  "@contoso.com", "user@contoso", "us er@contoso.com", "user@contoso.com\n", "user@contoso.com ",
                  "<user@contoso.com>", "user@@contoso.com", "AABBCCDDEEFF", "aa:bb:cc:dd:ee:ff\n", "aa:bb:cc:dd:ee",
                  "gg:hh:ii:jj:kk:ll", "\x00", "a\nb", "http://", "x" * 300, "\u00fcser@ex\u00e4mple.com", "1.2.3.4,5.6.7.8")
_BAD_PORTS = (70000, -1, 65536, 2**63, -(2**63), 1.5, True, "80", "", None)
_BAD_ADDRESS = st.one_of(st.sampled_from(_BAD_ADDRESSES), st.text(max_size=24))

# The OCSF attributes whose type has a constraint (a pattern or a range): a value found only
# there is not one a broken Graph could have put in the line unchecked.
_CONSTRAINED = frozenset({"ip", "mac", "email_addr", "from", "to", "x_originating_ip", "port", "intermediate_ips"})


def _address_slots(value: Any, path: tuple[Any, ...], out: list[tuple[tuple[Any, ...], bool]]) -> None:
    """The (path, is a port) of every address-like leaf of a Graph object (a list's first
    element standing for the list)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                _address_slots(item, (*path, key), out)
            elif _ADDRESS_LIKE.fullmatch(key):
                out.append(((*path, key), bool(_PORT_LIKE.search(key))))
    elif isinstance(value, list) and value:
        if isinstance(value[0], (dict, list)):
            _address_slots(value[0], (*path, 0), out)
        elif path and _ADDRESS_LIKE.fullmatch(str(path[-1])):
            out.append(((*path, 0), False))


@cache
def _slots() -> dict[str, tuple[tuple[tuple[Any, ...], bool], ...]]:
    found = {}
    for name, raw in _full_alerts().items():
        out: list[tuple[tuple[Any, ...], bool]] = []
        _address_slots(raw["evidence"][0], (), out)
        if out:
            found[name] = tuple(out)
    return found


def test_every_evidence_type_has_address_slots() -> None:
    """(The fuzz below reaches the types that have addresses: not a vacuous walk.)"""
    slots = _slots()
    for name in ("deviceEvidence", "ipEvidence", "analyzedMessageEvidence", "mailboxEvidence", "userEvidence",
                 "networkConnectionEvidence", "dnsEvidence", "nicEvidence", "ioTDeviceEvidence",
                 "submissionMailEvidence", "teamsMessageEvidence", "gitHubUserEvidence", "kubernetesPodEvidence",
                 "hostLogonSessionEvidence", "mailboxConfigurationEvidence", "processEvidence", "urlEvidence"):
        assert name in slots, name
    assert len(slots) >= 25


@st.composite
def _mangled_addresses(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    slots = _slots()
    name = draw(st.sampled_from(sorted(slots)))
    alert = copy.deepcopy(_full_alerts()[name])
    evidence = alert["evidence"][0]
    chosen = draw(st.lists(st.sampled_from(slots[name]), min_size=1, max_size=3, unique=True))
    values = []
    for path, is_port in chosen:
        value = draw(st.sampled_from(_BAD_PORTS) if is_port else _BAD_ADDRESS)
        parent = evidence
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
        values.append(value)
    return alert, values


def _where(value: Any, leaves: list[tuple[str, Any]]) -> list[str]:
    return [path for path, leaf in leaves if leaf == value and type(leaf) is type(value)]


def _kept(path: str) -> bool:
    """A path where a value OCSF has no typed place for is kept: an evidence's data, unmapped."""
    return path.startswith(".unmapped") or ".data." in path


def _unconstrained(path: str) -> bool:
    """A typed attribute whose OCSF type takes any text (a name, a hostname, a URL string)."""
    return _typed(path) and path.rstrip("[]").rsplit(".", 1)[-1] not in _CONSTRAINED


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_mangled_addresses())
def test_every_evidence_with_bad_addresses_is_valid_against_official_ocsf(case: tuple[dict[str, Any], list[Any]]
                                                                          ) -> None:
    raw, values = case
    event = _valid_event(raw)
    leaves = _leaves(event, "", [])
    for value in values:
        if value is None or value == "" or isinstance(value, bool) or value.__class__ is float:
            continue  # left out (OCSF has no nulls, empty values are dropped), or a JSON type of its own
        paths = _where(value, leaves)
        assert any(_kept(path) or _unconstrained(path) for path in paths), (value, paths)


@cache
def _type_constraints() -> dict[str, dict[str, Any]]:
    """OCSF type -> its constraint in the official schema (read off an attribute of that type)."""
    _official(tuple(sorted(ocsf.PROFILES)))  # (skips where the package is absent)
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
    defs = OcsfJsonSchemaEmbedded(get_ocsf_schema(ocsf.OCSF_VERSION)).get_class_schema(
        "detection_finding", list(ocsf.PROFILES))["$defs"]
    return {"ip_t": defs["device"]["properties"]["ip"], "email_t": defs["user"]["properties"]["email_addr"],
            "mac_t": defs["device"]["properties"]["mac"], "port_t": defs["network_endpoint"]["properties"]["port"]}


_GOOD = {"ip_t": ("10.0.0.1", "255.255.255.255", "2001:db8::1", "::", "::ffff:10.0.0.1", "fe80::1"),
         "email_t": ("user@contoso.com", "first.last+tag@mail.contoso.co.uk", "o'brien@contoso.com"),
         "mac_t": ("00:15:5D:0A:1B:2C", "aa-bb-cc-dd-ee-ff"), "port_t": (0, 443, 65535)}


def test_the_type_checks_accept_what_graph_sends() -> None:
    assert set(ocsf.TYPE_CHECKS) == set(_GOOD)
    for name, values in _GOOD.items():
        for value in values:
            assert ocsf.TYPE_CHECKS[name](value), (name, value)
    for value in _BAD_ADDRESSES:
        assert not any(check(value) for name, check in ocsf.TYPE_CHECKS.items() if name != "port_t"), value


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.sampled_from(_BAD_ADDRESSES + sum(_GOOD.values(), ())), st.text(max_size=40),
                       st.from_regex(r"[0-9a-fA-F:.%@ \n-]{0,40}", fullmatch=True)))
def test_the_type_checks_are_as_strict_as_the_official_schema(value: str) -> None:
    """A value a check lets through passes its type's constraint in the official schema."""
    constraints = _type_constraints()
    for name in ("ip_t", "email_t", "mac_t"):
        if isinstance(value, str) and ocsf.TYPE_CHECKS[name](value):
            assert re.search(constraints[name]["pattern"], value), (name, value)
    port = constraints["port_t"]
    for number in (-1, 0, 65535, 65536, 2**63):
        assert ocsf.TYPE_CHECKS["port_t"](number) == (port["minimum"] <= number <= port["maximum"])


def test_every_hostile_corpus_alert_is_valid_against_official_ocsf() -> None:
    """The reliability suite's hostile corpus (injection attempts, control characters, odd
    Unicode in every field, addresses included): every alert that normalises encodes a valid line."""
    from core.model import jsonutil
    from tests.reliability import make_hostile_corpus

    failures, count = {}, 0
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 10_000))  # (the corpus nests deep, as the reliability suite allows)
    try:
        for number, line in enumerate(make_hostile_corpus.CORPUS.read_bytes().splitlines(), start=1):
            try:
                line_bytes = ocsf.encode(normalise(make_hostile_corpus.expand(jsonutil.loads(line)), TENANT, INGESTED))
            except (MappingError, ValueError):  # dead-lettered, or refused by the encoder (1e400): no line
                continue
            count += 1
            if violations := _violations(json.loads(line_bytes)):
                failures[number] = violations[:3]
    finally:
        sys.setrecursionlimit(previous)
    assert failures == {}
    assert count > 100
