"""The monitoring examples: `examples/prometheus/alerts.yml` and its `promtool test rules` file,
and the Grafana dashboard `examples/grafana/defender-forwarder.json`.

- promtool (Debian's `prometheus` package, installed by `.ci/run`) accepts the rules, and its
  unit tests, in which each rule fires on a series that should fire it and stays quiet on one
  that should not, pass; without promtool these skip, saying why;
- the dashboard is JSON Grafana imports (a `${DS_PROMETHEUS}` input, schemaVersion 39), and
  every panel's query is PromQL promtool parses;
- every metric a rule or a query names is one the forwarder exports, as `docs/metrics.md`
  lists them (its table's first column, in backticks); without that page the check skips.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.helpers import REPO

RULES = REPO / "examples" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "examples" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "examples" / "grafana" / "defender-forwarder.json"
METRICS_DOC = REPO / "docs" / "metrics.md"

# The six situations of the issue, by the rule that covers each.
EXPECTED_ALERTS = {
    "DefenderForwarderTenantNotPolled",  # no successful poll for 30 minutes
    "DefenderForwarderConsentRevoked",
    "DefenderForwarderCertificateExpiring",  # within 14 days
    "DefenderForwarderOutboxGrowing",  # growing for 15 minutes
    "DefenderForwarderOutboxStale",  # the oldest event waited 15 minutes
    "DefenderForwarderSinkStopped",
    "DefenderForwarderDeadLetters",
    "DefenderForwarderSourceDeadLetters",
    "DefenderForwarderAbsent",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the rules


def rules() -> list[tuple[str, str]]:
    """(alert name, expr) per rule of alerts.yml. Each rule's expr is one line (checked here)."""
    text = RULES.read_text(encoding="utf-8")
    names = re.findall(r"^\s*- alert:\s*(\S+)\s*$", text, re.M)
    exprs = re.findall(r"^\s*expr:\s*(.+?)\s*$", text, re.M)
    assert len(names) == len(exprs), "every rule has one alert name and a one-line expr"
    assert not any(expr in {">", "|", ">-", "|-"} for expr in exprs), "keep each expr on one line"
    return list(zip(names, exprs, strict=True))


def test_the_rules_cover_the_issues_situations() -> None:
    assert {name for name, _ in rules()} == EXPECTED_ALERTS


def test_every_rule_has_a_severity_a_summary_and_a_remedy() -> None:
    text = RULES.read_text(encoding="utf-8")
    blocks = re.split(r"^\s*- alert:", text, flags=re.M)[1:]
    assert len(blocks) == len(EXPECTED_ALERTS)
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"severity:\s*(critical|warning)", block), f"{name}: no severity"
        assert "summary:" in block and "description:" in block, f"{name}: no summary or description"
        assert "defender-forwarder" in block.split("description:", 1)[1], f"{name}: the description names no command"


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_each_rule_fires_when_it_should_and_only_then() -> None:
    text = RULE_TESTS.read_text(encoding="utf-8")
    tested = set(re.findall(r"alertname:\s*(\S+)", text))
    assert tested == EXPECTED_ALERTS, f"no promtool test for {EXPECTED_ALERTS - tested}"
    for name in EXPECTED_ALERTS:  # each rule is tested firing and quiet
        cases = re.findall(rf"alertname: {name}\n\s*exp_alerts:(.*)", text)
        assert any(case.strip() == "[]" for case in cases), f"{name}: never tested quiet"
        assert any(case.strip() == "" for case in cases), f"{name}: never tested firing"
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --------------------------------------------------------------------------- the dashboard


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(board: dict) -> list[dict]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row's panels
    return found


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dashboard()) for t in p.get("targets", [])]


def variable_metrics() -> list[tuple[str, str]]:
    """(variable name, metric) of every `label_values(metric, label)` variable."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert metric, f"${variable['name']}: {variable['definition']}"
            found.append((f"${variable['name']}", metric.group(1)))
    return found


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["title"] == "defender-forwarder"
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    titles = [p["title"] for p in panels(board) if p["type"] != "row"]
    for wanted in ("Tenants failing", "Lag per tenant", "New alert versions", "Outbox depth", "Oldest event age",
                   "Sink state", "Dead letters", "429s", "request duration p95", "Certificate expiry", "Cycle duration"):
        assert any(wanted in title for title in titles), f"no panel {wanted!r}"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_every_dashboard_query_is_promql(tmp_path: Path) -> None:
    """promtool parses each query, given to it as a recording rule."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, (_, expr) in enumerate(dashboard_exprs()):
        lines += [f"      - record: dashboard:query{number}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- metric names

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "offset", "bool", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers that are not functions,
    keywords, labels (inside `{}` or a `by (...)`), strings, ranges or Grafana variables."""
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    rest = re.sub(r"\{[^}]*\}", " ", rest)  # label matchers
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    rest = re.sub(r"\$\{?\w+\}?", " ", rest)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", rest):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_are_found() -> None:
    assert metric_names('time() - a_b{tenant=~"$tenant"} > 1800') == {"a_b"}
    assert metric_names("histogram_quantile(0.95, sum by (le, sink) (rate(x_bucket[5m])))") == {"x_bucket"}
    assert metric_names("p * on (instance, job) group_left (version) q or vector(0)") == {"p", "q"}
    assert metric_names("absent(m) and 14 * 86400 < n offset 5m") == {"m", "n"}


@cache
def documented_names() -> tuple[str, ...]:
    """The metric names docs/metrics.md's table lists in its first column."""
    if not METRICS_DOC.exists():
        pytest.skip("docs/metrics.md does not exist yet: no list of exported metrics to check the names against")
    names = []
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or not cells:
            continue
        first = re.match(r"`([a-zA-Z_:][\w:]*\*?)", cells[0])
        if first:
            names.append(first.group(1))
    assert names, "docs/metrics.md has no table of metric names in backticks"
    return tuple(names)


def is_documented(name: str) -> bool:
    names = documented_names()
    candidates = {name} | {name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)}
    for documented in names:
        if documented.endswith("*") and name.startswith(documented[:-1]):
            return True
        if documented in candidates:
            return True
    return False


def test_every_metric_a_rule_names_is_exported() -> None:
    used = {(rule, name) for rule, expr in rules() for name in metric_names(expr)}
    assert used, "the rules name no metric"
    unknown = sorted(f"{rule}: {name}" for rule, name in used if not is_documented(name))
    assert not unknown, "not in docs/metrics.md:\n" + "\n".join(unknown)


def test_every_metric_a_dashboard_query_names_is_exported() -> None:
    used = {(title, name) for title, expr in dashboard_exprs() for name in metric_names(expr)}
    used |= set(variable_metrics())
    assert used, "the dashboard names no metric"
    unknown = sorted(f"{title}: {name}" for title, name in used if not is_documented(name))
    assert not unknown, "not in docs/metrics.md:\n" + "\n".join(unknown)
