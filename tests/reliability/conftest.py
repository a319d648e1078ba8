"""The reliability suite's fixture: the five network peers, started for a test and stopped after."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.connectors.sentinel_dcr import declared_streams
from tests.helpers import CLIENT_ID, SECRET
from tests.peers.es_peer import EsPeer
from tests.peers.eventhub_peer import EventHubPeer
from tests.peers.fake_cloud import FakeCloud
from tests.peers.hec_peer import HecPeer, TokenSettings
from tests.peers.logs_ingestion_peer import LogsIngestionPeer
from tests.peers.syslog_ng import SyslogNg, require_syslog_ng
from tests.reliability.fleet import ES_KEY, HEC_TOKEN, HOME_TENANT, HUB_KEY, SENTINEL_RULE, Peers


@pytest.fixture
def peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cloud: FakeCloud) -> Iterator[Peers]:
    require_syslog_ng()
    cloud.add_tenant(HOME_TENANT, client_id=CLIENT_ID, secret=SECRET)
    login = {"tenant_id": HOME_TENANT, "client_id": CLIENT_ID, "client_secret": "env:DF_TEST_CLIENT_SECRET",
             "authority": cloud.base_url, "ca_file": str(cloud.write_ca(tmp_path / "sentinel-ca.pem"))}
    with SyslogNg(tmp_path / "syslog-ng") as syslog, HecPeer(tokens={HEC_TOKEN: TokenSettings()}) as hec, \
            EsPeer(api_key=ES_KEY) as es, EventHubPeer() as hub, \
            LogsIngestionPeer(cloud, streams=declared_streams(), rule_id=SENTINEL_RULE, ca=cloud.ca) as sentinel:
        monkeypatch.setenv("DF_CRASH_HEC_TOKEN", HEC_TOKEN)
        monkeypatch.setenv("DF_CRASH_ES_KEY", ES_KEY)
        monkeypatch.setenv("DF_CRASH_EH", hub.connection_string(key=HUB_KEY))
        monkeypatch.setenv("DF_TEST_CLIENT_SECRET", SECRET)
        yield Peers(syslog, hec, es, hub, sentinel, login)
