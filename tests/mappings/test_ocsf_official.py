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
# must still encode a valid line. Not here: an IP or e-mail address that is not one. The
# mapping writes Graph's addresses verbatim (as it always has for ipEvidence, devices and
# messages), so such a line breaks OCSF's ip_t / email_t patterns.

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
    try:
        alert = normalise(raw, TENANT, INGESTED)
    except MappingError:
        reject()
    event = json.loads(ocsf.encode(alert))
    assert _violations(event) == []
