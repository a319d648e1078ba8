"""The forwarder's Prometheus metrics (core/model/telemetry.py, core/app/metrics.py): what is
counted, `run --once --metrics-file`, and docs/metrics.md against what is exposed."""
from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import core.app.metrics  # noqa: F401 - registers the state gauges
from connectors.base import DELIVERED, EventResult, Outcome
from core.delivery import SinkWorker
from core.model.telemetry import REGISTRY
from core.state.sqlite import SQLiteStore
from tests.delivery.test_worker import SINK, Scripted, _drain, _queue, store  # noqa: F401 - the fixture
from tests.helpers import REPO, CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.fake_cloud import Fault


def _families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict, name: str, **labels: str) -> float:
    family = families[name]
    values = [s.value for s in family.samples if s.name == name + ("_total" if family.type == "counter" else "")
              and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) == 1, (name, labels, family.samples)
    return values[0]


def test_run_once_writes_the_metrics_file_with_the_429s_and_retry_after_it_waited(setup: CloudSetup,
                                                                                   tmp_path: Path) -> None:
    tenant_id = setup.tenant("acme")
    setup.cloud.add_alerts(tenant_id, make_alerts(4, tenant_id, recent(600), timedelta(minutes=1), seed=2))
    setup.cloud.inject(tenant_id, Fault.status(429, retry_after=1))
    config = setup.write()
    metrics = tmp_path / "metrics" / "forwarder.prom"
    metrics.parent.mkdir()
    done = run_cli("run", "--once", "--config", str(config), "--metrics-file", str(metrics))
    assert done.returncode == 0, done.stderr
    families = _families(metrics.read_text())
    labels = {"tenant": "acme", "source": "graph_alerts"}
    assert _value(families, "defender_forwarder_throttled", **labels) == 1
    assert _value(families, "defender_forwarder_retry_after_seconds", **labels) == 1
    assert _value(families, "defender_forwarder_polls", result="ok", **labels) == 1
    assert _value(families, "defender_forwarder_alert_versions_new", **labels) == 4
    assert _value(families, "defender_forwarder_alerts_read", **labels) == 4
    assert _value(families, "defender_forwarder_events_delivered", sink="archive") == 4
    assert _value(families, "defender_forwarder_outbox_events", sink="archive") == 0
    assert _value(families, "defender_forwarder_auth_state", tenant="acme", state="ok") == 1
    assert _value(families, "defender_forwarder_sink_state", sink="archive", state="ok") == 1
    assert _value(families, "defender_forwarder_cycles", result="ok") == 1
    assert _value(families, "defender_forwarder_tenants_held") == 1  # one process on a SQLite state: every tenant
    state = SQLiteStore(setup.state)
    try:
        cursor = state.cursor(tenant_id, "graph_alerts")
    finally:
        state.close()
    assert cursor is not None
    lag = _value(families, "defender_forwarder_lag_seconds", **labels)
    assert abs(lag - (time.time() - cursor.timestamp())) < 30  # now minus the state's cursor
    # Two requests timed (the 429 and the page), in the histogram's buckets.
    counts = [s.value for s in families["defender_forwarder_request_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels == labels]
    assert counts == [2]
    # Labels are the tenant, source and sink: no alert id anywhere.
    assert not re.search(r'alert_id|version_key', metrics.read_text())
    assert not list(metrics.parent.glob("*.tmp*"))  # written aside, renamed


def test_metrics_file_needs_once(tmp_path: Path) -> None:
    done = run_cli("run", "--config", str(tmp_path / "none.toml"), "--metrics-file", str(tmp_path / "m.prom"))
    assert done.returncode == 2 and "--metrics-file is for run --once" in done.stderr


def test_a_sink_that_refuses_counts_dead_letters_and_deliveries(store) -> None:  # noqa: F811
    bodies = _queue(store, 4)
    worker = SinkWorker(Scripted(lambda batch: [EventResult(Outcome.PERMANENT, "400 bad") if e.body == bodies[1]
                                                else DELIVERED for e in batch]), store)
    before = {name: REGISTRY.get_sample_value(f"defender_forwarder_events_{name}_total", {"sink": SINK}) or 0
              for name in ("delivered", "dead_lettered")}
    assert _drain(worker)
    after = {name: REGISTRY.get_sample_value(f"defender_forwarder_events_{name}_total", {"sink": SINK})
             for name in ("delivered", "dead_lettered")}
    assert after["delivered"] - before["delivered"] == 3 and after["dead_lettered"] - before["dead_lettered"] == 1
    assert (REGISTRY.get_sample_value("defender_forwarder_batch_duration_seconds_count", {"sink": SINK}) or 0) >= 1


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's table: name -> (type, labels)."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*)\|",
                      (REPO / "docs" / "metrics.md").read_text(), re.M)
    return {name: (kind, set(re.findall(r"`([a-z_]+)`", labels))) for name, kind, labels in rows}


def test_docs_list_every_metric_the_forwarder_exposes_with_its_type() -> None:
    exposed = {f.name: f.type for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
               if f.name.startswith("defender_forwarder_")}
    documented = {name.removesuffix("_total") if kind == "counter" else name: kind
                  for name, (kind, _) in _documented().items() if name.startswith("defender_forwarder_")}
    assert documented == exposed


def test_every_exposed_label_is_documented() -> None:
    documented = {name.removesuffix("_total"): labels for name, (_, labels) in _documented().items()}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if family.name in documented:
            for sample in family.samples:
                assert set(sample.labels) - {"le"} <= documented[family.name], (family.name, sample.labels)


def test_a_scrape_gets_the_last_rendering_until_it_is_old_enough(monkeypatch) -> None:
    import asyncio

    from core.app import metrics
    from core.model.telemetry import CYCLES

    monkeypatch.setattr(metrics, "MIN_AGE", 0.3)
    monkeypatch.setattr(metrics, "RENDER_SHARE", 0)  # the age alone decides here

    def cycles(body: bytes) -> float:
        return _value(_families(body.decode()), "defender_forwarder_cycles", result="partial")

    async def scrapes() -> list[tuple[bytes, str]]:
        CYCLES.labels("partial").inc(0)  # the series exists from the first scrape on
        exposition = metrics.Exposition()
        first = await exposition.scrape(None)
        CYCLES.labels("partial").inc()
        again = await exposition.scrape(None)  # too soon: the same rendering
        openmetrics = await exposition.scrape("application/openmetrics-text; version=1.0.0")  # its own
        await asyncio.sleep(0.35)
        return [first, again, openmetrics, await exposition.scrape(None)]

    first, again, openmetrics, later = asyncio.run(scrapes())
    assert again == first and first[1].startswith("text/plain")
    assert openmetrics[1].startswith("application/openmetrics-text") and openmetrics[0].endswith(b"# EOF\n")
    assert cycles(later[0]) == cycles(first[0]) + 1
