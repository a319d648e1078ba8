"""Tokens for the MSSP's multi-tenant app in each customer tenant, and clear auth errors.

One MSAL `ConfidentialClientApplication` per (app, tenant). MSAL is blocking (requests),
so every call runs in a bounded thread pool; a per-tenant lock keeps one token request
in flight per tenant (MSAL has no single-flight of its own).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, model_validator

from core.model import telemetry
from core.model.neterr import connect_and_read, describe
from core.model.secrets import Secret

GRAPH_SCOPE_PATH = "/.default"


class AppSettings(BaseModel):
    """`[apps.NAME]`: the MSSP's multi-tenant Entra app, consented in every customer tenant."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    client_id: str
    client_secret: Secret | None = None
    certificate: Secret | None = None
    certificate_password: Secret | None = None
    cloud: Literal["public", "gcc", "gcc-high", "dod"] = "public"
    # Overrides of the cloud's endpoints: for a private test cloud or a proxy that terminates TLS.
    login_endpoint: str | None = None
    graph_endpoint: str | None = None
    # The Defender for Endpoint API (source mde_alerts): a geo server of the public cloud
    # ("us", "eu", "uk", "au", "swa", "ina", "aea"), or the whole endpoint (a private test cloud).
    mde_region: Literal["us", "eu", "uk", "au", "swa", "ina", "aea"] | None = None
    mde_endpoint: str | None = None
    ca_file: str | None = None
    consent_redirect_uri: str | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> "AppSettings":
        if (self.client_secret is None) == (self.certificate is None):
            raise ValueError("set exactly one of client_secret or certificate")
        return self


@dataclass(frozen=True)
class Cloud:
    login: str
    graph: str
    mde: str = "https://api.security.microsoft.com"  # the Defender for Endpoint API
    # The token audience of the MDE API (WindowsDefenderATP): not the host above, which
    # accepts tokens of this resource (defender-source.md §2.2).
    mde_resource: str = "https://api.securitycenter.microsoft.com"


# GCC uses the commercial login and Graph but its own MDE host; GCC High and DoD have their own
# login and Graph hosts and share one MDE host.
CLOUDS: dict[str, Cloud] = {
    "public": Cloud("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "gcc": Cloud("https://login.microsoftonline.com", "https://graph.microsoft.com",
                 "https://api-gcc.securitycenter.microsoft.us", "https://api-gcc.securitycenter.microsoft.us"),
    "gcc-high": Cloud("https://login.microsoftonline.us", "https://graph.microsoft.us",
                      "https://api-gov.securitycenter.microsoft.us", "https://api-gov.securitycenter.microsoft.us"),
    "dod": Cloud("https://login.microsoftonline.us", "https://dod-graph.microsoft.us",
                 "https://api-gov.securitycenter.microsoft.us", "https://api-gov.securitycenter.microsoft.us"),
}


def endpoints(app: AppSettings) -> Cloud:
    cloud = CLOUDS[app.cloud]
    mde = cloud.mde
    if app.mde_region and app.cloud == "public":
        mde = f"https://{app.mde_region}.api.security.microsoft.com"
    return Cloud(
        (app.login_endpoint or cloud.login).rstrip("/"),
        (app.graph_endpoint or cloud.graph).rstrip("/"),
        (app.mde_endpoint or mde).rstrip("/"),
        cloud.mde_resource,
    )


def graph_scope(app: AppSettings) -> str:
    """The scope of a Microsoft Graph token (the app's Graph endpoint is its resource)."""
    return endpoints(app).graph + GRAPH_SCOPE_PATH


def mde_scope(app: AppSettings) -> str:
    """The scope of a Defender for Endpoint API token: the WindowsDefenderATP resource, whatever
    the host (the geo hosts and `mde_endpoint` take its tokens)."""
    return endpoints(app).mde_resource + GRAPH_SCOPE_PATH


def consent_url(app: AppSettings, tenant_id: str) -> str:
    """The admin-consent URL a customer's Global Administrator opens to grant the MSSP app access."""
    query = {"client_id": app.client_id}
    if app.consent_redirect_uri:
        query["redirect_uri"] = app.consent_redirect_uri
    return f"{endpoints(app).login}/{tenant_id}/adminconsent?{urlencode(query)}"


class TenantAuthError(Exception):
    """This tenant cannot be read until someone acts; the message says who and how."""

    def __init__(self, problem: str, remedy: str, state: str = "unknown") -> None:
        super().__init__(f"{problem}. Remedy: {remedy}")
        self.problem = problem
        self.remedy = remedy
        self.state = state  # the auth state it means (core.model.telemetry.AUTH_STATES)


class TransientAuthError(Exception):
    """The login service failed in a way that a later retry can fix (5xx, timeout)."""


def _remedies(app_name: str, app: AppSettings, label: str, tenant_id: str) -> dict[int, tuple[str, str]]:
    return {
        700016: (
            f"app {app.client_id} is not consented in tenant {tenant_id} (AADSTS700016)",
            f"a Global Administrator of the customer opens {consent_url(app, tenant_id)}",
        ),
        7000222: (
            f"the client secret of [apps.{app_name}] has expired (AADSTS7000222)",
            f"create a new secret for app {app.client_id} in Entra ID and update apps.{app_name}.client_secret",
        ),
        7000215: (
            f"the client secret of [apps.{app_name}] is invalid (AADSTS7000215)",
            f"apps.{app_name}.client_secret must hold the secret's value, not its id",
        ),
        700027: (
            f"the certificate of [apps.{app_name}] is not accepted (AADSTS700027)",
            f"upload the certificate to app {app.client_id} in Entra ID, or fix apps.{app_name}.certificate",
        ),
        90002: (
            f"tenant {tenant_id} does not exist (AADSTS90002)",
            f"check tenants.{label}.tenant_id",
        ),
    }


def graph_refusal(status: int, app: AppSettings, tenant_id: str, permission: str, api: str = "Graph",
                  permission_api: str = "Microsoft Graph") -> TenantAuthError:
    """The API's 401 (after a fresh token) or 403, for a source kind that needs the application
    permission `permission` of `permission_api` (as Entra ID names them)."""
    named = permission if permission_api == "Microsoft Graph" else f"{permission_api} {permission}"
    if status == 403:
        return TenantAuthError(
            f"{api} refused access (403): the app lacks the {named} application permission here",
            f"add the permission to app {app.client_id} and have the customer consent again: "
            f"{consent_url(app, tenant_id)}",
            state="consent_missing",
        )
    return TenantAuthError(
        f"{api} rejected a fresh token (401)",
        f"check that app {app.client_id} is consented in tenant {tenant_id}: {consent_url(app, tenant_id)}",
        state="consent_revoked",
    )


class TokenProvider:
    """Client-credential tokens in one customer tenant: for Graph by default, for another
    resource by scope (`for_scope`). One MSAL app per tenant holds them all, its cache keyed by
    scope, so each (tenant, scope) has one token, refreshed on its own."""

    def __init__(
        self,
        app_name: str,
        app: AppSettings,
        label: str,
        tenant_id: str,
        executor: ThreadPoolExecutor,
        http_session: Any,
    ) -> None:
        self.app_name, self.app, self.label, self.tenant_id = app_name, app, label, tenant_id
        self._executor = executor
        self._session = http_session
        self._msal: Any = None
        self._lock = asyncio.Lock()
        self.scope = graph_scope(app)
        self.had_token = False  # a login succeeded in this process: a refusal now means revoked
        telemetry.set_auth_state(label, "unknown")
        watch_certificate(app_name, app)

    def for_scope(self, scope: str) -> "ScopedTokens":
        """The tokens of this tenant for another resource (the MDE API), with the same interface."""
        return ScopedTokens(self, scope)

    async def token(self, scope: str | None = None) -> str:
        async with self._lock:
            return await self._counted(functools.partial(self._acquire, scope or self.scope))

    async def refresh(self, scope: str | None = None) -> str:
        """Drop the cached tokens (the server no longer accepts one) and get a new one. MSAL drops
        a client's tokens of every scope at once; the others are fetched again when next needed."""
        async with self._lock:
            if self._msal is not None:
                await self._run(self._msal.remove_tokens_for_client)
            return await self._counted(functools.partial(self._acquire, scope or self.scope))

    async def _counted(self, func: Any) -> str:
        """A token, with the tenant's auth state set from the answer (a transient failure
        leaves it as it was)."""
        try:
            token = await self._run(func)
        except TenantAuthError as err:
            self.refused(err)
            raise
        self.had_token = True
        telemetry.set_auth_state(self.label, "ok")
        return token

    def refused(self, err: TenantAuthError) -> None:
        """Count a refusal of this tenant (by the login service or by Graph) in its auth state."""
        telemetry.set_auth_state(self.label, err.state)

    async def _run(self, func: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    def _acquire(self, scope: str) -> str:
        import msal

        if self._msal is None:
            self._msal = self._build()
        try:
            result = self._msal.acquire_token_for_client([scope])
        except msal.exceptions.MsalServiceError as err:
            raise TransientAuthError(f"login service error: {err.error}") from None
        except OSError as err:  # requests' connection errors derive from OSError
            raise TransientAuthError(f"login service unreachable: {describe(err)}") from None
        if "access_token" in result:
            return result["access_token"]
        raise self._classify(result.get("error_codes") or [], result.get("error", "error"))

    def _build(self) -> Any:
        import msal

        try:
            return msal.ConfidentialClientApplication(
                self.app.client_id,
                client_credential=_credential(self.app),
                authority=f"{endpoints(self.app).login}/{self.tenant_id}",
                # The authority comes from a fixed table, so there is nothing to discover,
                # and discovery would call the public cloud even for a sovereign one.
                instance_discovery=False,
                http_client=self._session,
                token_cache=msal.TokenCache(),
            )
        except ValueError as err:
            # MSAL hides the AADSTS text of a failed tenant discovery in the exception context.
            context = str(err.__context__ or err)
            codes = [90002] if "90002" in context else []
            raise self._classify(codes, "invalid_tenant") from None
        except OSError as err:
            raise TransientAuthError(f"login service unreachable: {describe(err)}") from None

    def _classify(self, codes: list[int], error: str) -> Exception:
        known = _remedies(self.app_name, self.app, self.label, self.tenant_id)
        for code in codes:
            if code in known:
                state = AUTH_STATE_OF_CODE.get(code, "unknown")
                if code == 700016 and self.had_token:
                    state = "consent_revoked"  # the app had a token here before, in this process
                return TenantAuthError(*known[code], state=state)
        if error in ("temporarily_unavailable", "server_error"):
            return TransientAuthError(f"login service error: {error}")
        return TenantAuthError(
            f"login failed ({error}, AADSTS codes {codes or 'none'})",
            f"check [apps.{self.app_name}] and tenants.{self.label}.tenant_id",
        )


class ScopedTokens:
    """A TokenProvider seen through one scope: what a reader of another API than Graph holds."""

    def __init__(self, provider: TokenProvider, scope: str) -> None:
        self.provider, self.scope = provider, scope
        self.label = provider.label

    async def token(self) -> str:
        return await self.provider.token(self.scope)

    async def refresh(self) -> str:
        return await self.provider.refresh(self.scope)

    def refused(self, err: TenantAuthError) -> None:
        self.provider.refused(err)


# What an AADSTS code of the login service says of the tenant's auth state. 700016 (the app is
# not in the tenant) reads as revoked once the app had a token there (TokenProvider._classify).
AUTH_STATE_OF_CODE = {700016: "consent_missing", 7000222: "credential_invalid", 7000215: "credential_invalid",
                      700027: "credential_invalid"}


def certificate_expiry(app: AppSettings) -> datetime | None:
    """When the app's certificate stops being valid; None for a secret, or a PEM that holds none."""
    from cryptography import x509

    if app.certificate is None:
        return None
    pem = app.certificate.get_secret_value()
    start = pem.find("-----BEGIN CERTIFICATE-----")
    try:
        return x509.load_pem_x509_certificate(pem[start:].encode()).not_valid_after_utc if start >= 0 else None
    except ValueError:
        return None


def watch_certificate(app_name: str, app: AppSettings) -> None:
    """`defender_forwarder_certificate_expiry_seconds{app}`, computed when scraped."""
    expiry = certificate_expiry(app)
    if expiry is not None:
        telemetry.CERTIFICATE_EXPIRY.labels(app_name).set_function(
            lambda: (expiry - datetime.now(timezone.utc)).total_seconds())


def _credential(app: AppSettings) -> Any:
    if app.client_secret is not None:
        return app.client_secret.get_secret_value()
    assert app.certificate is not None  # the config model guarantees one of the two
    return _certificate_credential(app.certificate.get_secret_value(), app.certificate_password)


def certificate_problem(app: AppSettings) -> str | None:
    """Why the app's certificate cannot sign a login (not PEM, no certificate, no key it can
    unlock), or None when it can: checked once before a run, not as an error per tenant."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if app.certificate is None:
        return None
    pem = app.certificate.get_secret_value()
    password = app.certificate_password.get_secret_value().encode() if app.certificate_password else None
    key = re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", pem, re.S)
    try:
        _certificate_credential(pem, None)
        if key is None:
            return "the PEM holds no private key"
        load_pem_private_key(key.group(0).encode(), password)
    except TenantAuthError as err:
        return err.problem
    except (ValueError, TypeError) as err:  # what cryptography raises for a bad PEM or password
        return f"not a usable PEM certificate and key ({err})"
    return None


def _certificate_credential(pem: str, password: Any) -> dict[str, str]:
    """MSAL's certificate form: the key, the SHA-1 thumbprint (x5t) and the public cert (x5c)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    start = pem.find("-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise TenantAuthError("the certificate file holds no certificate", "use a PEM with the key and the certificate")
    cert = x509.load_pem_x509_certificate(pem[start:].encode())
    credential = {
        "private_key": pem,
        "thumbprint": hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest(),
        "public_certificate": cert.public_bytes(Encoding.PEM).decode(),
    }
    if password is not None:
        credential["passphrase"] = password.get_secret_value()
    return credential


def http_session(ca_file: str | None, pool_size: int, timeout: float, proxy: str | None = None) -> Any:
    """The requests session MSAL uses: pooled, with our CA, timeouts (a short one to connect,
    `timeout` to read) and proxy (`proxy_for` the login host: None connects directly)."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    # With trust_env, requests would let the environment override both the explicit CA
    # (REQUESTS_CA_BUNDLE) and the proxy core.model.proxy decided (its proxies win over the
    # session's). So the session reads no environment, and the CA bundle variables are kept
    # by hand when no ca_file is set.
    session.trust_env = False
    session.verify = ca_file or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.proxies = {"https": proxy, "http": proxy} if proxy else {}
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.request = functools.partial(session.request, timeout=connect_and_read(timeout))  # type: ignore[method-assign]
    return session
