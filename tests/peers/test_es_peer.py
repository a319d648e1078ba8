"""The Elasticsearch test peer, driven by the real client: elasticsearch-py 9 (sync and async).

No mocking: every check sends bytes across a loopback socket to tests/peers/es_peer.py, through
`Elasticsearch`, `AsyncElasticsearch` and `helpers.async_streaming_bulk`, the way the connector
will. Expected texts are written out here from Elasticsearch's documented answers, not taken
from the peer module, so a typo in the peer fails a test. A few raw-protocol
checks the client cannot provoke (a body without its last newline, a text/plain body) use httpx.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import elastic_transport
import httpx
import pytest
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    BadRequestError,
    Elasticsearch,
    NotFoundError,
    UnsupportedProductError,
)
from elasticsearch import ConnectionError as EsConnectionError
from elasticsearch.helpers import BulkIndexError, async_streaming_bulk

from tests.peers.es_peer import EsPeer

REPO = Path(__file__).resolve().parents[2]
DS_A = "logs-mssp_defender.alert-acme"
DS_B = "logs-mssp_defender.alert-globex"
TS = "2025-06-01T12:00:00.000Z"
VND_9 = "application/vnd.elasticsearch+json;compatible-with=9"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="  # base64("id:secret"), as ES issues


@pytest.fixture
def peer() -> Iterator[EsPeer]:
    with EsPeer() as server:
        yield server


def client(peer: EsPeer, **options: Any) -> Elasticsearch:
    if peer.tls and "ssl_assert_fingerprint" not in options:
        options.setdefault("ca_certs", str(peer.ca_file))
    options.setdefault("max_retries", 0)
    return Elasticsearch(peer.url, **options)


def async_client(peer: EsPeer, **options: Any) -> AsyncElasticsearch:
    if peer.tls and "ssl_assert_fingerprint" not in options:
        options.setdefault("ca_certs", str(peer.ca_file))
    options.setdefault("max_retries", 0)
    return AsyncElasticsearch(peer.url, **options)


def alert(index: str, _id: str, op: str = "create", **fields: Any) -> dict[str, Any]:
    source = {"@timestamp": TS, "event": {"id": _id}, **fields}
    return {"_op_type": op, "_index": index, "_id": _id, "_source": source}


def stream(peer: EsPeer, actions: list[dict[str, Any]], client_options: dict[str, Any] | None = None,
           **helper_options: Any) -> list[tuple[bool, dict[str, Any]]]:
    """async_streaming_bulk over AsyncElasticsearch (aiohttp), collected."""
    async def run() -> list[tuple[bool, dict[str, Any]]]:
        es = async_client(peer, **(client_options or {}))
        try:
            return [result async for result in async_streaming_bulk(es, actions, **helper_options)]
        finally:
            await es.close()
    return asyncio.run(run())


def ndjson(*lines: dict[str, Any]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


# ---------------------------------------------------------------- product, TLS, auth

def test_info_product_header_and_negotiated_content_type(peer: EsPeer) -> None:
    es = client(peer)
    info = es.info()
    assert info["version"]["number"] == "9.1.0"
    assert info["tagline"] == "You Know, for Search"
    assert {"name", "cluster_name", "cluster_uuid"} <= set(info.body)
    assert info.meta.headers["x-elastic-product"] == "Elasticsearch"
    assert info.meta.headers["content-type"] == VND_9
    assert "server" not in info.meta.headers and "date" not in info.meta.headers
    assert es.ping()
    first = peer.requests[0]
    assert (first.method, first.path, first.status) == ("GET", "/", 200)
    assert first.accept == "application/vnd.elasticsearch+json; compatible-with=9"
    with httpx.Client(verify=peer.client_ssl_context()) as raw:  # a plain-JSON client gets plain JSON
        answer = raw.get(peer.url + "/", headers={"Accept": "application/json"})
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-elastic-product"] == "Elasticsearch"


def test_product_check_fails_without_the_header(peer: EsPeer) -> None:
    peer.product_header = False
    with pytest.raises(UnsupportedProductError):
        client(peer).info()

    async def run() -> None:
        es = async_client(peer)
        try:
            with pytest.raises(UnsupportedProductError):
                await es.info()
        finally:
            await es.close()
    asyncio.run(run())
    peer.api_key = API_KEY  # an error answer is not product-checked: a 401 stays a 401
    with pytest.raises(AuthenticationException):
        client(peer).info()


def test_tls_ca_certs_and_fingerprint_connect_default_trust_store_fails(peer: EsPeer) -> None:
    assert client(peer).info()["tagline"] == "You Know, for Search"
    assert client(peer, ssl_assert_fingerprint=peer.fingerprint).ping()
    colons = ":".join(peer.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    assert client(peer, ssl_assert_fingerprint=colons).ping()
    with pytest.raises(elastic_transport.TlsError):
        Elasticsearch(peer.url, max_retries=0).info()
    with pytest.raises(elastic_transport.TlsError):
        client(peer, ssl_assert_fingerprint="00" * 32).info()

    async def run() -> None:
        for options in ({}, {"ssl_assert_fingerprint": peer.fingerprint}):
            es = async_client(peer, **options)
            try:
                assert (await es.info())["version"]["number"] == "9.1.0"
            finally:
                await es.close()
        es = AsyncElasticsearch(peer.url, max_retries=0)
        try:
            with pytest.raises(elastic_transport.TlsError):
                await es.info()
        finally:
            await es.close()
    asyncio.run(run())


def test_api_key_and_basic_auth(peer: EsPeer) -> None:
    peer.api_key, peer.basic = API_KEY, ("elastic", "changeme")
    with pytest.raises(AuthenticationException) as missing:
        client(peer).info()
    error = missing.value.body["error"]
    assert error["type"] == "security_exception"
    assert error["reason"] == "missing authentication credentials for REST request [/]"
    assert error["root_cause"][0]["type"] == "security_exception"
    assert "ApiKey" in missing.value.meta.headers["www-authenticate"]
    with pytest.raises(AuthenticationException) as wrong_key:
        client(peer, api_key="bm9wZTpub3Bl").info()
    assert wrong_key.value.body["error"]["reason"].startswith("unable to authenticate with provided credentials")
    with pytest.raises(AuthenticationException) as wrong_password:
        client(peer, basic_auth=("elastic", "nope")).info()
    assert wrong_password.value.body["error"]["reason"] == "unable to authenticate user [elastic] for REST request [/]"
    assert client(peer, api_key=API_KEY).ping()
    assert client(peer, basic_auth=("elastic", "changeme")).info()["version"]["number"] == "9.1.0"
    assert peer.requests[-2].authorization == f"ApiKey {API_KEY}"
    assert peer.requests[-1].authorization.startswith("Basic ")


def test_forbidden_bulk_is_403(peer: EsPeer) -> None:
    peer.api_key = API_KEY
    peer.forbidden = True
    es = client(peer, api_key=API_KEY)
    assert es.info()["tagline"] == "You Know, for Search"  # other actions stay allowed
    with pytest.raises(AuthorizationException) as refused:
        es.bulk(operations=[{"create": {"_index": DS_A, "_id": "x"}}, {"@timestamp": TS}])
    error = refused.value.body["error"]
    assert error["type"] == "security_exception"
    assert error["reason"].startswith(
        "action [indices:data/write/bulk] is unauthorized for API key id [VuaCfGcBCdbkQm-e5aOx]")
    assert peer.count() == 0


# ---------------------------------------------------------------- _bulk through the helper

def test_bulk_create_into_two_data_streams(peer: EsPeer) -> None:
    actions = [alert(DS_A, f"a-{i}") for i in range(3)] + [alert(DS_B, f"b-{i}") for i in range(2)]
    results = stream(peer, actions)
    assert [ok for ok, _ in results] == [True] * 5
    items = [item["create"] for _, item in results]
    assert [(i["_id"], i["status"], i["result"], i["_version"]) for i in items] == [
        (f"a-{n}", 201, "created", 1) for n in range(3)] + [(f"b-{n}", 201, "created", 1) for n in range(2)]
    assert items[0]["_index"].startswith(f".ds-{DS_A}-") and items[0]["_index"].endswith("-000001")
    assert [i["_seq_no"] for i in items] == [0, 1, 2, 0, 1]
    assert peer.indices() == {DS_A, DS_B} and peer.kind(DS_A) == "data_stream"
    assert [d["_id"] for d in peer.documents(DS_A)] == ["a-0", "a-1", "a-2"]
    assert peer.document(DS_B, "b-1")["source"] == {"@timestamp": TS, "event": {"id": "b-1"}}
    (bulk,) = peer.bulk_requests
    assert (bulk.method, bulk.path, bulk.items, bulk.gzip) == ("PUT", "/_bulk", 5, False)
    assert bulk.content_type == "application/vnd.elasticsearch+x-ndjson; compatible-with=9"
    assert peer.document(DS_A, "a-0")["request"] == bulk.number
    assert peer.stats() == {"documents": 5, "requests": 1}


def test_recreate_is_409_per_item(peer: EsPeer) -> None:
    actions = [alert(DS_A, f"a-{i}") for i in range(3)]
    stream(peer, actions)
    again = stream(peer, actions + [alert(DS_A, "a-new")], raise_on_error=False)
    assert [ok for ok, _ in again] == [False, False, False, True]
    error = again[0][1]["create"]
    assert error["status"] == 409
    assert error["error"]["type"] == "version_conflict_engine_exception"
    assert error["error"]["reason"] == "[a-0]: version conflict, document already exists (current version [1])"
    assert peer.count(DS_A) == 4


@pytest.mark.parametrize("status", [429, 503])
def test_reject_once_retries_only_those_items(peer: EsPeer, status: int) -> None:
    peer.reject_once(["a-1", "a-3"], status=status)
    actions = [alert(DS_A, f"a-{i}") for i in range(5)]
    # The helper retries rejected items only with raise_on_error=False: otherwise
    # _process_bulk_chunk raises BulkIndexError on the first answer, before its retry loop.
    results = stream(peer, actions, max_retries=2, initial_backoff=0.01, retry_on_status=(429, 503),
                     raise_on_error=False)
    assert [item["create"]["_id"] for ok, item in results if ok] == ["a-0", "a-2", "a-4", "a-1", "a-3"]
    assert all(ok for ok, _ in results)
    first, second = peer.bulk_requests
    assert (first.items, second.items) == (5, 2)
    assert peer.document(DS_A, "a-1")["request"] == second.number
    assert peer.document(DS_A, "a-0")["request"] == first.number
    peer.reject_once(["b-0"], status=status)
    with pytest.raises(BulkIndexError):
        stream(peer, [alert(DS_A, "b-0")], max_retries=2, initial_backoff=0.01, retry_on_status=(429, 503))
    assert len(peer.bulk_requests) == 3  # raised without a retry


def test_reject_once_item_shape(peer: EsPeer) -> None:
    peer.reject_once(["a-0"])
    peer.unavailable_once(["a-1"])
    results = stream(peer, [alert(DS_A, "a-0"), alert(DS_A, "a-1")], raise_on_error=False)
    rejected, unavailable = (item["create"] for _, item in results)
    assert rejected["status"] == 429 and rejected["error"]["type"] == "es_rejected_execution_exception"
    assert rejected["error"]["reason"].startswith("rejected execution of primary operation")
    assert unavailable["status"] == 503 and unavailable["error"]["type"] == "unavailable_shards_exception"
    assert peer.count() == 0


def test_always_fail_is_an_error_with_its_reason(peer: EsPeer) -> None:
    reason = "[1:30] failed to parse field [severity] of type [long] in document with id 'a-1'"
    peer.always_fail(["a-1"], reason=reason)
    results = stream(peer, [alert(DS_A, f"a-{i}") for i in range(3)], raise_on_error=False,
                     max_retries=2, initial_backoff=0.01)
    assert [ok for ok, _ in results] == [True, False, True]
    failed = results[1][1]["create"]
    assert (failed["_id"], failed["status"]) == ("a-1", 400)
    assert failed["error"] == {"type": "document_parsing_exception", "reason": reason}
    assert len(peer.bulk_requests) == 1  # a 400 is not retried
    with pytest.raises(BulkIndexError) as raised:
        stream(peer, [alert(DS_A, "a-1")])
    (error,) = raised.value.errors
    assert error["create"]["error"]["reason"] == reason
    assert error["create"]["data"]["event"] == {"id": "a-1"}


def test_whole_request_429(peer: EsPeer) -> None:
    peer.reject_requests(1)
    with pytest.raises(ApiError) as raised:
        stream(peer, [alert(DS_A, "a-0")])
    assert raised.value.meta.status == 429
    assert raised.value.body["error"]["type"] == "es_rejected_execution_exception"
    assert raised.value.body["error"]["root_cause"][0]["reason"].startswith("rejected execution of coordinating")
    assert raised.value.body["status"] == 429
    assert peer.count() == 0
    peer.reject_requests(2)  # the transport itself retries 429 (retry_on_status) when allowed to
    results = stream(peer, [alert(DS_A, "a-0")], client_options={"max_retries": 3})
    assert results[0][0] is True
    assert [r.status for r in peer.bulk_requests] == [429, 429, 429, 200]


def test_lost_response_stores_the_documents(peer: EsPeer) -> None:
    peer.lose_responses(1)
    actions = [alert(DS_A, f"a-{i}") for i in range(3)]
    operations = [line for a in actions
                  for line in ({"create": {"_index": a["_index"], "_id": a["_id"]}}, a["_source"])]
    with pytest.raises(EsConnectionError):
        client(peer).bulk(operations=operations)  # urllib3, max_retries=0: the loss surfaces
    assert [d["_id"] for d in peer.documents(DS_A)] == ["a-0", "a-1", "a-2"]
    (lost,) = peer.bulk_requests
    assert lost.lost and lost.status is None
    # aiohttp (3.14) resends an idempotent method (PUT /_bulk is one) once by itself after the
    # server disconnects, whatever the transport's max_retries: the resend finds the documents.
    peer.lose_responses(1)
    replay = stream(peer, actions, raise_on_error=False)
    assert [item["create"]["status"] for _, item in replay] == [409, 409, 409]
    assert [r.lost for r in peer.bulk_requests[1:]] == [True, False]
    peer.lose_responses(2)
    with pytest.raises(EsConnectionError):
        stream(peer, [alert(DS_A, "a-3")])
    assert peer.count(DS_A) == 4 and len(peer.bulk_requests) == 5


# ---------------------------------------------------------------- data streams and plain indices

def test_data_stream_and_index_rules(peer: EsPeer) -> None:
    es = client(peer)
    answer = es.bulk(operations=[
        {"index": {"_index": DS_A, "_id": "i"}}, {"@timestamp": TS},
        {"create": {"_index": DS_A, "_id": "no-ts"}}, {"message": "x"},
        {"create": {"_index": DS_A, "_id": "bad-ts"}}, {"@timestamp": "yesterday"},
        {"create": {"_index": DS_A, "_id": "ok"}}, {"@timestamp": 1717243200000},
        {"create": {"_index": "Upper", "_id": "u"}}, {"a": 1},
    ])
    assert answer["errors"] is True
    index_op, no_ts, bad_ts, ok, upper = (next(iter(item.values())) for item in answer["items"])
    assert index_op["status"] == 400 and index_op["error"] == {
        "type": "illegal_argument_exception",
        "reason": "only write ops with an op_type of create are allowed in data streams"}
    assert no_ts["status"] == 400 and no_ts["error"]["type"] == "document_parsing_exception"
    assert "data stream timestamp field [@timestamp] is missing" in no_ts["error"]["reason"]
    assert bad_ts["error"]["type"] == "document_parsing_exception"
    assert "failed to parse field [@timestamp] of type [date]" in bad_ts["error"]["reason"]
    assert ok["status"] == 201
    assert upper["error"] == {"type": "invalid_index_name_exception",
                              "reason": "Invalid index name [Upper], must be lowercase",
                              "index_uuid": "_na_", "index": "Upper"}
    # A plain index (no built-in template matches "defender-alerts", nor "logs-x": one dash only).
    plain = es.bulk(index="defender-alerts", operations=[
        {"index": {"_id": "1"}}, {"n": 1},
        {"index": {"_id": "1"}}, {"n": 2},
        {"update": {"_id": "1"}}, {"doc": {"m": 3}},
        {"update": {"_id": "1"}}, {"doc": {"m": 3}},
        {"delete": {"_id": "1"}},
        {"delete": {"_id": "1"}},
        {"index": {"_index": "logs-x"}}, {"no": "timestamp"},
    ])
    results = [(k, v["status"], v["result"], v.get("_version")) for item in plain["items"] for k, v in item.items()]
    assert results[:6] == [("index", 201, "created", 1), ("index", 200, "updated", 2), ("update", 200, "updated", 3),
                           ("update", 200, "noop", 3), ("delete", 200, "deleted", 4), ("delete", 404, "not_found", 1)]
    assert plain["errors"] is False  # a delete that finds nothing is not a failure
    assert results[6][1] == 201 and len(plain["items"][6]["index"]["_id"]) == 20  # auto id
    assert peer.kind("defender-alerts") == "index" and peer.kind("logs-x") == "index"


def test_require_template_and_template_driven_data_stream() -> None:
    with EsPeer(require_template=True, stack_templates=False) as peer:
        es = client(peer)
        refused = es.bulk(operations=[{"create": {"_index": DS_A, "_id": "a"}}, {"@timestamp": TS}])
        error = refused["items"][0]["create"]
        assert error["status"] == 404
        assert error["error"]["type"] == "index_not_found_exception"
        assert error["error"]["reason"] == f"no such index [{DS_A}] and [action.auto_create_index] is [false]"
        assert peer.indices() == set()
        es.ingest.put_pipeline(id="defender-enrich", processors=[{"set": {"field": "x", "value": 1}}])
        es.indices.put_index_template(name="mssp-defender", index_patterns=["logs-mssp_defender.alert-*"],
                                      data_stream={}, priority=200,
                                      template={"settings": {"index.default_pipeline": "defender-enrich"}})
        created = es.bulk(operations=[{"create": {"_index": DS_A, "_id": "a"}}, {"@timestamp": TS},
                                      {"create": {"_index": DS_B, "_id": "b"}}, {"@timestamp": TS}],
                          pipeline="_none")
        assert [i["create"]["status"] for i in created["items"]] == [201, 201]
        assert peer.kind(DS_A) == "data_stream"
        assert peer.document(DS_A, "a")["pipeline"] is None  # ?pipeline=_none
        es.bulk(operations=[{"create": {"_index": DS_A, "_id": "c"}}, {"@timestamp": TS}])
        assert peer.document(DS_A, "c")["pipeline"] == "defender-enrich"  # the index's default_pipeline
        missing = es.bulk(operations=[{"create": {"_index": DS_A, "_id": "d", "pipeline": "nope"}}, {"@timestamp": TS}])
        assert missing["items"][0]["create"]["error"] == {"type": "illegal_argument_exception",
                                                          "reason": "pipeline with id [nope] does not exist"}


# ---------------------------------------------------------------- templates, ILM, pipelines

POLICY = {"phases": {"hot": {"actions": {"rollover": {"max_age": "1d"}}},
                     "delete": {"min_age": "90d", "actions": {"delete": {}}}}}


def setup_once(es: Elasticsearch) -> None:
    """What a set-up command does: policy, component template, index template."""
    es.ilm.put_lifecycle(name="mssp-defender", policy=POLICY)
    es.cluster.put_component_template(name="mssp-defender@custom",
                                      template={"mappings": {"properties": {"tenant": {"type": "keyword"}}}})
    es.indices.put_index_template(
        name="mssp-defender", index_patterns=["logs-mssp_defender.alert-*"], data_stream={}, priority=200,
        composed_of=["logs@mappings", "logs@settings", "ecs@mappings", "mssp-defender@custom"],
        template={"settings": {"index": {"lifecycle": {"name": "mssp-defender"}}}}, _meta={"managed_by": "forwarder"})


def test_templates_and_ilm(peer: EsPeer) -> None:
    es = client(peer)
    assert es.indices.exists_index_template(name="mssp-defender").body is False
    with pytest.raises(NotFoundError) as missing_template:
        es.indices.get_index_template(name="mssp-defender")
    assert missing_template.value.body["error"] == {
        "root_cause": [{"type": "resource_not_found_exception",
                        "reason": "index template matching [mssp-defender] not found"}],
        "type": "resource_not_found_exception", "reason": "index template matching [mssp-defender] not found"}
    with pytest.raises(NotFoundError) as missing_policy:
        es.ilm.get_lifecycle(name="mssp-defender")
    assert missing_policy.value.body["error"]["reason"] == "Lifecycle policy not found: [mssp-defender]"

    setup_once(es)
    setup_once(es)  # running set-up twice changes nothing
    assert peer.puts[("index_template", "mssp-defender")] == 2
    assert peer.changes == {("ilm_policy", "mssp-defender"): 1, ("component_template", "mssp-defender@custom"): 1,
                            ("index_template", "mssp-defender"): 1}
    assert es.indices.exists_index_template(name="mssp-defender").body is True
    (shown,) = es.indices.get_index_template(name="mssp-defender")["index_templates"]
    assert shown["name"] == "mssp-defender"
    assert shown["index_template"]["index_patterns"] == ["logs-mssp_defender.alert-*"]
    assert shown["index_template"]["data_stream"] == {"hidden": False, "allow_custom_routing": False}
    assert shown["index_template"]["priority"] == 200
    policy = es.ilm.get_lifecycle(name="mssp-defender")["mssp-defender"]
    assert policy["version"] == 1 and policy["policy"] == POLICY
    assert policy["modified_date"].endswith("Z")
    assert policy["in_use_by"]["composable_templates"] == ["mssp-defender"]

    es.ilm.put_lifecycle(name="mssp-defender", policy={"phases": {"hot": {"actions": {}}}})
    assert es.ilm.get_lifecycle(name="mssp-defender")["mssp-defender"]["version"] == 2
    with pytest.raises(BadRequestError) as same_priority:  # overlaps the built-in logs-*-* template
        es.indices.put_index_template(name="clash", index_patterns=["logs-x-*"], data_stream={}, priority=100)
    assert "multiple index templates may not match during index creation" in same_priority.value.body["error"]["reason"]
    with pytest.raises(BadRequestError) as missing_component:
        es.indices.put_index_template(name="other", index_patterns=["other-*"], composed_of=["nope@custom"])
    assert missing_component.value.body["error"]["type"] == "invalid_index_template_exception"

    stream(peer, [alert(DS_A, "a-0")])
    assert es.ilm.get_lifecycle(name="mssp-defender")["mssp-defender"]["in_use_by"]["data_streams"] == [DS_A]
    with pytest.raises(BadRequestError):
        es.indices.delete_index_template(name="mssp-defender")  # in use by a data stream

    es.ingest.put_pipeline(id="p1", description="d", processors=[])
    assert es.ingest.get_pipeline(id="p1")["p1"] == {"description": "d", "processors": []}
    with pytest.raises(NotFoundError) as missing_pipeline:
        es.ingest.get_pipeline(id="p2")
    assert missing_pipeline.value.body == {}
    es.cluster.put_component_template(name="unused", template={})
    assert es.cluster.delete_component_template(name="unused")["acknowledged"] is True
    with pytest.raises(NotFoundError):
        es.indices.delete_index_template(name="nope")


# ---------------------------------------------------------------- compatibility, gzip, raw protocol

def test_compatible_with_8_accepted_7_refused(peer: EsPeer) -> None:
    es = client(peer)
    v8 = {"accept": "application/vnd.elasticsearch+json; compatible-with=8",
          "content-type": "application/vnd.elasticsearch+x-ndjson; compatible-with=8"}
    info = es.perform_request("GET", "/", headers={"accept": v8["accept"]})
    assert info.meta.headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=8"
    body = ndjson({"create": {"_index": DS_A, "_id": "v8"}}, {"@timestamp": TS})
    assert es.perform_request("PUT", "/_bulk", headers=v8, body=body)["items"][0]["create"]["status"] == 201
    v7 = "application/vnd.elasticsearch+json; compatible-with=7"
    with pytest.raises(BadRequestError) as refused:
        es.perform_request("GET", "/", headers={"accept": v7})
    error = refused.value.body["error"]
    assert error["type"] == "media_type_header_exception"
    assert error["reason"] == "Invalid media-type value on headers [Accept, Content-Type]"
    assert error["caused_by"] == {"type": "status_exception",
                                  "reason": f"Accept version must be either version 9 or 8, but found 7. Accept={v7}"}
    with pytest.raises(BadRequestError) as mixed:
        es.perform_request("PUT", "/_bulk", body=body, headers={
            "accept": "application/vnd.elasticsearch+json; compatible-with=9", "content-type": v8["content-type"]})
    assert "the compatible versions must match" in mixed.value.body["error"]["caused_by"]["reason"]


def test_gzip_request_and_response() -> None:
    with EsPeer(tls=False) as peer:  # ES compresses answers on HTTP by default (not on HTTPS)
        es = client(peer, http_compress=True)
        operations = [line for i in range(20)
                      for line in ({"create": {"_index": DS_A, "_id": f"g{i}"}}, {"@timestamp": TS, "pad": "x" * 200})]
        answer = es.bulk(operations=operations)
        assert answer["errors"] is False
        assert answer.meta.headers["content-encoding"] == "gzip"
        (bulk,) = peer.bulk_requests
        assert bulk.gzip and bulk.content_length < bulk.body_length
        assert peer.count(DS_A) == 20
    with EsPeer() as peer:
        results = stream(peer, [alert(DS_A, "a")], client_options={"http_compress": True})
        assert results[0][0] is True
        assert peer.bulk_requests[0].gzip


def test_raw_protocol_errors(peer: EsPeer) -> None:
    with httpx.Client(base_url=peer.url, verify=peer.client_ssl_context()) as raw:
        ndjson_type = {"content-type": "application/x-ndjson"}
        no_newline = raw.post("/_bulk", content=b'{"create":{"_index":"i","_id":"1"}}\n{"a":1}', headers=ndjson_type)
        assert no_newline.status_code == 400
        assert no_newline.json()["error"]["reason"] == "The bulk request must be terminated by a newline [\\n]"
        text = raw.post("/_bulk", content=b"{}\n", headers={"content-type": "text/plain"})
        assert text.json() == {"error": "Content-Type header [text/plain] is not supported", "status": 406}
        wrong_method = raw.get("/_bulk")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST,PUT"
        assert raw.get("/_nope").json() == {"error": "no handler found for uri [/_nope] and method [GET]",
                                            "status": 400}
        gzipped = raw.post("/i/_bulk", content=gzip.compress(b'{"index":{}}\n{"a":1}\n'),
                           headers={**ndjson_type, "content-encoding": "gzip"})
        assert gzipped.json()["items"][0]["index"]["status"] == 201
        missing_index = raw.post("/_bulk", content=b'{"index":{}}\n{"a":1}\n', headers=ndjson_type)
        assert missing_index.json()["error"]["reason"] == "Validation Failed: 1: index is missing;"
        assert raw.get("/_peer/stats").json() == {"documents": 1, "requests": 3}


# ---------------------------------------------------------------- lifecycle and standalone

def test_restart_keeps_port_certificate_and_documents(peer: EsPeer) -> None:
    url, fingerprint = peer.url, peer.fingerprint
    stream(peer, [alert(DS_A, "a-0")])
    peer.restart()
    assert (peer.url, peer.fingerprint) == (url, fingerprint)
    again = stream(peer, [alert(DS_A, "a-0"), alert(DS_A, "a-1")], raise_on_error=False)
    assert [item["create"]["status"] for _, item in again] == [409, 201]
    assert peer.count(DS_A) == 2


def test_standalone_process_count_only(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.es_peer", "--port", "0", "--count-only", "--ready-file", str(ready)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "ES peer did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid and info["url"].startswith("https://")
        es = Elasticsearch(info["url"], ssl_assert_fingerprint=info["fingerprint"], max_retries=0)
        operations = [line for i in range(3)
                      for line in ({"create": {"_index": DS_A, "_id": str(i)}}, {"@timestamp": TS})]
        assert [i["create"]["status"] for i in es.bulk(operations=operations)["items"]] == [201] * 3
        assert [i["create"]["status"] for i in es.bulk(operations=operations)["items"]] == [409] * 3
        with httpx.Client(verify=False) as raw:
            assert raw.get(info["url"] + "/_peer/stats").json() == {"documents": 3, "requests": 2}
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[0])["fingerprint"] == info["fingerprint"]
    assert json.loads(stderr.strip().splitlines()[-1]) == {"documents": 3, "requests": 2}
