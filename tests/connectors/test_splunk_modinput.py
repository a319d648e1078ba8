"""The modular input's sink writes the very bytes splunklib's EventWriter writes for the same
events (it builds the XML itself, for speed: bench/ship_splunk_modinput.py). The add-on's
behaviour under splunkd is tested in tests/app/."""
from __future__ import annotations

import asyncio
import io
import xml.etree.ElementTree as ET

from splunklib.modularinput import Event as SplunkEvent
from splunklib.modularinput import EventWriter

from connectors.base import Event, Outcome
from connectors.splunk_modinput import SplunkModinputConnector, SplunkModinputSinkConfig
from core.model.schema import EventMeta, Severity

TENANT = "7f3c1b2a-1111-4222-8333-444455556666"
# (label, kind, body, the body as `data` must read: control characters written as \uXXXX)
CASES = [
    ("contoso", "alert", b'{"title":"<script>&amp; \\"x\\" > y","who":"caf\xc3\xa9 \xf0\x9f\x98\x80"}', None),
    ("fabrikam", "incident", b'{"id":"1","note":"tab\there\r\nnew line"}', None),
    ("contoso", "alert", b"CEF:0|Microsoft|Defender|1|x|bell\x07 and nul\x00 and \xef\xbf\xbe|5|msg=a<b",
     "CEF:0|Microsoft|Defender|1|x|bell\\u0007 and nul\\u0000 and \\ufffe|5|msg=a<b"),
    ("fabrikam", "alert", b'{"only":"a noncharacter \xef\xbf\xbf, no control"}',
     '{"only":"a noncharacter \\uffff, no control"}'),
]


def meta(label: str, kind: str, index: int) -> EventMeta:
    return EventMeta(TENANT, label, f"alert-{index}", f"alert-{index}@v1", Severity.high, 1_764_000_000.123456 + index,
                     kind)


def splunklib_stream(config: SplunkModinputSinkConfig, host: str) -> str:
    """What a modular input writing the same events with splunklib's EventWriter writes."""
    out = io.StringIO()
    writer = EventWriter(out, io.StringIO())
    for number, (label, kind, body, data) in enumerate(CASES):
        sourcetype = config.sourcetype_for_format(kind)
        index = f"mssp_{label}" if label == "contoso" else None  # fabrikam: the input's own index
        writer.write_event(SplunkEvent(data=data or body.decode(), stanza=config.stanza,
                                       time=f"{meta(label, kind, number).time:.3f}", host=host, index=index,
                                       source=f"defender-forwarder:{TENANT}", sourcetype=sourcetype))
    writer.close()
    return out.getvalue()


def test_the_stream_is_byte_for_byte_splunklibs() -> None:
    config = SplunkModinputSinkConfig(stanza='defender_forwarder://a "b" & <c>\td', host="héte & <1>",
                                      indexes={"contoso": "mssp_contoso"})
    out = io.StringIO()
    connector = SplunkModinputConnector("splunk", config, output=out)
    events = [Event(number, meta(label, kind, number), body) for number, (label, kind, body, _) in enumerate(CASES)]

    results = asyncio.run(connector.send(events))
    asyncio.run(connector.close())

    assert [result.outcome for result in results] == [Outcome.OK] * len(CASES)
    assert out.getvalue() == splunklib_stream(config, "héte & <1>")
    assert connector.counters.get("escaped") == 2
    # Well-formed XML whose data reads back as each body (control characters as \uXXXX; a raw
    # CR LF as LF, as any XML parser's end-of-line handling reads it, splunklib's stream alike).
    parsed = ET.fromstring(out.getvalue())
    assert [node.findtext("data") for node in parsed] == [(data or body.decode()).replace("\r\n", "\n")
                                                          for _, _, body, data in CASES]
    assert "&#233;" in out.getvalue() and out.getvalue().isascii()


def test_a_body_that_is_not_utf8_is_refused_alone() -> None:
    out = io.StringIO()
    connector = SplunkModinputConnector("splunk", SplunkModinputSinkConfig(host="h"), output=out)
    events = [Event(0, meta("contoso", "alert", 0), b'{"a":"\xff"}'), Event(1, meta("contoso", "alert", 1), b'{"a":1}')]

    results = asyncio.run(connector.send(events))

    assert [result.outcome for result in results] == [Outcome.PERMANENT, Outcome.OK]
    assert out.getvalue().count("</event>") == 1 and '{"a":1}' in out.getvalue()
