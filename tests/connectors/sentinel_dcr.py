"""The DCR the Sentinel tests ingest through: the stream declarations of the example template
(examples/sentinel/azuredeploy.json) plus the built-in `Microsoft-CommonSecurityLog` stream,
whose columns are the CommonSecurityLog table's (tests/mappings/commonsecuritylog_reference.py)."""
from __future__ import annotations

from connectors.sentinel import CEF_STREAM
from tests.helpers import REPO
from tests.mappings.commonsecuritylog_reference import COLUMNS as CSL_COLUMNS
from tests.peers.logs_ingestion_peer import streams_from_template

TEMPLATE = REPO / "examples" / "sentinel" / "azuredeploy.json"


def declared_streams() -> dict[str, dict[str, str]]:
    """Stream name -> {column: type}, as the peer checks every record against."""
    return {**streams_from_template(TEMPLATE), CEF_STREAM: dict(CSL_COLUMNS)}
