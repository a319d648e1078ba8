"""The MSSP's own Entra app, for the sinks that write into Azure (Event Hubs, Sentinel): its
config keys, their rules, and its azure-identity async credential.

The app that reads the customers' Graph can also write the MSSP's own hub or workspace: a
certificate or a secret, both secret references; or, for the sinks that run inside Azure, the
managed identity of the VM or pod. The login host is the cloud's (`authority` overrides it).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import Field

from connectors.tls import TlsSinkConfig
from core.model.proxy import proxy_for
from core.model.secrets import Secret

PUBLIC_LOGIN = "https://login.microsoftonline.com"


class Cloud(NamedTuple):
    login: str  # the Entra login host
    monitor_scope: str  # what a token for Azure Monitor's ingestion asks for


# Each Azure cloud a sink may write into: the login host and the scopes of its services.
CLOUDS: dict[str, Cloud] = {
    "public": Cloud(PUBLIC_LOGIN, "https://monitor.azure.com/.default"),
    "usgov": Cloud("https://login.microsoftonline.us", "https://monitor.azure.us/.default"),
    "china": Cloud("https://login.chinacloudapi.cn", "https://monitor.azure.cn/.default"),
}


class EntraAppConfig(TlsSinkConfig):
    """The keys of a sink that signs in as the MSSP's Entra app."""

    tenant_id: str | None = Field(default=None, description="the MSSP's own tenant, where the destination lives")
    client_id: str | None = None
    client_secret: Secret | None = None
    certificate: Secret | None = Field(default=None, description="PEM with the private key")
    certificate_password: Secret | None = None
    authority: str | None = Field(default=None, description="login host; default: the cloud's")

    def entra_app_problem(self) -> str | None:
        """What is missing or contradictory in the app's keys; None when they are complete."""
        if not (self.tenant_id and self.client_id):
            return "needs tenant_id and client_id"
        if (self.client_secret is None) == (self.certificate is None):
            return "set exactly one of client_secret or certificate"
        return None


def credential_for(config: EntraAppConfig, explicit_proxy: str | None = None, login: str = PUBLIC_LOGIN) -> Any:
    """The azure-identity async credential of the sink's Entra app; its login goes through
    the proxy `proxy_for` decides for the login host (`authority`, else `login`)."""
    from azure.identity.aio import CertificateCredential, ClientSecretCredential

    options = _login_options(config.authority, config.ca_file, explicit_proxy, login)
    assert config.tenant_id and config.client_id  # entra_app_problem() was None
    if config.client_secret is not None:
        return ClientSecretCredential(config.tenant_id, config.client_id, config.client_secret.get_secret_value(),
                                      **options)
    assert config.certificate is not None
    password = config.certificate_password.get_secret_value().encode() if config.certificate_password else None
    return CertificateCredential(config.tenant_id, config.client_id,
                                 certificate_data=config.certificate.get_secret_value().encode(),
                                 password=password, **options)


def managed_identity_credential(client_id: str | None, *, retry_connect: int | None = None) -> Any:
    """The managed identity of the VM, pod or App Service the forwarder runs in (a
    user-assigned one by its client id). `retry_connect`: how often azure-identity tries again
    to reach the identity endpoint (default 3, waiting 0, 1.6, 3.2 s); its retries of the
    endpoint's 429/5xx (IMDS's 410 while it restarts) stay its own."""
    from azure.identity.aio import ManagedIdentityCredential

    options: dict[str, Any] = {} if retry_connect is None else {"retry_connect": retry_connect}
    return ManagedIdentityCredential(client_id=client_id, **options) if client_id else ManagedIdentityCredential(
        **options)


def _login_options(authority: str | None, ca_file: str | None, explicit_proxy: str | None,
                   login: str) -> dict[str, Any]:
    from azure.identity import AzureAuthorityHosts

    options: dict[str, Any] = {}
    host = authority or login
    if host != PUBLIC_LOGIN:
        options["authority"] = host
        # A login host Entra's instance discovery does not know (a private cloud, a test) is
        # taken as given.
        known = {value for name, value in vars(AzureAuthorityHosts).items() if name.isupper()}
        options["disable_instance_discovery"] = host.removeprefix("https://") not in known
    if ca_file:
        options["connection_verify"] = ca_file
    login_proxy = proxy_for(host, explicit_proxy)
    if login_proxy:
        # Without it azure-core reads the same variables itself (NO_PROXY included); with
        # [forwarder] proxy it must be told.
        options["proxies"] = {"https": login_proxy, "http": login_proxy}
    return options
