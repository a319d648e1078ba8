"""connectors/__init__.py, the sink registry: every sink type's connector, imported only when
asked for, and what `setup` each offers, readable without importing any connector."""
from __future__ import annotations

import subprocess
import sys

import pytest

from connectors import SINKS, SetupOffer, connector_class, setup_offers, sink_types
from connectors.base import Connector, SetupPlan
from connectors.elasticsearch import ElasticsearchSinkConfig
from tests.helpers import REPO


def test_every_sink_type_names_its_connector() -> None:
    assert sink_types() == ("file", "stdout", "syslog", "splunk_hec", "elasticsearch", "eventhub", "sentinel",
                            "email")
    for sink_type in sink_types():
        connector = connector_class(sink_type)
        assert issubclass(connector, Connector)
        assert connector.config_model.model_fields["type"].default == sink_type


def test_the_registry_says_which_types_offer_setup_as_their_connectors_do() -> None:
    offering = {sink_type for sink_type in sink_types()
                if connector_class(sink_type).setup.__func__ is not Connector.setup.__func__}
    assert set(setup_offers()) == offering == {"elasticsearch"}
    assert all(isinstance(offer, SetupOffer) for offer in setup_offers().values())


def test_a_setup_takes_the_options_its_registry_entry_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ElasticsearchSinkConfig(hosts=["https://127.0.0.1:9200"])
    options = {option.name: option.default for option in SINKS["elasticsearch"].setup.options}
    assert options == {"retention": "365d"}
    plan = connector_class("elasticsearch").setup(config, {**options, "retention": "30d"})
    assert isinstance(plan, SetupPlan)
    assert '"min_age": "30d"' in plan.describe()
    assert connector_class("file").setup(connector_class("file").config_model(), {}) is None


def test_the_registry_imports_no_connector() -> None:
    code = ("import sys, connectors; connectors.setup_offers(); connectors.sink_types(); "
            "print(sorted(m for m in sys.modules if m.startswith(('connectors.', 'pydantic', 'httpx'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_setup_command_is_built_from_the_registry() -> None:
    from core.app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["setup", "elasticsearch", "--retention", "90d", "--dry-run"])
    assert (args.target, args.retention, args.dry_run, args.sink) == ("elasticsearch", "90d", True, None)
    assert parser.parse_args(["setup", "elasticsearch"]).retention is None  # the command fills in 365d
    with pytest.raises(SystemExit):
        parser.parse_args(["setup", "splunk_hec"])  # a type without setup is no choice
