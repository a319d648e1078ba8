"""examples/sentinel/: the ARM template declares exactly what the `sentinel` format sends.

- Each stream declaration of the data collection rule has exactly its format's column table
  (names, types, order): the `sentinel` format's two, the `commonsecuritylog` format's one; each
  custom table has those columns and `TimeGenerated`.
- The rule's data flows cover the three streams, each setting TimeGenerated in its
  transformation: the custom tables' to their tables, CommonSecurityLog's rows to the output
  stream Microsoft-CommonSecurityLog (the standard table).
- The role assigned on the rule is Monitoring Metrics Publisher; the outputs give the sink's
  `endpoint` and `rule_id`.
- The analytics rule and the KQL function name only columns the table has.
- The example configuration names the streams and formats that exist, secrets as references.
"""
from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from typing import Any

import pytest

from core.model.schema import Severity
from mappings import commonsecuritylog, sentinel
from tests.helpers import REPO

EXAMPLE = REPO / "examples" / "sentinel"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
CSL_STREAM = commonsecuritylog.STREAM
CSL_OUTPUT = "Microsoft-CommonSecurityLog"
TRANSFORM = "source | extend TimeGenerated = now()"


@cache
def template() -> dict[str, Any]:
    return json.loads((EXAMPLE / "azuredeploy.json").read_text(encoding="utf-8"))


def resources(kind: str) -> list[dict[str, Any]]:
    return [r for r in template()["resources"] if r["type"] == kind]


def _columns(columns: tuple[sentinel.Column, ...]) -> list[dict[str, str]]:
    return [{"name": c.name, "type": c.type} for c in columns]


def test_the_template_is_an_arm_template() -> None:
    data = template()
    assert data["$schema"].endswith("/deploymentTemplate.json#")
    assert {"workspaceName", "location", "servicePrincipalObjectId"} <= set(data["parameters"])
    # Every parameter a resource names is declared.
    for name in re.findall(r"parameters\('(\w+)'\)", json.dumps(data["resources"])):
        assert name in data["parameters"], name


def test_stream_declarations_are_exactly_the_column_tables() -> None:
    [rule] = resources("Microsoft.Insights/dataCollectionRules")
    declared = rule["properties"]["streamDeclarations"]
    assert set(declared) == {*sentinel.STREAMS, CSL_STREAM}
    for stream, columns in sentinel.STREAMS.items():
        assert declared[stream]["columns"] == _columns(columns), stream
    assert declared[CSL_STREAM]["columns"] == [{"name": name, "type": kind} for name, kind in commonsecuritylog.COLUMNS]


def test_the_tables_are_the_stream_columns_and_time_generated() -> None:
    tables = {r["properties"]["schema"]["name"]: r for r in resources("Microsoft.OperationalInsights/workspaces/tables")}
    assert set(tables) == set(sentinel.TABLES.values())
    for stream, table in sentinel.TABLES.items():
        assert stream == f"Custom-{table}"
        columns = tables[table]["properties"]["schema"]["columns"]
        assert columns == [{"name": "TimeGenerated", "type": "datetime"}, *_columns(sentinel.STREAMS[stream])]
        assert f"/{table}'" in tables[table]["name"]


def test_data_flows_cover_the_three_streams() -> None:
    [rule] = resources("Microsoft.Insights/dataCollectionRules")
    properties = rule["properties"]
    destinations = {d["name"] for d in properties["destinations"]["logAnalytics"]}
    flows = {tuple(flow["streams"]): flow for flow in properties["dataFlows"]}
    assert set(flows) == {(stream,) for stream in [*sentinel.STREAMS, CSL_STREAM]}
    for (stream,), flow in flows.items():
        assert flow["outputStream"] == (CSL_OUTPUT if stream == CSL_STREAM else stream)
        assert flow["transformKql"] == TRANSFORM
        assert set(flow["destinations"]) <= destinations
    assert "dataCollectionEndpoints" in properties["dataCollectionEndpointId"]


def test_the_role_is_monitoring_metrics_publisher_on_the_rule() -> None:
    [assignment] = resources("Microsoft.Authorization/roleAssignments")
    role = template()["variables"]["monitoringMetricsPublisher"]
    assert assignment["properties"]["roleDefinitionId"] == "[variables('monitoringMetricsPublisher')]"
    assert MONITORING_METRICS_PUBLISHER in role and "roleDefinitions" in role
    assert "dataCollectionRules" in assignment["scope"]
    assert assignment["properties"]["principalId"] == "[parameters('servicePrincipalObjectId')]"
    script = (EXAMPLE / "role-assignment.sh").read_text(encoding="utf-8")
    assert f"ROLE={MONITORING_METRICS_PUBLISHER}" in script and "az role assignment create" in script


def test_the_outputs_are_the_sinks_endpoint_and_rule_id() -> None:
    outputs = template()["outputs"]
    assert outputs["endpoint"]["value"].endswith(".logsIngestion.endpoint]")
    assert outputs["rule_id"]["value"].endswith(".immutableId]")


# --------------------------------------------------------------------------- KQL

_ASSIGNED = re.compile(r"\b([A-Za-z_]\w*)\s*=(?!=)")
_NAME = re.compile(r"\b[A-Z]\w*\b")


def kql_names(query: str) -> tuple[set[str], set[str]]:
    """(the column-like names a KQL query reads, the names it defines): comments and string
    literals left out; KQL's own functions and operators are lower case."""
    query = re.sub(r"//[^\n]*", "", query)
    query = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    defined = set(_ASSIGNED.findall(query))
    used = set(_NAME.findall(query))
    return used, defined


def _alert_columns() -> set[str]:
    return {"TimeGenerated", *(c.name for c in sentinel.ALERT_COLUMNS)}


def test_the_analytics_rule_reads_only_columns_the_table_has() -> None:
    rule = json.loads((EXAMPLE / "analytics-rule-high-severity.json").read_text(encoding="utf-8"))
    [resource] = rule["resources"]
    assert resource["type"] == "Microsoft.SecurityInsights/alertRules" and resource["kind"] == "Scheduled"
    properties = resource["properties"]
    query = properties["query"]
    assert query.count(sentinel.ALERT_TABLE) == 1
    used, defined = kql_names(query)
    unknown = used - defined - _alert_columns() - {sentinel.ALERT_TABLE}
    assert not unknown, f"the rule's query names no such column: {unknown}"
    assert "SeverityId >= 4" in query and int(Severity.high) == 4  # high and critical
    # What the rule reads of its results is what the query makes: the last summarize's outputs.
    outputs = defined | {"Customer"}
    for column in properties["customDetails"].values():
        assert column in outputs, column
    for mapping in properties["entityMappings"]:
        for field in mapping["fieldMappings"]:
            assert field["columnName"] in outputs, field
    grouping = properties["incidentConfiguration"]["groupingConfiguration"]
    assert grouping["enabled"] and grouping["groupByCustomDetails"] == ["Customer"]
    assert properties["customDetails"]["Customer"] == "Customer"
    assert "by Customer" in query.rsplit("summarize", 1)[1]  # one result, one alert, per customer


def test_the_kql_function_reads_only_columns_the_table_has() -> None:
    query = (EXAMPLE / "DefenderAlerts.kql").read_text(encoding="utf-8")
    used, defined = kql_names(query)
    unknown = used - defined - _alert_columns() - {sentinel.ALERT_TABLE}
    assert not unknown, f"DefenderAlerts.kql names no such column: {unknown}"
    assert "summarize arg_max(TimeGenerated, *) by AlertId, Version" in query


# --------------------------------------------------------------------------- the example configuration


@cache
def example_config() -> dict[str, Any]:
    return tomllib.loads((EXAMPLE / "sentinel-example.toml").read_text(encoding="utf-8"))


def test_the_example_sinks_name_real_streams_and_formats() -> None:
    sinks = example_config()["sinks"]
    shapes = {(sink["stream"], sink["format"]) for sink in sinks.values()}
    assert shapes == {("Custom-DefenderAlerts_CL", "sentinel"), (CSL_STREAM, "commonsecuritylog")}
    for sink in sinks.values():
        assert sink["type"] == "sentinel"
        assert sink["endpoint"].startswith("https://") and sink["rule_id"].startswith("dcr-")
        for key in ("client_secret", "certificate"):
            if key in sink:
                assert sink[key].startswith(("env:", "file:")), f"{key} must be a reference"


def test_the_example_configuration_loads() -> None:
    from connectors import sink_types

    if "sentinel" not in sink_types():
        pytest.skip("the `sentinel` sink type (connectors/sentinel.py) is not registered in this tree yet")
    from core.app.config import parse_config

    config = parse_config(example_config())
    assert {sink.format for sink in config.sinks.values()} == {"sentinel", "commonsecuritylog"}
