"""Onboarding: the app registration's certificate (`app certificate`) and a starter config
(`init`). Both write files an operator then keeps, so both refuse to overwrite unless told,
and neither ever writes a secret's value."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.app.config import TENANT_DOMAIN, TENANT_GUID, TENANT_LABEL


class OnboardError(Exception):
    """A user's mistake or an unwritable place: one line, exit 2."""


# ---- app certificate -------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateFiles:
    key: Path  # the private key alone (PKCS#8 PEM), 0600
    certificate: Path  # the public certificate (PEM): what is uploaded to the app registration
    combined: Path  # key + certificate, the PEM `certificate = "file:..."` reads, 0600
    thumbprint: str  # SHA-1 of the DER certificate, upper-case hex, as Entra lists it


def make_certificate(out: Path, name: str, days: int, force: bool) -> CertificateFiles:
    """A self-signed RSA certificate for the app's credential. Entra checks only that the
    assertion is signed by an uploaded certificate, so self-signed is what Microsoft documents."""
    if days < 1:
        raise OnboardError("--days must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise OnboardError("--name: use letters, digits, '.', '_' or '-' (it names the files)")
    files = CertificateFiles(out / f"{name}.key", out / f"{name}.cer", out / f"{name}.pem", "")
    existing = [str(path) for path in (files.key, files.combined) if path.exists()]
    if existing and not force:
        raise OnboardError(f"{existing[0]} exists; refusing to replace a private key (add --force to replace it)")
    key_pem, cert_pem, thumbprint = _self_signed(name, days)
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(files.key, key_pem)
        _write_private(files.combined, key_pem + cert_pem)
        _write_atomic(files.certificate, cert_pem, 0o644)  # public: the file to upload
    except OSError as err:
        raise OnboardError(f"cannot write to {out}: {err.strerror or err}") from None
    return CertificateFiles(files.key, files.certificate, files.combined, thumbprint)


def _self_signed(name: str, days: int) -> tuple[bytes, bytes, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # Entra takes RSA keys
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))  # a little slack for clock skew
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return key_pem, cert_pem, cert.fingerprint(hashes.SHA1()).hex().upper()


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write beside the target and rename: the key is never, even for an instant, in a file
    with a wider mode, and an interrupted write leaves the old file whole."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# ---- init ------------------------------------------------------------------------------

SINK_TYPES = ("file", "syslog", "splunk_hec", "elasticsearch", "eventhub")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# One sink per type, with its secret as an environment reference the operator fills in.
SINK_BLOCKS: dict[str, str] = {
    "file": '''\
type = "file"
path = "/var/log/defender-forwarder/{tenant}.ndjson"   # one NDJSON file per customer
format = "ocsf"                                        # raw | ocsf | ecs | cim | cef
''',
    "syslog": '''\
type = "syslog"
host = "siem.mssp.example"    # ArcSight, QRadar, or a Sentinel log forwarder
port = 514
protocol = "tcp"              # udp | tcp | tls; tcp keeps each alert whole
format = "cef"
''',
    "splunk_hec": '''\
type = "splunk_hec"
url = "https://splunk.mssp.example:8088"
token = "env:HEC_TOKEN"       # the HEC token, from the environment (/etc/defender-forwarder/env)
format = "raw"
''',
    "elasticsearch": '''\
type = "elasticsearch"
hosts = ["https://es.mssp.example:9200"]
api_key = "env:ES_API_KEY"    # from the environment; then `defender-forwarder setup elasticsearch`
''',
    "eventhub": '''\
type = "eventhub"
connection_string = "env:EVENTHUB_CONNECTION_STRING"   # from the environment
eventhub_name = "defender-alerts"
format = "ocsf"
''',
}


@dataclass
class InitOptions:
    client_id: str
    certificate: Path | None = None
    client_secret_env: str | None = None
    tenants: list[tuple[str, str]] = field(default_factory=list)  # (label, tenant id or domain)
    sink: str = "file"


def parse_tenant(value: str) -> tuple[str, str]:
    """`LABEL=TENANT_ID_OR_DOMAIN`, checked here so that a slip is named by its flag."""
    label, equals, tenant_id = value.partition("=")
    label, tenant_id = label.strip(), tenant_id.strip()
    if not equals or not label or not tenant_id:
        raise OnboardError(f"--tenant {value!r}: write LABEL=TENANT_ID, e.g. contoso=contoso.onmicrosoft.com")
    if not TENANT_LABEL.fullmatch(label):
        raise OnboardError(f"--tenant {value!r}: the label takes letters, digits, '_', '.', '-' (up to 64)")
    if not (TENANT_GUID.fullmatch(tenant_id) or TENANT_DOMAIN.fullmatch(tenant_id)):
        raise OnboardError(f"--tenant {value!r}: {tenant_id!r} is not a tenant GUID or a verified domain")
    return label, tenant_id


def check_options(options: InitOptions) -> None:
    if not options.client_id.strip():
        raise OnboardError("--client-id is needed: the Application (client) ID of the MSSP's app")
    if (options.certificate is None) == (options.client_secret_env is None):
        raise OnboardError("give one of --certificate PATH or --client-secret-env NAME")
    # Not echoed: a value that is no variable name may be the secret itself, pasted by mistake.
    if options.client_secret_env is not None and not ENV_NAME.fullmatch(options.client_secret_env):
        raise OnboardError("--client-secret-env takes the NAME of an environment variable, not the secret")
    if not options.tenants:
        raise OnboardError("give at least one --tenant LABEL=TENANT_ID")
    if options.sink not in SINK_TYPES:
        raise OnboardError(f"--sink: one of {', '.join(SINK_TYPES)}")


def render_config(options: InitOptions) -> str:
    check_options(options)
    if options.certificate is not None:
        credential = (f'certificate = {_toml(f"file:{options.certificate.resolve()}")}'
                      "   # PEM: private key + certificate (`app certificate` wrote it)")
    else:
        credential = (f'client_secret = {_toml(f"env:{options.client_secret_env}")}'
                      "   # the secret's value stays in the environment")
    tenants = "\n".join(
        f'[tenants.{_key(label)}]\ntenant_id = {_toml(tenant_id)}\napp = "mssp"\n' for label, tenant_id in options.tenants
    )
    return f'''\
# defender-forwarder configuration, written by `defender-forwarder init`.
# Check it with `defender-forwarder validate --config FILE`, then `defender-forwarder check`.
# Secrets are references (env:NAME or file:PATH), never values. Guide: docs/onboarding.md

[forwarder]
state = "/var/lib/defender-forwarder/forwarder.db"   # cursors, outbox, dead letters
poll_interval = "5m"
initial_lookback = "1d"     # how far back a new tenant's first run reads

# The MSSP's multi-tenant Entra app, consented in every customer tenant.
[apps.mssp]
client_id = {_toml(options.client_id.strip())}
{credential}

# One table per customer; `defender-forwarder consent-url --tenant LABEL` prints the URL
# its administrator opens once.
{tenants}
# Where the alerts go.
[sinks.siem]
{SINK_BLOCKS[options.sink]}
# Every customer to that sink; add [[routes]] to split customers or severities.
[[routes]]
tenants = ["*"]
sinks = ["siem"]
'''


def _toml(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def _key(label: str) -> str:
    return label if re.fullmatch(r"[A-Za-z0-9_-]+", label) else _toml(label)


def write_config(text: str, out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OnboardError(f"{out} exists; not overwriting it (add --force to replace it)")
    try:
        _write_atomic(out, text.encode(), 0o640)  # no secret inside, but the service's file
    except OSError as err:
        raise OnboardError(f"cannot write {out}: {err.strerror or err}") from None


def ask(options: InitOptions, prompt: "Prompt") -> InitOptions:
    """The few questions `init` asks on a terminal given no flags."""
    options.client_id = prompt("Application (client) ID of the MSSP's multi-tenant app")
    certificate = prompt("certificate PEM (key + certificate) path, or empty to use a client secret", "")
    if certificate:
        options.certificate = Path(certificate)
    else:
        options.client_secret_env = prompt("environment variable holding the client secret", "MSSP_CLIENT_SECRET")
    while True:
        tenant = prompt("customer tenant as LABEL=TENANT_ID (empty when done)", "")
        if not tenant and options.tenants:
            break
        try:
            options.tenants.append(parse_tenant(tenant))
        except OnboardError as err:
            print(err)
    options.sink = prompt(f"sink type ({' | '.join(SINK_TYPES)})", "file")
    return options


class Prompt:
    def __call__(self, question: str, default: str | None = None) -> str:
        shown = f" [{default}]" if default else ""
        answer = input(f"{question}{shown}: ").strip()
        return answer or (default or "")
