"""The five network peers the reliability tests route every tenant to, at once: a real
syslog-ng (CEF over TCP), the HEC peer, the `_bulk` peer, the Event Hubs peer and the Logs
Ingestion API peer (Sentinel, signed in as an Entra app of the simulated cloud); with the sink
tables that point at them and what each has received."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.sentinel import ALERTS_STREAM, INCIDENTS_STREAM
from tests.cef_parser import parse as parse_cef
from tests.peers.es_peer import EsPeer
from tests.peers.eventhub_peer import EventHubPeer
from tests.peers.hec_peer import HecPeer
from tests.peers.logs_ingestion_peer import LogsIngestionPeer
from tests.peers.syslog_ng import SyslogNg

# Recognisable, so that test_secrets can look for them in everything the forwarder wrote.
HEC_TOKEN = "33333333-aaaa-4bbb-8ccc-SECRETfleet01"
ES_KEY = "SECRET-fleet-es-api-key"
HUB_KEY = "SECRET-fleet-eventhub-key"
# The MSSP's own tenant, where the Sentinel workspace is (in the simulated cloud, never polled).
HOME_TENANT = "9a8b7c6d-0000-4000-8000-5e171e1a0002"
SENTINEL_RULE = "dcr-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BATCH = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Peers:
    syslog: SyslogNg
    hec: HecPeer
    es: EsPeer
    hub: EventHubPeer
    sentinel: LogsIngestionPeer
    login: dict[str, str]  # the keys that sign the Sentinel sink in: tenant, app, login host, CA


def sinks(peers: Peers) -> dict[str, dict[str, Any]]:
    fast = {"batch_max_events": BATCH, "retry_initial": "0.05s", "retry_max": "0.5s"}
    return {
        "syslog": {"type": "syslog", "host": "127.0.0.1", "port": peers.syslog.ports["tcp"], "protocol": "tcp",
                   **fast},
        "splunk": {"type": "splunk_hec", "url": peers.hec.url, "token": "env:DF_CRASH_HEC_TOKEN",
                   "ca_file": str(peers.hec.ca_file), **fast},
        "elastic": {"type": "elasticsearch", "hosts": [peers.es.url], "api_key": "env:DF_CRASH_ES_KEY",
                    "ca_file": str(peers.es.ca_file), **fast},
        "hub": {"type": "eventhub", "connection_string": "env:DF_CRASH_EH", "format": "raw", "retry_total": 0,
                **fast},
        "sentinel": {"type": "sentinel", "endpoint": peers.sentinel.endpoint, "rule_id": SENTINEL_RULE,
                     "retry_total": 0, **peers.login, **fast},
    }


# What every sink can tell of an event version: (kind, tenant id, event id, lastUpdateDateTime
# in whole ms). The tenant too: the factory's incident ids are small numbers, and two tenants'
# incidents of one id and one time were once counted as one version received twice.
Version = tuple[str, str, str, int]


def received(peers: Peers) -> dict[str, Counter[Version]]:
    """Per sink: (kind, tenant id, event id, lastUpdateDateTime in ms) -> times received. Each sink says
    the kind its own way: CEF's Device Event Class, HEC's indexed field `kind`, the data
    stream of an Elasticsearch document, the Event Hubs property `kind`, the DCR stream of a
    Sentinel row. (An MDE alert is an
    alert: the same id and version key as its Graph twin, so it counts as the same version.)"""
    syslog = Counter(_cef_version(message["MSG"]) for message in peers.syslog.messages("tcp"))
    splunk = Counter(version(r["fields"]["version_key"], r["fields"]["kind"]) for r in peers.hec.events())
    elastic = Counter(version(doc["source"]["defender_forwarder"]["version_key"],
                              "incident" if ".incident-" in doc["index"] else "alert")
                      for doc in peers.es.documents())
    hub = Counter(version(event.message_id, event.application_properties["kind"]) for event in peers.hub.events())
    sentinel = Counter(version(row["VersionKey"], "alert") for row in peers.sentinel.records(ALERTS_STREAM))
    sentinel.update(version(row["VersionKey"], "incident") for row in peers.sentinel.records(INCIDENTS_STREAM))
    return {"syslog": syslog, "splunk": splunk, "elastic": elastic, "hub": hub, "sentinel": sentinel}


# CEF line -> its version: a waiting test reads every delivery again each time it asks, and
# parsing thousands of CEF lines again each time starved the peers (which share its process).
_CEF_VERSIONS: dict[str, Version] = {}


def _cef_version(line: str) -> Version:
    found = _CEF_VERSIONS.get(line)
    if found is None:
        cef = parse_cef(line)
        kind = "incident" if cef.signature_id == "incident" else "alert"
        found = _CEF_VERSIONS[line] = (kind, cef.extension["cs1"], cef.extension["cs3"], int(cef.extension["rt"]))
    return found


def version(version_key: str, kind: str = "alert") -> Version:
    """(kind, tenant id, event id, lastUpdateDateTime in whole ms): what every sink can tell (CEF
    carries ms)."""
    tenant_id, event_id, stamp = version_key.split("/", 2)
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return kind, tenant_id, event_id, (moment - EPOCH) // timedelta(milliseconds=1)
