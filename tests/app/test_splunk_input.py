"""The add-on's modular input, run as splunkd runs it.

The package is built once (`splunk-app build --target current`) and its
`bin/defender_forwarder.py` started as splunkd starts a modular input: `python -I -S` (none
of this machine's site-packages: only what the package carries), `--scheme`,
`--validate-arguments` with the stanza on stdin, or no argument with the input definition on
stdin. Microsoft is the simulated cloud; splunkd's `storage/passwords` is the splunkd REST peer
on loopback HTTPS, whose CA stands in for `$SPLUNK_HOME/etc/auth/cacert.pem`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator
from xml.sax.saxutils import escape, quoteattr

import pytest

from core.app.splunk_app import build, current_target
from core.app.splunk_input import APP_NAME, ARGUMENTS, REALM
from tests.helpers import CLIENT_ID, SECRET, recent
from tests.peers.alert_factory import make_alerts, updated_version
from tests.peers.fake_cloud import FakeCloud
from tests.peers.splunkd_peer import SplunkdPeer

pytestmark = pytest.mark.slow
SESSION_KEY = "splunkd-session-" + uuid.uuid4().hex
STANZA = "defender_forwarder://mssp_customers"


@pytest.fixture(scope="module")
def add_on(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built package, unpacked: the add-on's folder as splunkd has it under etc/apps."""
    where = tmp_path_factory.mktemp("splunk-app")
    package = build(where / "out", [current_target()])
    with tarfile.open(package) as archive:
        archive.extractall(where / "apps", filter="data")
    return where / "apps" / APP_NAME


@pytest.fixture(scope="module")
def splunkd() -> Iterator[SplunkdPeer]:
    peer = SplunkdPeer({(REALM, CLIENT_ID): SECRET}, session_key=SESSION_KEY, app=APP_NAME)
    peer.start()
    yield peer
    peer.stop()


class Splunkd:
    """What splunkd gives the input: its SPLUNK_HOME, server URI, session key, checkpoint dir."""

    def __init__(self, add_on: Path, peer: SplunkdPeer, cloud: FakeCloud, home: Path) -> None:
        self.add_on, self.peer, self.cloud, self.home = add_on, peer, cloud, home
        (home / "etc" / "auth").mkdir(parents=True, exist_ok=True)
        (home / "etc" / "auth" / "cacert.pem").write_bytes(peer.ca_file.read_bytes())
        self.checkpoint_dir = home / "var" / "lib" / "splunk" / "modinputs" / "defender_forwarder"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.cloud_ca = home / "cloud-ca.pem"
        cloud.write_ca(self.cloud_ca)

    def params(self, tenants: dict[str, str], **more: str) -> dict[str, str]:
        return {"client_id": CLIENT_ID, "tenants": ", ".join(f"{k}={v}" for k, v in tenants.items()),
                "login_endpoint": self.cloud.base_url, "graph_endpoint": self.cloud.base_url,
                "ca_file": str(self.cloud_ca), "initial_lookback": "30d", "interval": "300",
                "index": "mssp_default", "host": "$decideOnStartup", **more}

    def run(self, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        script = self.add_on / "bin" / "defender_forwarder.py"
        env = {"SPLUNK_HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin"), "LANG": "C.UTF-8"}
        return subprocess.run([sys.executable, "-I", "-S", str(script), *args], input=stdin, capture_output=True,
                              text=True, env=env, cwd=self.home, timeout=timeout)

    def head(self) -> str:
        return (f"<server_host>splunk-hf-01</server_host><server_uri>{self.peer.url}</server_uri>"
                f"<session_key>{SESSION_KEY}</session_key><checkpoint_dir>{self.checkpoint_dir}</checkpoint_dir>")

    def stream(self, params: dict[str, str], stanza: str = STANZA) -> subprocess.CompletedProcess[str]:
        body = "".join(f"<param name={quoteattr(k)}>{escape(v)}</param>" for k, v in params.items())
        definition = (f"<input>{self.head()}<configuration><stanza name={quoteattr(stanza)} "
                      f"app={quoteattr(APP_NAME)}>{body}</stanza></configuration></input>")
        return self.run(stdin=definition)

    def validate(self, params: dict[str, str], name: str = "mssp_customers") -> subprocess.CompletedProcess[str]:
        body = "".join(f"<param name={quoteattr(k)}>{escape(v)}</param>" for k, v in params.items())
        return self.run("--validate-arguments",
                        stdin=f"<items>{self.head()}<item name={quoteattr(name)}>{body}</item></items>")


@pytest.fixture
def splunk(add_on: Path, splunkd: SplunkdPeer, cloud: FakeCloud, tmp_path: Path) -> Splunkd:
    return Splunkd(add_on, splunkd, cloud, tmp_path)


def tenant(cloud: FakeCloud, alerts: int = 0, seed: int = 1, **options: Any) -> tuple[str, list[dict[str, Any]]]:
    tenant_id = str(uuid.uuid4())
    cloud.add_tenant(tenant_id, client_id=CLIENT_ID, secret=SECRET, **options)
    made = make_alerts(alerts, tenant_id, recent(120), timedelta(minutes=1), seed=seed) if alerts else []
    if made:
        cloud.add_alerts(tenant_id, made)
    return tenant_id, made


def events(stdout: str) -> list[ET.Element]:
    """The `<event>`s of a run's stdout: one XML document `<stream>...</stream>`, or nothing."""
    if not stdout:
        return []
    return list(ET.fromstring(stdout).iter("event"))


def versions(found: list[ET.Element]) -> Counter[tuple[str, str]]:
    import json

    return Counter((json.loads(e.findtext("data") or "")["id"], json.loads(e.findtext("data") or "")[
        "lastUpdateDateTime"]) for e in found)


# ---- scheme and validation -------------------------------------------------------------------------
def test_scheme_declares_every_argument_and_external_validation(splunk: Splunkd) -> None:
    done = splunk.run("--scheme")
    assert done.returncode == 0, done.stderr
    scheme = ET.fromstring(done.stdout)
    assert scheme.findtext("use_external_validation") == "true"
    assert scheme.findtext("use_single_instance") == "false"
    assert scheme.findtext("streaming_mode") == "xml"
    declared = {arg.get("name"): arg.findtext("required_on_create") for arg in scheme.iter("arg")}
    assert declared == {a.name: str(a.required).lower() for a in ARGUMENTS}


@pytest.mark.parametrize(("params", "named"), [
    ({"tenants": "contoso=not a tenant"}, "tenants: contoso: 'not a tenant' is not a tenant id"),
    ({"tenants": "contoso=22222222-2222-4222-8222-222222222222", "format": "xml"}, "format: 'xml' is not one of"),
    ({"tenants": "contoso=22222222-2222-4222-8222-222222222222", "sources": "graph_alerts, tickets"},
     "sources: "),
    ({"tenants": "contoso=22222222-2222-4222-8222-222222222222", "index_per_customer": "fabrikam=idx"},
     "index_per_customer: fabrikam is not a label of tenants"),
    ({"tenants": "=22222222-2222-4222-8222-222222222222"}, "tenants: '=22222222"),
    ({"tenants": ""}, "tenants: name at least one customer tenant"),
    ({"tenants": "contoso=22222222-2222-4222-8222-222222222222", "proxy": "http://u:pw@proxy:3128"},
     "proxy: a password in the proxy URL would sit in inputs.conf in clear"),
    ({"tenants": "contoso=22222222-2222-4222-8222-222222222222", "initial_lookback": "yesterday"},
     "initial_lookback: "),
])
def test_validation_refuses_a_bad_stanza_naming_the_argument(splunk: Splunkd, params: dict[str, str],
                                                             named: str) -> None:
    done = splunk.validate({**splunk.params({}), **params})
    assert done.returncode == 1
    message = ET.fromstring(done.stdout).findtext("message") or ""
    assert named in message, message
    assert "Traceback" not in done.stdout + done.stderr


def test_validation_accepts_a_good_stanza(splunk: Splunkd) -> None:
    done = splunk.validate(splunk.params({"contoso": "22222222-2222-4222-8222-222222222222",
                                          "fabrikam": "fabrikam.onmicrosoft.com"},
                                         index_per_customer="contoso=mssp_contoso", sources="graph_alerts,"
                                         "graph_incidents"))
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr


def test_validation_without_the_credential_says_where_to_store_it(splunk: Splunkd) -> None:
    other_app = "99999999-9999-4999-8999-999999999999"
    done = splunk.validate({**splunk.params({"contoso": "22222222-2222-4222-8222-222222222222"}),
                            "client_id": other_app})
    assert done.returncode == 1
    message = ET.fromstring(done.stdout).findtext("message") or ""
    assert f"storage/passwords has no credential for {other_app} (realm {REALM})" in message
    assert "-d realm=defender_forwarder" in message


# ---- streaming ------------------------------------------------------------------------------------
def test_every_version_arrives_once_across_runs_placed_per_customer(splunk: Splunkd, cloud: FakeCloud) -> None:
    contoso, contoso_alerts = tenant(cloud, 6, seed=21)
    fabrikam, fabrikam_alerts = tenant(cloud, 4, seed=22)
    params = splunk.params({"contoso": contoso, "fabrikam": fabrikam}, index_per_customer="contoso=mssp_contoso")

    first = splunk.stream(params)
    assert first.returncode == 0, first.stderr
    seen = events(first.stdout)
    assert versions(seen) == Counter((a["id"], a["lastUpdateDateTime"]) for a in contoso_alerts + fabrikam_alerts)
    by_id = {a["id"]: (label, a) for label, alerts in (("contoso", contoso_alerts), ("fabrikam", fabrikam_alerts))
             for a in alerts}
    for event in seen:
        label, alert = by_id[_data(event)["id"]]
        assert event.get("stanza") == STANZA
        assert event.findtext("sourcetype") == "ms365:defender:incident:alerts"
        assert event.findtext("index") == ("mssp_contoso" if label == "contoso" else "mssp_default")
        assert event.findtext("host") == "splunk-hf-01"  # $decideOnStartup: splunkd's server_host
        assert event.findtext("source") == f"defender-forwarder:{contoso if label == 'contoso' else fabrikam}"
        assert float(event.findtext("time") or 0) == pytest.approx(_epoch(alert["lastUpdateDateTime"]), abs=0.001)
        assert _data(event)["tenant"]["label"] == label

    # Two alerts updated and two new ones; the rest is read again through the overlap, not sent.
    updated = [updated_version(contoso_alerts[0], recent(1)), updated_version(fabrikam_alerts[1], recent(1))]
    new = make_alerts(2, contoso, recent(2), timedelta(seconds=10), seed=23)
    cloud.add_alerts(contoso, [updated[0], *new])
    cloud.add_alerts(fabrikam, [updated[1]])
    second = splunk.stream(params)
    assert second.returncode == 0, second.stderr
    assert versions(events(second.stdout)) == Counter((a["id"], a["lastUpdateDateTime"]) for a in updated + new)

    third = splunk.stream(params)
    assert (third.returncode, events(third.stdout)) == (0, [])
    assert "INFO defender_forwarder" in third.stderr  # the cycle line, at the level splunkd files it


def test_the_secret_stays_out_of_everything_the_input_writes(splunk: Splunkd, cloud: FakeCloud) -> None:
    contoso, _ = tenant(cloud, 3, seed=31)
    done = splunk.stream(splunk.params({"contoso": contoso}))
    assert done.returncode == 0, done.stderr
    assert len(events(done.stdout)) == 3
    assert SECRET not in done.stdout + done.stderr
    state = list(splunk.checkpoint_dir.iterdir())
    assert state, "the state lives in the checkpoint directory"
    for path in state:
        assert SECRET.encode() not in path.read_bytes(), path


def test_a_missing_credential_is_one_error_line_and_no_event(splunk: Splunkd, cloud: FakeCloud) -> None:
    contoso, _ = tenant(cloud, 2, seed=41)
    done = splunk.stream({**splunk.params({"contoso": contoso}), "client_id": "99999999-9999-4999-8999-999999999999"})
    assert done.returncode == 2
    assert events(done.stdout) == []
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR defender_forwarder.splunk: {STANZA}: client_id: "
                                                   "storage/passwords has no credential"), done.stderr


def test_a_failing_tenant_is_logged_and_the_others_flow(splunk: Splunkd, cloud: FakeCloud) -> None:
    good, alerts = tenant(cloud, 3, seed=51)
    revoked, _ = tenant(cloud, 2, seed=52, consent=False)
    done = splunk.stream(splunk.params({"good": good, "revoked": revoked}))
    assert done.returncode == 1
    assert versions(events(done.stdout)) == Counter((a["id"], a["lastUpdateDateTime"]) for a in alerts)
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1 and "tenant revoked: " in errors[0] and "adminconsent?client_id=" in errors[0], errors
    assert "INFO defender_forwarder.pipeline: cycle: 2 tenants polled (1 failed)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_python_the_package_was_not_built_for_is_named(splunk: Splunkd) -> None:
    compiled = splunk.add_on / "bin" / "lib" / "3rdparty"
    moved = compiled.with_name("3rdparty-elsewhere")
    compiled.rename(moved)
    try:
        done = splunk.run("--scheme")
    finally:
        moved.rename(compiled)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("FATAL TA-defender-forwarder: splunkd runs this input with Python")
    assert "python.required = 3.13" in done.stderr and "--target" in done.stderr


def _data(event: ET.Element) -> dict[str, Any]:
    import json

    return json.loads(event.findtext("data") or "")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_killed_mid_stream_the_next_run_sends_what_splunkd_did_not_get(splunk: Splunkd, cloud: FakeCloud) -> None:
    """splunkd stopping (or the machine dying) kills the input while it writes: what it had
    written stays written, the outbox sends the unacknowledged batch again, nothing is lost."""
    contoso, alerts = tenant(cloud, 700, seed=61)
    params = splunk.params({"contoso": contoso})
    script = splunk.add_on / "bin" / "defender_forwarder.py"
    definition = (f"<input>{splunk.head()}<configuration><stanza name={quoteattr(STANZA)} app={quoteattr(APP_NAME)}>"
                  + "".join(f"<param name={quoteattr(k)}>{escape(v)}</param>" for k, v in params.items())
                  + "</stanza></configuration></input>")
    child = subprocess.Popen([sys.executable, "-I", "-S", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env={"SPLUNK_HOME": str(splunk.home), "LANG": "C.UTF-8"})
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(definition.encode())
    child.stdin.close()
    received = b""
    while received.count(b"</event>") < 40:  # the pipe is full behind these: the input is mid-batch
        chunk = os.read(child.stdout.fileno(), 65536)
        assert chunk, "the input ended before it had written 40 events"
        received += chunk
    child.kill()
    child.wait(timeout=10)
    child.stdout.close()
    # What splunkd took: every complete event before the kill.
    before = events(received[:received.rindex(b"</event>") + len(b"</event>")].decode() + "</stream>")

    after = splunk.stream(params)
    assert after.returncode == 0, after.stderr
    got = versions(before) + versions(events(after.stdout))
    assert set(got) == {(a["id"], a["lastUpdateDateTime"]) for a in alerts}
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= 500, "more than one batch (batch_max_events) sent twice"
    assert duplicates == len(before), "the killed batch is sent again whole, and only it"


def test_a_certificate_credential_from_storage_passwords_signs_the_login(splunk: Splunkd, cloud: FakeCloud) -> None:
    from tests.peers.fake_cloud import make_client_cert

    client_id = str(uuid.uuid4())
    cert = make_client_cert()
    pem = cert.key_pem + cert.cert_pem
    splunk.peer.set_credential(REALM, client_id, pem)
    tenant_id = str(uuid.uuid4())
    cloud.add_tenant(tenant_id, client_id=client_id, cert=cert.cert)
    alerts = make_alerts(2, tenant_id, recent(30), timedelta(minutes=1), seed=71)
    cloud.add_alerts(tenant_id, alerts)
    done = splunk.stream({**splunk.params({"contoso": tenant_id}), "client_id": client_id,
                          "credential": "certificate"})
    assert done.returncode == 0, done.stderr
    assert versions(events(done.stdout)) == Counter((a["id"], a["lastUpdateDateTime"]) for a in alerts)
    assert "PRIVATE KEY" not in done.stdout + done.stderr
