"""`type = "splunk_modinput"`: events as a Splunk modular input streams them, XML on standard
output, for splunkd that started the process (the add-on `TA-defender-forwarder`; the
modular input in `core.app.splunk_input` sets this sink up, an operator's config does not).

Each event is one `<event>` of the stream splunklib's `EventWriter` writes: `time` (the
version's lastUpdateDateTime), `host`, `source`, `sourcetype`, `index` as the HEC sink places
them (`connectors.splunk_events`), `data` the body in the sink's format. The XML is made here as
one string, byte for byte what splunklib's `Event.write_to` makes through ElementTree
(tests/connectors/test_splunk_modinput.py holds them equal): ElementTree cost ~60 µs an event,
more than the rest of the delivery path (bench/ship_splunk_modinput.py). Flushed after each
event, as splunklib does. A batch counts as delivered once every event of it is written and
flushed: from there on it is splunkd's (docs/splunk-addon.md says what that guarantees, and what
HEC's indexer acknowledgement adds).

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

from connectors.base import DELIVERED, Connector, Event, EventResult, Outcome, SinkConfig, SinkFatal
from connectors.splunk_events import EventPlacement, SplunkEventSettings

# What XML 1.0 cannot carry (https://www.w3.org/TR/xml/#charsets): C0 controls but tab, LF and
# CR; lone surrogates; U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# The same in a body's UTF-8 bytes (strict UTF-8 has no surrogates): deleting the control bytes
# and looking for U+FFFE/U+FFFF's encodings (only where their lead byte EF is: a one-byte search
# is a memchr, ~1 µs, a three-byte one ~7 µs) is ~7 µs a 5 kB body, the regex on the text ~37 µs.
_CONTROL_BYTES = bytes([*range(0x09), 0x0b, 0x0c, *range(0x0e, 0x20)])
_NONCHARACTERS = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")
# ElementTree's escaping (xml.etree.ElementTree._escape_cdata, _escape_attrib; the same in
# Python 3.9 to 3.13): text escapes & < >, an attribute also " and CR, LF, tab.
_TEXT_ENTITIES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))
_ATTRIBUTE_ENTITIES = (*_TEXT_ENTITIES, ('"', "&quot;"), ("\r", "&#13;"), ("\n", "&#10;"), ("\t", "&#09;"))
# The elements between <time> and <data>, in splunklib's order; one absent (no index) is left out.
_PLACEMENT_ELEMENTS = ("source", "sourcetype", "index", "host")


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
        self.output = output or sys.stdout
        self.started = False  # `<stream>` written
        self.placement = EventPlacement(config, config.host or socket.gethostname() or "defender-forwarder")
        self._opening = f'<event stanza="{_escaped(config.stanza, _ATTRIBUTE_ENTITIES)}" unbroken="1"><time>'
        self._fields: dict[tuple[str, str, str], str] = {}  # (tenant, label, kind) -> source..host, escaped

    async def send(self, batch: list[Event]) -> list[EventResult]:
        results: list[EventResult] = []
        for event in batch:
            try:
                xml = self._event(event)
            except (UnicodeDecodeError, ValueError) as err:
                results.append(EventResult(Outcome.PERMANENT, f"not writable as a modular input event: {err}"))
                continue
            try:
                if not self.started:
                    self.output.write("<stream>")
                    self.started = True
                self.output.write(xml)
                self.output.flush()
            except BrokenPipeError:
                raise SinkFatal("standard output was closed: splunkd stopped reading this input") from None
            results.append(DELIVERED)
        return results

    def _event(self, event: Event) -> str:
        """The event's `<event>` element as splunklib's `Event.write_to` writes it: its elements
        in splunklib's order, ElementTree's escaping, every non-ASCII character as a decimal
        character reference (ElementTree's us-ascii output)."""
        meta = event.meta
        body = event.body
        data = body.decode("utf-8")
        if len(body.translate(None, _CONTROL_BYTES)) != len(body) or (
                b"\xef" in body and (_NONCHARACTERS[0] in body or _NONCHARACTERS[1] in body)):
            data = _NOT_XML.sub(lambda found: f"\\u{ord(found.group()):04x}", data)
            self.counters["escaped"] = self.counters.get("escaped", 0) + 1
        xml = (f"{self._opening}{meta.time:.3f}</time>{self._fields_of(meta.tenant_id, meta.tenant_label, meta.kind)}"
               f"<data>{_escaped(data, _TEXT_ENTITIES)}</data><done /></event>")
        return xml if xml.isascii() else xml.encode("ascii", "xmlcharrefreplace").decode("ascii")

    def _fields_of(self, tenant_id: str, label: str, kind: str) -> str:
        key = (tenant_id, label, kind)
        fields = self._fields.get(key)
        if fields is None:
            placement = self.placement.of(tenant_id, label, kind)
            fields = self._fields[key] = "".join(f"<{name}>{_escaped(placement[name], _TEXT_ENTITIES)}</{name}>"
                                                 for name in _PLACEMENT_ELEMENTS if placement.get(name) is not None)
        return fields

    async def probe(self) -> str:
        return "standard output, read by splunkd"

    async def close(self) -> None:
        try:
            if self.started:
                self.output.write("</stream>")
            self.output.flush()
        except BrokenPipeError:
            pass


def _escaped(text: str, entities: tuple[tuple[str, str], ...]) -> str:
    for char, entity in entities:
        if char in text:
            text = text.replace(char, entity)
    return text


CONNECTOR = SplunkModinputConnector
