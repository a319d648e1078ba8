"""The Splunk HEC test peer, driven by httpx (the client library the connector uses).

No mocking: every check below sends bytes across a loopback socket to tests/peers/hec_peer.py.
Expected texts and statuses are written out here from Splunk's documented table, not taken
from the peer module, so a typo in the peer's table fails a test.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers import hec_peer
from tests.peers.hec_peer import HEC_CODES, HecPeer, TokenSettings

REPO = Path(__file__).resolve().parents[2]
EVENT = "/services/collector/event"
ACK = "/services/collector/ack"
HEALTH = "/services/collector/health"

# HEC tokens are GUIDs.
TOKEN = "5f3c8a1e-0b2d-4c6e-9f10-000000000001"  # any index, no ack
ACK_TOKEN = "5f3c8a1e-0b2d-4c6e-9f10-000000000002"  # useACK
DISABLED = "5f3c8a1e-0b2d-4c6e-9f10-000000000003"
SECURITY = "5f3c8a1e-0b2d-4c6e-9f10-000000000004"  # allowed: security, ops; default security

SPLUNK_TABLE: dict[int, tuple[int, str]] = {
    0: (200, "Success"), 1: (403, "Token disabled"), 2: (401, "Token is required"),
    3: (401, "Invalid authorization"), 4: (403, "Invalid token"), 5: (400, "No data"),
    6: (400, "Invalid data format"), 7: (400, "Incorrect index"), 8: (500, "Internal server error"),
    9: (503, "Server is busy"), 10: (400, "Data channel is missing"), 11: (400, "Invalid data channel"),
    12: (400, "Event field is required"), 13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"), 15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"), 17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"), 19: (503, "HEC is unhealthy, ack service unavailable"),
    20: (503, "HEC is unhealthy, queues are full, ack service unavailable"),
    21: (400, "Invalid token"), 22: (400, "Token disabled"),
}


def tokens() -> dict[str, TokenSettings]:
    return {
        TOKEN: TokenSettings(),
        ACK_TOKEN: TokenSettings(use_ack=True),
        DISABLED: TokenSettings(disabled=True),
        SECURITY: TokenSettings(indexes={"security", "ops"}, default_index="security"),
    }


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def peer() -> Iterator[HecPeer]:
    with HecPeer(tokens()) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    # One peer for the module; each test starts from an empty peer with default settings.
    if "peer" in request.fixturenames:
        shared: HecPeer = request.getfixturevalue("peer")
        shared.reset()
        shared.ack_delay, shared.partial_accept = 0.0, True
    yield


@pytest.fixture(params=["orjson", "stdlib"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both envelope parsers of the peer must give the same answers (the peer runs in-process)."""
    if request.param == "stdlib":
        monkeypatch.setattr(hec_peer, "_orjson", None)
    elif hec_peer._orjson is None:
        pytest.skip("orjson is not installed")
    return str(request.param)


@pytest.fixture(scope="module")
def client(peer: HecPeer) -> Iterator[httpx.Client]:
    with connect(peer) as running:
        yield running


def connect(peer: HecPeer) -> httpx.Client:
    # trust_env=False: the image sets proxy and CA variables that must not reach loopback.
    return httpx.Client(base_url=peer.url, verify=peer.client_ssl_context(), trust_env=False, timeout=5)


def envelopes(*items: dict[str, Any] | str) -> bytes:
    """One envelope per line, the way Vector, OTel and the Java library batch."""
    return b"\n".join((item if isinstance(item, str) else json.dumps(item)).encode() for item in items)


def post(client: httpx.Client, body: bytes, *, token: str | None = TOKEN, channel: str | None = None,
         compress: bool = False, path: str = EVENT, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"Content-Type": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Splunk {token}"
    if channel is not None:
        sent["X-Splunk-Request-Channel"] = channel
    if compress:
        sent["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    return client.post(path, content=body, headers={**sent, **(headers or {})})


def ack_query(client: httpx.Client, channel: str, ack_ids: list[int], token: str = ACK_TOKEN) -> dict[str, bool]:
    response = post(client, json.dumps({"acks": ack_ids}).encode(), token=token, channel=channel, path=ACK)
    assert response.status_code == 200, response.text
    return response.json()["acks"]


def assert_hec(response: httpx.Response, code: int, **extra: Any) -> None:
    status, text = SPLUNK_TABLE[code]
    assert (response.status_code, response.json()) == (status, {"text": text, "code": code, **extra})
    assert response.headers["content-type"] == "application/json; charset=UTF-8"


ONE = envelopes({"event": {"id": "a1"}})


# ---------------------------------------------------------------- table, auth, success

def test_code_table_is_splunks() -> None:
    assert HEC_CODES == SPLUNK_TABLE


@pytest.mark.parametrize(("authorization", "code"), [
    (None, 2),
    (f"Bearer {TOKEN}", 3),  # the usual mistake: not the `Splunk ` scheme
    (TOKEN, 3),
    ("Splunk", 3),  # the scheme without a token
    ("Splunk 00000000-0000-0000-0000-000000000000", 4),
    (f"Splunk {DISABLED}", 1),
])
def test_authorization_codes(peer: HecPeer, client: httpx.Client, authorization: str | None, code: int) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = post(client, ONE, token=None, headers=headers)
    assert_hec(response, code)
    assert peer.events() == []
    assert peer.requests[-1].authorization == authorization


def test_query_string_token_is_not_enabled(client: httpx.Client) -> None:
    response = client.post(f"{EVENT}?token={TOKEN}", content=ONE)
    assert_hec(response, 16)


def test_gzip_batch_of_three_is_stored_with_metadata(peer: HecPeer, client: httpx.Client, parser: str) -> None:
    first = {"time": 1697795647.503, "host": "tenant-a", "source": "mssp:tenant-a",
             "sourcetype": "ms365:defender:incident:alerts", "index": "security",
             "fields": {"tenant_id": "t-a", "tags": ["x", "y"]}, "event": {"id": "a1", "severity": "high"}}
    second = {"time": "1697795648", "event": "plain text event"}  # numeric string time, default index
    third = {"event": {"id": "a3"}, "index": "ops"}
    body = envelopes(first, second, third)
    channel = str(uuid.uuid4())

    response = post(client, body, token=SECURITY, channel=channel, compress=True)

    assert_hec(response, 0)
    stored = peer.events()
    assert [e["event"] for e in stored] == [first["event"], "plain text event", {"id": "a3"}]
    assert stored[0] == {"index": "security", "sourcetype": "ms365:defender:incident:alerts",
                         "source": "mssp:tenant-a", "host": "tenant-a", "time": 1697795647.503,
                         "fields": {"tenant_id": "t-a", "tags": ["x", "y"]}, "event": first["event"],
                         "raw": json.dumps(first).encode(), "channel": channel,
                         "request": peer.requests[-1].number}
    assert (stored[1]["index"], stored[1]["time"], stored[1]["sourcetype"]) == ("security", 1697795648.0, None)
    assert [e["raw"] for e in stored] == body.split(b"\n")
    assert peer.indexes() == {"security", "ops"}
    assert [e["event"] for e in peer.events("ops")] == [{"id": "a3"}]
    request = peer.requests[-1]
    assert (request.path, request.status, request.code, request.events, request.gzip, request.channel,
            request.authorization) == (EVENT, 200, 0, 3, True, channel, f"Splunk {SECURITY}")
    assert request.content_length == len(response.request.content) < len(body)


def test_envelope_framing_back_to_back_and_pretty(peer: HecPeer, client: httpx.Client, parser: str) -> None:
    pretty = json.dumps({"event": {"id": "p", "list": [1, 2]}, "host": "h"}, indent=2)
    body = f'{{"event":"a"}}{{"event":"b"}}  \r\n\t{pretty}\n\n{{"event":"c"}}\n'.encode()
    assert_hec(post(client, body), 0)
    assert [e["event"] for e in peer.events()] == ["a", "b", {"id": "p", "list": [1, 2]}, "c"]
    assert peer.events()[2]["raw"] == pretty.encode()


@pytest.mark.parametrize("path", ["/services/collector", "/services/collector/event/1.0"])
def test_event_endpoint_aliases(peer: HecPeer, client: httpx.Client, path: str) -> None:
    assert_hec(post(client, ONE, path=path), 0)
    assert len(peer.events()) == 1


def test_unknown_path_is_404(client: httpx.Client) -> None:
    response = post(client, ONE, path="/services/collector/raw")
    assert response.status_code == 404
    assert response.json()["text"] == "The requested URL was not found on this server."


# ---------------------------------------------------------------- data and channel errors

GOOD = {"event": {"id": "ok"}}
DATA_CASES = [  # id, token, body, code, invalid-event-number (None: the answer has none)
    ("empty body", TOKEN, b"", 5, None),
    ("whitespace only", TOKEN, b" \r\n\t\n", 5, None),
    ("not JSON", TOKEN, envelopes(GOOD, '{"event": nope}'), 6, 1),
    ("truncated JSON", TOKEN, envelopes(GOOD, GOOD) + b'\n{"event": "x"', 6, 2),
    ("not an object", TOKEN, envelopes(GOOD, '["event", "x"]'), 6, 1),
    ("NaN is not JSON", TOKEN, envelopes('{"event": "x", "time": NaN}'), 6, 0),
    ("invalid UTF-8", TOKEN, envelopes(GOOD) + b'\n{"event": "caf\xe9"}', 6, 1),
    ("time not numeric", TOKEN, envelopes(GOOD, {"event": "x", "time": "yesterday"}), 6, 1),
    ("time is a bool", TOKEN, envelopes({"event": "x", "time": True}), 6, 0),
    ("host not a string", TOKEN, envelopes(GOOD, {"event": "x", "host": 7}), 6, 1),
    ("event is a number", TOKEN, envelopes({"event": 42}), 6, 0),
    ("index not allowed", SECURITY, envelopes({"event": "x", "index": "ops"}, {"event": "y", "index": "main"}), 7, 1),
    ("empty index", SECURITY, envelopes({"event": "x", "index": ""}), 7, 0),
    ("no event", TOKEN, envelopes(GOOD, GOOD, {"host": "h", "fields": {}}), 12, 2),
    ("event empty string", TOKEN, envelopes(GOOD, {"event": ""}), 13, 1),
    ("event null", TOKEN, envelopes({"event": None}), 13, 0),
    ("event empty object", TOKEN, envelopes({"event": {}}), 13, 0),
    ("nested fields", TOKEN, envelopes(GOOD, {"event": "x", "fields": {"a": {"b": "c"}}}), 15, 1),
    ("numeric field", TOKEN, envelopes({"event": "x", "fields": {"n": 1}}), 15, 0),
    ("list of numbers field", TOKEN, envelopes({"event": "x", "fields": {"n": ["a", 1]}}), 15, 0),
    ("fields not an object", TOKEN, envelopes({"event": "x", "fields": ["a"]}), 15, 0),
]


@pytest.mark.parametrize(("token", "body", "code", "number"), [case[1:] for case in DATA_CASES],
                         ids=[case[0] for case in DATA_CASES])
def test_data_errors(peer: HecPeer, client: httpx.Client, parser: str, token: str, body: bytes, code: int,
                     number: int | None) -> None:
    response = post(client, body, token=token)
    extra = {} if number is None else {"invalid-event-number": number}
    assert_hec(response, code, **extra)
    # partial_accept (the default): the envelopes before the bad one are stored.
    assert len(peer.events()) == (number or 0)
    assert peer.requests[-1].invalid_event_number == number


def test_gzip_that_does_not_gunzip_is_invalid_data(peer: HecPeer, client: httpx.Client) -> None:
    response = post(client, b"\x1f\x8b not really gzip", headers={"Content-Encoding": "gzip"})
    assert_hec(response, 6, **{"invalid-event-number": 0})


def test_unsupported_content_encoding_is_415(peer: HecPeer, client: httpx.Client) -> None:
    response = post(client, ONE, headers={"Content-Encoding": "br"})
    assert (response.status_code, response.content) == (415, b"")
    assert peer.events() == []


def test_chunked_upload(peer: HecPeer, client: httpx.Client) -> None:
    chunks = [b'{"event":"a"}', b'\n{"event"', b':"b"}']
    # An iterator makes httpx send Transfer-Encoding: chunked.
    response = client.post(EVENT, content=iter(chunks), headers={"Authorization": f"Splunk {TOKEN}"})
    assert_hec(response, 0)
    assert [e["event"] for e in peer.events()] == ["a", "b"]
    assert peer.requests[-1].content_length == sum(map(len, chunks))


@pytest.mark.parametrize(("token", "channel", "code"), [
    (ACK_TOKEN, None, 10),
    (ACK_TOKEN, "not-a-guid", 11),
    (TOKEN, "12345", 11),  # a channel that is given is checked even without useACK
])
def test_channel_errors(peer: HecPeer, client: httpx.Client, token: str, channel: str | None, code: int) -> None:
    assert_hec(post(client, ONE, token=token, channel=channel), code)
    assert peer.events() == []


def test_channel_in_query_string(peer: HecPeer, client: httpx.Client) -> None:
    channel = str(uuid.uuid4())
    response = post(client, ONE, token=ACK_TOKEN, path=f"{EVENT}?channel={channel}")
    assert_hec(response, 0, ackId=0)
    assert peer.events()[0]["channel"] == channel
    assert_hec(post(client, ONE, token=ACK_TOKEN, path=f"{EVENT}?channel=nope"), 11)


def test_channel_is_optional_without_ack(peer: HecPeer, client: httpx.Client) -> None:
    assert_hec(post(client, ONE), 0)  # no ackId without useACK
    assert peer.events()[0]["channel"] is None


@pytest.mark.parametrize("partial_accept", [True, False])
def test_partial_accept(peer: HecPeer, client: httpx.Client, partial_accept: bool) -> None:
    peer.partial_accept = partial_accept
    body = envelopes({"event": "e0"}, {"event": "e1"}, {"host": "no event"}, {"event": "e3"})
    assert_hec(post(client, body), 12, **{"invalid-event-number": 2})
    assert [e["event"] for e in peer.events()] == (["e0", "e1"] if partial_accept else [])
    assert peer.requests[-1].events == (2 if partial_accept else 0)


def test_reject_events_hook(peer: HecPeer, client: httpx.Client) -> None:
    peer.reject_events(lambda envelope: isinstance(envelope.get("event"), dict)
                       and envelope["event"].get("id") == "poison")
    body = envelopes({"event": {"id": "ok"}}, {"event": {"id": "poison"}}, {"event": {"id": "late"}})
    assert_hec(post(client, body), 6, **{"invalid-event-number": 1})
    assert [e["event"]["id"] for e in peer.events()] == ["ok"]
    peer.reject_events(None)
    assert_hec(post(client, body), 0)


def test_a_hook_that_raises_is_a_500(peer: HecPeer, client: httpx.Client, capsys: pytest.CaptureFixture[str]) -> None:
    peer.reject_events(lambda envelope: 1 / 0 > 0)
    assert_hec(post(client, ONE), 8)
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert peer.events() == []


# ---------------------------------------------------------------- indexer acknowledgement

def test_ack_ids_count_per_channel_and_are_forgotten_once_true(peer: HecPeer, client: httpx.Client) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert [post(client, ONE, token=ACK_TOKEN, channel=first).json()["ackId"] for _ in range(3)] == [0, 1, 2]
    assert_hec(post(client, ONE, token=ACK_TOKEN, channel=second), 0, ackId=0)

    assert ack_query(client, first, [0, 1, 7]) == {"0": True, "1": True, "7": False}
    assert ack_query(client, first, [0, 1, 2]) == {"0": False, "1": False, "2": True}  # 0 and 1 forgotten
    assert ack_query(client, second, [0]) == {"0": True}
    assert [r.ack_id for r in peer.requests if r.path == EVENT] == [0, 1, 2, 0]


def test_ack_endpoint_errors(client: httpx.Client) -> None:
    channel = str(uuid.uuid4())
    assert_hec(post(client, b'{"acks":[0]}', token=TOKEN, channel=channel, path=ACK), 14)
    assert_hec(post(client, b'{"acks":[0]}', token=ACK_TOKEN, path=ACK), 10)
    assert_hec(post(client, b'{"acks":[0]}', token=ACK_TOKEN, channel="x", path=ACK), 11)
    assert_hec(post(client, b'{"acks":"0"}', token=ACK_TOKEN, channel=channel, path=ACK), 6)
    assert_hec(post(client, b'{"acks":[0]}', token=None, channel=channel, path=ACK), 2)


def test_drop_acks_loses_the_events_and_never_acknowledges(peer: HecPeer, client: httpx.Client) -> None:
    channel = str(uuid.uuid4())
    peer.drop_acks(1)
    lost = post(client, envelopes({"event": "lost"}), token=ACK_TOKEN, channel=channel)
    kept = post(client, envelopes({"event": "kept"}), token=ACK_TOKEN, channel=channel)
    assert_hec(lost, 0, ackId=0)  # the client cannot tell from the answer
    assert_hec(kept, 0, ackId=1)
    assert ack_query(client, channel, [0, 1]) == {"0": False, "1": True}
    time.sleep(0.1)
    assert ack_query(client, channel, [0]) == {"0": False}
    assert [e["event"] for e in peer.events()] == ["kept"]
    assert [(r.ack_id, r.lost, r.events) for r in peer.requests if r.path == EVENT] == [(0, True, 0), (1, False, 1)]


def test_ack_delay(peer: HecPeer, client: httpx.Client) -> None:
    channel = str(uuid.uuid4())
    peer.ack_delay = 0.3
    assert_hec(post(client, ONE, token=ACK_TOKEN, channel=channel), 0, ackId=0)
    assert ack_query(client, channel, [0]) == {"0": False}
    time.sleep(0.35)
    assert ack_query(client, channel, [0]) == {"0": True}
    assert ack_query(client, channel, [0]) == {"0": False}


# ---------------------------------------------------------------- busy, health, forced codes

def test_busy_for_a_number_of_requests(peer: HecPeer, client: httpx.Client) -> None:
    peer.busy(requests=2)
    assert_hec(client.get(HEALTH), 18)
    assert_hec(post(client, ONE), 9)
    assert_hec(post(client, ONE), 9)
    assert peer.events() == []
    assert_hec(client.get(HEALTH), 17)
    assert_hec(post(client, ONE), 0)
    assert len(peer.events()) == 1


def test_busy_for_a_time(peer: HecPeer, client: httpx.Client) -> None:
    peer.busy(seconds=0.3)
    assert_hec(post(client, ONE), 9)
    assert_hec(client.get("/services/collector/health/1.0"), 18)
    assert_hec(post(client, ONE), 9)
    time.sleep(0.35)
    assert_hec(client.get(HEALTH), 17)
    assert_hec(post(client, ONE), 0)
    assert len(peer.events()) == 1


@pytest.mark.parametrize(("query", "headers", "code"), [
    ("", {}, 17),
    ("", {"Authorization": f"Splunk {TOKEN}"}, 17),
    ("?token=00000000-0000-0000-0000-000000000000", {}, 21),
    ("", {"Authorization": "Splunk 00000000-0000-0000-0000-000000000000"}, 21),
    (f"?token={DISABLED}", {}, 22),
    ("", {"Authorization": f"Splunk {DISABLED}"}, 22),
])
def test_health_token(client: httpx.Client, query: str, headers: dict[str, str], code: int) -> None:
    assert_hec(client.get(HEALTH + query, headers=headers), code)


def test_force_every_code(peer: HecPeer, client: httpx.Client) -> None:
    for code, (status, text) in SPLUNK_TABLE.items():
        peer.force(code)
        response = post(client, ONE)
        expected: dict[str, Any] = {"text": text, "code": code}
        if code in (6, 7, 12, 13, 15):
            expected["invalid-event-number"] = 0
        assert (response.status_code, response.json()) == (status, expected), code
        assert len(peer.events()) == (code == 0), code  # only the forced 0 stores
        peer.reset()


def test_force_several_times_then_normal(peer: HecPeer, client: httpx.Client) -> None:
    peer.force(8, times=2)
    assert [post(client, ONE).status_code for _ in range(3)] == [500, 500, 200]
    assert len(peer.events()) == 1
    with pytest.raises(ValueError):
        peer.force(23)


# ---------------------------------------------------------------- size, lifecycle, speed

def test_max_content_length_is_413() -> None:
    with HecPeer(tokens(), max_content_length=1000) as small, connect(small) as client:
        too_long = envelopes({"event": "x" * 2000})
        response = post(client, too_long)
        assert (response.status_code, response.json()) == (413, {"text": "Content too large", "code": 413})
        # Over the limit only once gunzipped: still 413.
        big_but_compressible = envelopes(*[{"event": "y" * 100}] * 20)
        response = post(client, big_but_compressible, compress=True)
        assert len(response.request.content) < 1000 < len(big_but_compressible)
        assert response.status_code == 413
        assert small.events() == []
        # The body was read, so the same keep-alive connection goes on.
        assert_hec(post(client, envelopes(*[{"event": "z" * 50}] * 10), compress=True), 0)
        assert len(small.events()) == 10
        assert [r.status for r in small.requests] == [413, 413, 200]


def test_restart_keeps_port_and_events_forgets_acks() -> None:
    with HecPeer(tokens()) as restarting, connect(restarting) as client:
        channel = str(uuid.uuid4())
        assert_hec(post(client, envelopes({"event": "before"})), 0)
        assert_hec(post(client, ONE, token=ACK_TOKEN, channel=channel), 0, ackId=0)
        port = restarting.port
        restarting.stop()
        with pytest.raises(httpx.ConnectError):
            post(client, envelopes({"event": "while down"}))
        restarting.start()
        assert restarting.port == port and restarting.url.endswith(f":{port}")
        assert_hec(post(client, envelopes({"event": "after"})), 0)
        assert [e["event"] for e in restarting.events()] == ["before", {"id": "a1"}, "after"]
        restarting.restart()  # restart() also clears the ack channels, as a splunkd restart does
        assert ack_query(client, channel, [0]) == {"0": False}
        assert_hec(post(client, ONE, token=ACK_TOKEN, channel=channel), 0, ackId=0)


def test_wait_for(peer: HecPeer, client: httpx.Client) -> None:
    post(client, envelopes({"event": "a", "index": "x"}, {"event": "b"}))
    assert [e["event"] for e in peer.wait_for(1, timeout=1, index="x")] == ["a"]
    with pytest.raises(AssertionError, match="stored 2 of 3"):
        peer.wait_for(3, timeout=0.1)


def test_keep_alive_answers_are_not_delayed_by_nagle(peer: HecPeer, client: httpx.Client) -> None:
    # With Nagle on, each answer waits ~40 ms for the client's delayed ACK: 50 requests ~2 s.
    started = time.perf_counter()
    for _ in range(50):
        assert post(client, ONE).status_code == 200
    assert time.perf_counter() - started < 1.0


def test_concurrent_clients(peer: HecPeer) -> None:
    clients = [connect(peer) for _ in range(8)]

    def send(worker: int) -> list[int]:
        return [post(clients[worker], envelopes({"event": f"{worker}-{n}"}, {"event": "pair"})).status_code
                for n in range(20)]

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = [status for result in pool.map(send, range(8)) for status in result]
    finally:
        for each in clients:
            each.close()
    assert statuses == [200] * 160
    stored = peer.events()
    assert len(stored) == 320
    assert {e["event"] for e in stored} == {f"{w}-{n}" for w in range(8) for n in range(20)} | {"pair"}
    assert len({r.number for r in peer.requests}) == 160


@pytest.mark.parametrize("options", [["--count-only"], ["--http", "--ack"]], ids=["tls-count-only", "http-ack"])
def test_standalone_process(tmp_path: Path, options: list[str]) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.hec_peer", "--port", "0", "--token", "T",
         "--ready-file", str(ready), *options],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "HEC peer did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid
        assert info["url"].startswith("http://" if "--http" in options else "https://")
        verify: Any = True if "--http" in options else ssl.create_default_context(cafile=info["ca_file"])
        channel = str(uuid.uuid4()) if "--ack" in options else None
        with httpx.Client(base_url=info["url"], verify=verify, trust_env=False, timeout=5) as client:
            first = post(client, envelopes(*[{"event": {"n": i}} for i in range(3)]), token="T",
                         channel=channel, compress=True)
            second = post(client, envelopes({"event": "x"}, {"event": "y"}), token="T", channel=channel)
            assert (first.status_code, second.status_code) == (200, 200)
            if channel:
                assert (first.json()["ackId"], second.json()["ackId"]) == (0, 1)
            assert_hec(post(client, b'{"event": ""}', token="T", channel=channel), 13, **{"invalid-event-number": 0})
            assert client.get("/stats").json() == {"events": 5, "requests": 3}
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[0])["url"] == info["url"]
    assert json.loads(stderr.strip().splitlines()[-1]) == {"events": 5, "requests": 3}
