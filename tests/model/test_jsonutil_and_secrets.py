"""JSON that orjson refuses still goes through; secrets never show in what is printed."""
from __future__ import annotations

import sys

import pytest

from core.model import jsonutil
from core.model.secrets import MASK, REDACTOR, resolve_secret


def test_json_beyond_orjson_reads_and_writes_back() -> None:
    data = jsonutil.loads(b'{"big": 123456789012345678901234567890, "lone": "\\ud800x"}')
    assert data["big"] == 123456789012345678901234567890 and data["lone"] == "\ud800x"
    assert jsonutil.loads(jsonutil.dumps(data)) == data


def test_a_number_no_double_holds_is_refused_when_written_and_kept_in_a_dead_letter() -> None:
    data = jsonutil.loads(b'{"n": 1e400}')
    assert isinstance(data["n"], jsonutil.NonFinite)
    with pytest.raises(ValueError, match="1e400"):
        jsonutil.dumps(data)
    assert jsonutil.dumps_for_keeping(data) == b'{"n":"1e400"}'


def test_nesting_deeper_than_orjson_writes_is_written_back() -> None:
    deep: object = "x"
    for _ in range(600):  # orjson writes at most 254 levels; the parsers read 1,024
        deep = [deep]
    assert jsonutil.loads(jsonutil.dumps({"d": deep})) == {"d": deep}
    assert sys.getrecursionlimit() < 4000  # raised for the one call only


def test_a_resolved_secret_is_masked_wherever_it_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_MODEL_TEST_SECRET", "s3cr3t-value-42")
    secret = resolve_secret("env:DF_MODEL_TEST_SECRET")
    assert secret.get_secret_value() == "s3cr3t-value-42" and "s3cr3t" not in repr(secret)
    assert REDACTOR.redact("login failed for s3cr3t-value-42 at host") == f"login failed for {MASK} at host"


def test_a_missing_secret_names_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DF_MODEL_TEST_ABSENT", raising=False)
    with pytest.raises(ValueError, match="DF_MODEL_TEST_ABSENT is not set"):
        resolve_secret("env:DF_MODEL_TEST_ABSENT")


def test_a_reference_is_read_on_first_use_and_named_by_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import BaseModel

    from core.model.secrets import Secret, SecretRef, SecretUnavailable

    class Holder(BaseModel):
        token: Secret

    monkeypatch.delenv("DF_MODEL_TEST_LATER", raising=False)
    holder = Holder(token="env:DF_MODEL_TEST_LATER")  # not set yet: only the syntax is checked
    assert isinstance(holder.token, SecretRef) and holder.model_dump_json() == '{"token":"**********"}'
    holder.token.where = "sinks.x.token"
    with pytest.raises(SecretUnavailable, match="sinks.x.token: environment variable DF_MODEL_TEST_LATER is not set"):
        holder.token.get_secret_value()
    monkeypatch.setenv("DF_MODEL_TEST_LATER", "read-later-value-77")
    assert holder.token.get_secret_value() == "read-later-value-77"
    assert REDACTOR.redact("got read-later-value-77") == f"got {MASK}"
    assert holder.token == Holder(token="env:DF_MODEL_TEST_LATER").token  # compared by reference, unread
