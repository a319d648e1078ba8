"""`type = "splunk_modinput"`: events as a Splunk modular input streams them, XML on standard
output, for splunkd that started the process (the add-on `TA-defender-forwarder`; the
modular input in `core.app.splunk_input` sets this sink up, an operator's config does not).

Each event is one `<event>` of splunklib's `EventWriter` stream: `time` (the version's
lastUpdateDateTime), `host`, `source`, `sourcetype`, `index` as the HEC sink places them
(`connectors.splunk_events`), `data` the body in the sink's format. splunklib flushes after
each event. A batch counts as delivered once every event of it is written and flushed: from
there on it is splunkd's (docs/splunk-addon.md says what that guarantees, and what HEC's
indexer acknowledgement adds).

Status table: BrokenPipeError -> the sink stops (splunkd is gone, the outbox keeps the rest);
an event whose XML cannot be made -> dead letter with the reason; other OSError -> retry.
XML 1.0 has no place for most control characters; a JSON body never holds them raw, a CEF or
text body may: they are written as `\\uXXXX` (counted as `escaped`), never dropped.
"""
from __future__ import annotations

import re
import socket
import sys
from typing import Any, TextIO

from splunklib.modularinput import Event as SplunkEvent
from splunklib.modularinput import EventWriter

from connectors.base import DELIVERED, Connector, Event, EventResult, Outcome, SinkConfig, SinkFatal
from connectors.splunk_events import EventPlacement, SplunkEventSettings

# What XML 1.0 cannot carry (https://www.w3.org/TR/xml/#charsets): C0 controls but tab, LF and
# CR; lone surrogates; U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class SplunkModinputSinkConfig(SinkConfig, SplunkEventSettings):
    type: str = "splunk_modinput"
    format: str = "raw"
    stanza: str = "defender_forwarder://default"
    index: str | None = None  # the input's own index (its stanza's `index`) unless set


class SplunkModinputConnector(Connector):
    config_model = SplunkModinputSinkConfig
    config: SplunkModinputSinkConfig

    def __init__(self, name: str, config: SplunkModinputSinkConfig, shortener: Any = None,
                 output: TextIO | None = None) -> None:
        super().__init__(name, config, shortener)
        self.writer = EventWriter(output or sys.stdout, sys.stderr)
        self.placement = EventPlacement(config, config.host or socket.gethostname() or "defender-forwarder")

    async def send(self, batch: list[Event]) -> list[EventResult]:
        results: list[EventResult] = []
        for event in batch:
            try:
                splunk_event = self._event(event)
            except (UnicodeDecodeError, ValueError) as err:
                results.append(EventResult(Outcome.PERMANENT, f"not writable as a modular input event: {err}"))
                continue
            try:
                self.writer.write_event(splunk_event)
            except BrokenPipeError:
                raise SinkFatal("standard output was closed: splunkd stopped reading this input") from None
            results.append(DELIVERED)
        return results

    def _event(self, event: Event) -> SplunkEvent:
        meta = event.meta
        placement = self.placement.of(meta.tenant_id, meta.tenant_label, meta.kind)
        data = event.body.decode("utf-8")
        if _NOT_XML.search(data):
            data = _NOT_XML.sub(lambda found: f"\\u{ord(found.group()):04x}", data)
            self.counters["escaped"] = self.counters.get("escaped", 0) + 1
        return SplunkEvent(data=data, stanza=self.config.stanza, time=f"{meta.time:.3f}",
                           host=placement["host"], index=placement.get("index"), source=placement["source"],
                           sourcetype=placement["sourcetype"])

    async def probe(self) -> str:
        return "standard output, read by splunkd"

    async def close(self) -> None:
        try:
            self.writer.close()  # `</stream>`, when an event was written
        except BrokenPipeError:
            pass


CONNECTOR = SplunkModinputConnector
