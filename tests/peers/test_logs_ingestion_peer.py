"""The Logs Ingestion API test peer, driven by the real async `LogsIngestionClient` with a real
azure-identity `ClientSecretCredential` whose token comes from the simulated Entra.

No mocking: every request crosses loopback TLS. Codes and messages expected here are written out,
not taken from the peer module, so a change of the peer's answers fails a test.
"""
from __future__ import annotations

import asyncio
import gzip
import io
import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity.aio import ClientSecretCredential
from azure.monitor.ingestion import LogsUploadError
from azure.monitor.ingestion.aio import LogsIngestionClient

from tests.helpers import CLIENT_ID, SECRET
from tests.peers.fake_cloud import FakeCloud
from tests.peers.logs_ingestion_peer import LogsIngestionPeer, streams_from_template

RULE = "dcr-00000000000000000000000000000001"
STREAM = "Custom-DefenderAlerts_CL"
COLUMNS = {"AlertId": "string", "Version": "long", "SeverityId": "int", "Score": "real",
           "IsTest": "boolean", "CreatedTime": "datetime", "Alert": "dynamic"}
PUBLIC_SCOPE = "https://monitor.azure.com/.default"
GOV_SCOPE = "https://monitor.azure.us/.default"


def record(n: int, **overrides: Any) -> dict[str, Any]:
    return {"AlertId": f"da{n:04d}", "Version": 1, "SeverityId": 3, "Score": 0.5, "IsTest": False,
            "CreatedTime": "2026-12-01T10:00:00.1234567Z", "Alert": {"id": n, "tags": ["a"]}, **overrides}


class Env:
    def __init__(self, cloud: FakeCloud, tenant_id: str, tmp: Path) -> None:
        self.cloud, self.tenant_id = cloud, tenant_id
        self.cloud_ca = cloud.write_ca(tmp / "cloud-ca.pem")
        self.tmp = tmp

    def upload(self, peer: LogsIngestionPeer, logs: Any, *, stream: str = STREAM, rule_id: str = RULE,
               scope: str = PUBLIC_SCOPE) -> list[LogsUploadError]:
        """Upload with retry_total=0; the chunks' errors on_error received."""
        errors: list[LogsUploadError] = []

        async def on_error(error: LogsUploadError) -> None:
            errors.append(error)

        async def run() -> None:
            credential = ClientSecretCredential(self.tenant_id, CLIENT_ID, SECRET, authority=self.cloud.base_url,
                                                connection_verify=str(self.cloud_ca),
                                                disable_instance_discovery=True)
            client = LogsIngestionClient(peer.endpoint, credential, connection_verify=str(self.peer_ca(peer)),
                                         retry_total=0, credential_scopes=[scope])
            async with credential, client:
                await client.upload(rule_id, stream, logs, on_error=on_error)

        asyncio.run(run())
        return errors

    def upload_raising(self, peer: LogsIngestionPeer, logs: Any, **options: Any) -> HttpResponseError:
        """The error of the only chunk, as on_error got it."""
        errors = self.upload(peer, logs, **options)
        assert len(errors) == 1
        assert isinstance(errors[0].error, HttpResponseError)
        return errors[0].error

    def peer_ca(self, peer: LogsIngestionPeer) -> Path:
        return peer.write_ca(self.tmp / f"peer-ca-{peer.port}.pem")


@pytest.fixture
def env(cloud: FakeCloud, tmp_path: Path) -> Env:
    tenant_id = str(uuid.uuid4())
    cloud.add_tenant(tenant_id, client_id=CLIENT_ID, secret=SECRET)
    return Env(cloud, tenant_id, tmp_path)


@pytest.fixture
def peer(cloud: FakeCloud) -> Iterator[LogsIngestionPeer]:
    with LogsIngestionPeer(cloud, rule_id=RULE, streams={STREAM: COLUMNS}) as server:
        yield server


def error_code(error: HttpResponseError) -> str:
    return json.loads(error.response.text())["error"]["code"]


# ---- the happy path ---------------------------------------------------------------------------------

def test_the_sdk_uploads_records_gzipped_with_a_token_from_entra(env: Env, peer: LogsIngestionPeer) -> None:
    logs = [record(1), record(2, SeverityId=None, Alert=None), record(3, Score=7)]
    assert env.upload(peer, logs) == []
    assert peer.records(STREAM) == logs
    assert peer.records("Custom-Other_CL") == []
    [request] = peer.requests
    assert (request.status, request.stream, request.records) == (204, STREAM, 3)
    assert request.content_encoding == "gzip" and request.authorization
    assert request.uncompressed_bytes == len(json.dumps(logs))  # what the SDK gzipped
    assert request.code is None


def test_a_us_government_peer_takes_a_token_for_its_own_resource(env: Env, cloud: FakeCloud) -> None:
    with LogsIngestionPeer(cloud, rule_id=RULE, streams={STREAM: COLUMNS},
                           audience="https://monitor.azure.us") as gov:
        assert env.upload(gov, [record(1)], scope=GOV_SCOPE) == []
        error = env.upload_raising(gov, [record(2)], scope=PUBLIC_SCOPE)
        assert error.status_code == 401
        assert gov.records() == [record(1)]


# ---- authentication and authorization ---------------------------------------------------------------

def test_a_token_for_another_resource_gets_401_with_a_challenge(env: Env, peer: LogsIngestionPeer) -> None:
    error = env.upload_raising(peer, [record(1)], scope=GOV_SCOPE)
    assert isinstance(error, ClientAuthenticationError)
    assert error.status_code == 401 and error_code(error) == "InvalidToken"
    assert error.response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert [r.status for r in peer.requests] == [401]  # the challenge asks for no claims: no retry
    assert peer.records() == []


def test_an_expired_token_gets_401(cloud: FakeCloud, peer: LogsIngestionPeer, tmp_path: Path) -> None:
    tenant_id = str(uuid.uuid4())
    cloud.add_tenant(tenant_id, client_id=CLIENT_ID, secret=SECRET, expires_in=-60)  # MSAL still hands it out
    error = Env(cloud, tenant_id, tmp_path).upload_raising(peer, [record(1)])
    assert error.status_code == 401 and "expired" in error.message


def test_a_request_without_a_valid_token_gets_401(peer: LogsIngestionPeer, tmp_path: Path) -> None:
    for authorization in (None, "Bearer not-a-jwt"):
        status, body, _ = raw_post(peer, tmp_path, gzip.compress(b"[]"), authorization=authorization)
        assert status == 401 and body["error"]["code"] == "InvalidToken"
    assert [r.authorization for r in peer.requests] == [False, True]


def test_an_app_without_the_role_on_the_dcr_gets_403(env: Env, cloud: FakeCloud) -> None:
    with LogsIngestionPeer(cloud, rule_id=RULE, streams={STREAM: COLUMNS}, allowed_apps={"another-app"}) as peer:
        error = env.upload_raising(peer, [record(1)])
        assert error.status_code == 403 and error_code(error) == "OperationFailed"
        assert ("The authentication token provided does not have access to ingest data for the data "
                f"collection rule with immutable Id '{RULE}'") in error.message
        peer.allowed_apps = {CLIENT_ID}
        assert env.upload(peer, [record(1)]) == []


# ---- the DCR and its streams ------------------------------------------------------------------------

def test_an_unknown_stream_or_rule_is_refused(env: Env, peer: LogsIngestionPeer) -> None:
    error = env.upload_raising(peer, [record(1)], stream="Custom-Nope_CL")
    assert error.status_code == 400 and error_code(error) == "InvalidStream"
    assert "Custom-Nope_CL" in error.message
    missing = env.upload_raising(peer, [record(1)], rule_id="dcr-ffffffffffffffffffffffffffffffff")
    assert isinstance(missing, ResourceNotFoundError) and error_code(missing) == "NotFound"
    assert peer.records() == []


def test_a_record_of_a_bad_type_refuses_the_whole_request_naming_it(env: Env, peer: LogsIngestionPeer) -> None:
    logs = [record(0), record(1, SeverityId="high"), record(2), record(3, Extra=1, IsTest=1)]
    errors = env.upload(peer, logs)
    assert len(errors) == 1 and errors[0].failed_logs == logs
    error = errors[0].error
    assert isinstance(error, HttpResponseError) and error.status_code == 400
    body = json.loads(error.response.text())["error"]
    assert body["code"] == "InvalidContent"
    assert body["message"].startswith("Record 1: column 'SeverityId' expects int, got string")
    assert [d["target"] for d in body["details"]] == ["records[1].SeverityId", "records[3].IsTest",
                                                      "records[3].Extra"]  # in the record's order
    assert peer.records() == []  # all or nothing


@pytest.mark.parametrize(("column", "value", "fits"), [
    ("SeverityId", True, False), ("SeverityId", 2**31, False), ("Version", 2**40, True),
    ("Score", "1.5", False), ("IsTest", "true", False), ("AlertId", 5, False),
    ("CreatedTime", "2026-12-01T10:00:00Z", True), ("CreatedTime", "2026-12-01T10:00:00+02:00", True),
    ("CreatedTime", "yesterday", False), ("CreatedTime", 1733000000, False), ("Alert", [1, "x"], True),
])
def test_column_types_as_a_dcr_declares_them(env: Env, peer: LogsIngestionPeer, column: str, value: Any,
                                             fits: bool) -> None:
    errors = env.upload(peer, [record(1, **{column: value})])
    assert (errors == []) is fits
    assert len(peer.records()) == (1 if fits else 0)


def test_refuse_when_makes_matching_records_bad(env: Env, peer: LogsIngestionPeer) -> None:
    peer.refuse_when(lambda r: r["AlertId"] == "da0002")
    error = env.upload_raising(peer, [record(1), record(2)])
    assert error.status_code == 400 and "Record 1:" in error.message
    peer.refuse_when(None)
    assert env.upload(peer, [record(1), record(2)]) == []


def test_a_predicate_that_raises_gets_500_not_a_hang_up(env: Env, peer: LogsIngestionPeer) -> None:
    peer.refuse_when(lambda r: r["missing"])
    error = env.upload_raising(peer, [record(1)])
    assert error.status_code == 500 and error_code(error) == "InternalServerError"


# ---- the body ---------------------------------------------------------------------------------------

def test_a_body_over_max_body_gets_413_and_on_error_gets_the_chunk(env: Env, peer: LogsIngestionPeer) -> None:
    peer.max_body = 2000
    logs = [record(n, AlertId="x" * 100) for n in range(20)]  # ~4 KB: one SDK chunk
    errors = env.upload(peer, logs)
    assert len(errors) == 1 and errors[0].failed_logs == logs
    assert isinstance(errors[0].error, HttpResponseError) and errors[0].error.status_code == 413
    assert error_code(errors[0].error) == "ContentLengthLimitExceeded"
    assert errors[0].error.response.headers["x-ms-error-code"] == "ContentLengthLimitExceeded"
    assert "Maximum allowed content length: 2000 bytes" in errors[0].error.message
    assert [(r.status, r.uncompressed_bytes > 2000) for r in peer.requests] == [(413, True)]
    assert peer.records() == []


def test_a_chunk_the_sdk_fills_to_1_mib_is_over_the_limit_by_its_separators(env: Env, peer: LogsIngestionPeer) -> None:
    """The SDK counts only its records' JSON toward 1 MiB; "[", "]" and ", " come on top. A
    sender that lets the SDK fill chunks loses them to 413 (and must batch below the limit)."""
    logs = [record(n, AlertId=f"{n:06d}" + "x" * 900) for n in range(1200)]  # ~1.2 MB: two SDK chunks
    errors = env.upload(peer, logs)
    assert [len(e.failed_logs) for e in errors] == [len(logs) - len(peer.records())]
    first = peer.requests[0]
    assert first.status == 413 and first.uncompressed_bytes > 1024 * 1024
    assert peer.records() == logs[len(errors[0].failed_logs):]  # the second chunk went in


def test_an_uncompressed_body_gets_415(env: Env, peer: LogsIngestionPeer) -> None:
    # An IO body is sent as is: no Content-Encoding when it is not gzip.
    with pytest.raises(HttpResponseError) as raised:
        env.upload(peer, io.BytesIO(json.dumps([record(1)]).encode()))
    assert raised.value.status_code == 415
    assert peer.requests[-1].content_encoding is None
    assert env.upload(peer, io.BytesIO(gzip.compress(json.dumps([record(1)]).encode()))) == []


def test_a_body_that_is_not_an_array_of_records_gets_400(env: Env, peer: LogsIngestionPeer) -> None:
    for body in (b'{"AlertId": "x"}', b"[1, 2]", b"[{"):
        with pytest.raises(HttpResponseError) as raised:
            env.upload(peer, io.BytesIO(gzip.compress(body)))
        assert raised.value.status_code == 400 and error_code(raised.value) == "InvalidContent"


def test_other_paths_get_404(peer: LogsIngestionPeer, tmp_path: Path) -> None:
    status, body, _ = raw_post(peer, tmp_path, b"", path="/dataCollectionRules/x?api-version=2023-01-01")
    assert status == 404 and body["error"]["code"] == "NotFound"
    status, _, _ = raw_post(peer, tmp_path, b"", path=f"/dataCollectionRules/{RULE}/streams/{STREAM}"
                                                         "?api-version=2021-11-01-preview")
    assert status == 404


# ---- faults -----------------------------------------------------------------------------------------

def test_throttle_answers_429_with_retry_after_once(env: Env, peer: LogsIngestionPeer) -> None:
    peer.throttle(1, retry_after=7)
    error = env.upload_raising(peer, [record(1)])
    assert error.status_code == 429 and error.response.headers["Retry-After"] == "7"
    assert error_code(error) == "TooManyRequests"
    assert env.upload(peer, [record(1)]) == []
    assert [r.status for r in peer.requests] == [429, 204]


def test_fail_answers_5xx_n_times(env: Env, peer: LogsIngestionPeer) -> None:
    peer.fail(2, status=503, retry_after=3)
    for _ in range(2):
        error = env.upload_raising(peer, [record(1)])
        assert error.status_code == 503 and error.response.headers["Retry-After"] == "3"
    assert env.upload(peer, [record(1)]) == []
    assert [r.status for r in peer.requests] == [503, 503, 204]
    with pytest.raises(ValueError):
        peer.fail(1, status=502)


# ---- lifecycle --------------------------------------------------------------------------------------

def test_a_restart_keeps_the_port_and_the_records(env: Env, peer: LogsIngestionPeer) -> None:
    endpoint = peer.endpoint
    assert env.upload(peer, [record(1)]) == []
    peer.restart()
    assert peer.endpoint == endpoint
    assert env.upload(peer, [record(1)]) == []
    assert peer.records() == [record(1), record(1)]  # duplicates kept, as Log Analytics keeps them
    assert len(peer.wait_for(2, timeout=1)) == 2


def test_count_only_checks_and_counts_every_record_but_keeps_none(env: Env, cloud: FakeCloud) -> None:
    with LogsIngestionPeer(cloud, rule_id=RULE, streams={STREAM: COLUMNS}, count_only=True) as peer:
        logs = [record(1), record(2), record(3)]
        assert env.upload(peer, logs) == []
        [refused] = env.upload(peer, [record(4, SeverityId="high")])  # still checked: 400, not counted
        assert error_code(refused.error) == "InvalidContent"
        assert peer.records() == [] and peer.requests == []
        assert peer.stats() == {"records": 3, "requests": 1, "json_bytes": len(json.dumps(logs)),
                                "bytes": peer.stats()["bytes"], "rejected": 1}
        assert 0 < peer.stats()["bytes"] < len(json.dumps(logs))  # as received: gzipped


def test_streams_from_template_reads_the_dcr_declarations(tmp_path: Path) -> None:
    template = {"resources": [
        {"type": "Microsoft.OperationalInsights/workspaces/tables", "properties": {}},
        {"type": "Microsoft.Insights/dataCollectionRules", "properties": {"streamDeclarations": {
            STREAM: {"columns": [{"name": "AlertId", "type": "string"}, {"name": "Alert", "type": "dynamic"}]},
            "Custom-DefenderIncidents_CL": {"columns": [{"name": "IncidentId", "type": "string"}]}}}}]}
    path = tmp_path / "azuredeploy.json"
    path.write_text(json.dumps(template))
    assert streams_from_template(path) == {STREAM: {"AlertId": "string", "Alert": "dynamic"},
                                           "Custom-DefenderIncidents_CL": {"IncidentId": "string"}}
    path.write_text(json.dumps({"resources": []}))
    with pytest.raises(ValueError):
        streams_from_template(path)


# ---- a plain client, for what the SDK never sends ---------------------------------------------------

def raw_post(peer: LogsIngestionPeer, tmp: Path, body: bytes, *, authorization: str | None = None,
             path: str = f"/dataCollectionRules/{RULE}/streams/{STREAM}?api-version=2023-01-01",
             ) -> tuple[int, dict[str, Any], dict[str, str]]:
    context = ssl.create_default_context(cafile=str(peer.write_ca(tmp / "raw-ca.pem")))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(peer.endpoint + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status, {}, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), dict(error.headers)
