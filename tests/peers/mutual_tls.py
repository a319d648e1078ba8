"""Mutual TLS for the peers: a server that requires a client certificate, and the files a
client presents (a certificate and its private key, encrypted with a password)."""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization


def require_client_certificate(context: ssl.SSLContext, client_ca: trustme.CA | None) -> None:
    """With `client_ca`, the server `context` takes only clients presenting a certificate that
    CA signed; without, it asks for none."""
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED


@dataclass(frozen=True)
class ClientCertificate:
    cert: Path  # PEM certificate chain
    key: Path  # PEM private key, encrypted with `password`
    password: str


def client_certificate(ca: trustme.CA, directory: Path, password: str,
                       name: str = "forwarder.client.example") -> ClientCertificate:
    """A client certificate for `name` signed by `ca`, written to `directory`."""
    leaf = ca.issue_cert(name)
    cert, key = directory / "client-cert.pem", directory / "client-key.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(password.encode())))
    return ClientCertificate(cert, key, password)
