"""The DCR the Sentinel tests ingest through: the stream declarations of the example template
(examples/sentinel/azuredeploy.json)."""
from __future__ import annotations

from tests.helpers import REPO
from tests.peers.logs_ingestion_peer import streams_from_template

TEMPLATE = REPO / "examples" / "sentinel" / "azuredeploy.json"


def declared_streams() -> dict[str, dict[str, str]]:
    """Stream name -> {column: type}, as the peer checks every record against."""
    return streams_from_template(TEMPLATE)
