"""docs/splunk-addon.md and the add-on's default inputs.conf say what the code does."""
from __future__ import annotations

from pathlib import Path

from addonfactory_splunk_conf_parser_lib import TABConfigParser

from connectors.splunk_events import SOURCETYPES
from core.app.splunk_input import ARGUMENTS, SCHEME, arguments_markdown

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "splunk-addon.md"
SKELETON = REPO / "core" / "app" / "splunk_ta"


def test_the_page_shows_the_inputs_arguments_as_the_code_declares_them() -> None:
    assert arguments_markdown() in PAGE.read_text(encoding="utf-8")


def test_default_inputs_conf_holds_every_argument_default() -> None:
    parser = TABConfigParser()
    parser.read(str(SKELETON / "default" / "inputs.conf"))
    defaults = parser.item_dict()[SCHEME]
    assert {a.name: a.default for a in ARGUMENTS if a.default} == {
        key: value for key, value in defaults.items() if key in {a.name for a in ARGUMENTS}}


def test_the_page_names_every_sourcetype() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert [name for name in set(SOURCETYPES.values()) if f"`{name}`" not in text] == []
