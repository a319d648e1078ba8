"""The reliability suite's fixture: the four network peers, started for a test and stopped after."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.es_peer import EsPeer
from tests.peers.eventhub_peer import EventHubPeer
from tests.peers.hec_peer import HecPeer, TokenSettings
from tests.peers.syslog_ng import SyslogNg, require_syslog_ng
from tests.reliability.fleet import ES_KEY, HEC_TOKEN, HUB_KEY, Peers


@pytest.fixture
def peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Peers]:
    require_syslog_ng()
    with SyslogNg(tmp_path / "syslog-ng") as syslog, HecPeer(tokens={HEC_TOKEN: TokenSettings()}) as hec, \
            EsPeer(api_key=ES_KEY) as es, EventHubPeer() as hub:
        monkeypatch.setenv("DF_CRASH_HEC_TOKEN", HEC_TOKEN)
        monkeypatch.setenv("DF_CRASH_ES_KEY", ES_KEY)
        monkeypatch.setenv("DF_CRASH_EH", hub.connection_string(key=HUB_KEY))
        yield Peers(syslog, hec, es, hub)
