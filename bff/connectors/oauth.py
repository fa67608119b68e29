"""OAuth2 helpers: PKCE, the authorize URL, and the token endpoint (code exchange, refresh)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from .errors import CredentialsRejected, OAuthError
from .retry import RetryPolicy
from .spec import Connector
from .templates import Placeholders, get_path
from .transport import USER_AGENT, LogFn, basic_auth, num, send, short

__all__ = ["OAuthClient", "OAuthTokens", "build_authorize_url", "exchange_code", "new_pkce_pair", "refresh_tokens"]

REFRESH_MARGIN = 60.0  # refresh OAuth tokens this many seconds before they expire


@dataclass(frozen=True)
class OAuthClient:
    """The partner app's OAuth client registration for one connector."""

    client_id: str
    client_secret: str | None
    redirect_uri: str

    def __repr__(self) -> str:
        secret = "None" if self.client_secret is None else "'***'"
        return f"OAuthClient(client_id={self.client_id!r}, client_secret={secret}, redirect_uri={self.redirect_uri!r})"


@dataclass(frozen=True)
class OAuthTokens:
    """Tokens of one connection. ``expires_at`` is epoch seconds (``None`` = does not expire)."""

    access_token: str
    refresh_token: str | None
    expires_at: float | None
    scope: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        refresh = "None" if self.refresh_token is None else "'***'"
        return (
            f"OAuthTokens(access_token='***', refresh_token={refresh}, expires_at={self.expires_at!r}, "
            f"scope={self.scope!r}, extra_keys={sorted(self.extra)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OAuthTokens:
        return cls(
            access_token=str(data["access_token"]),
            refresh_token=data.get("refresh_token"),
            expires_at=float(data["expires_at"]) if data.get("expires_at") is not None else None,
            scope=data.get("scope"),
            extra=dict(data.get("extra") or {}),
        )

    def expires_soon(self, now: float, margin: float = REFRESH_MARGIN) -> bool:
        return self.expires_at is not None and now >= self.expires_at - margin


def _resolver(connector: Connector, context: Mapping[str, Any]) -> Placeholders:
    config, credentials = context.get("config"), context.get("credentials")
    return Placeholders(
        connector.display_name,
        context=context,
        config=config if isinstance(config, Mapping) else None,
        credentials=credentials if isinstance(credentials, Mapping) else None,
    )


def new_pkce_pair() -> tuple[str, str]:
    """``(code_verifier, code_challenge)``: a 64-char verifier from ``secrets`` and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)  # 64 chars of [A-Za-z0-9_-], within RFC 7636's 43..128
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def build_authorize_url(
    connector: Connector,
    *,
    client: OAuthClient,
    state: str,
    code_challenge: str | None,
    context: Mapping[str, Any],
) -> str:
    """The provider's authorize URL with ``response_type=code``, client, redirect, state, scope and PKCE."""
    spec = connector.oauth
    if spec is None:
        raise ValueError(f"connector {connector.name!r} does not use OAuth2")
    resolve = _resolver(connector, context)
    url = spec.authorize_url.render(resolve)
    params: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", client.client_id),
        ("redirect_uri", client.redirect_uri),
        ("state", state),
    ]
    if spec.scopes:
        params.append((spec.scope_param, spec.scope_separator.join(spec.scopes)))
    if spec.pkce:
        if not code_challenge:
            raise ValueError(f"connector {connector.name!r} requires PKCE: pass code_challenge")
        params += [("code_challenge", code_challenge), ("code_challenge_method", "S256")]
    params += [(k, t.render(resolve)) for k, t in spec.authorize_params]
    # quote (not quote_plus): scopes are separated by %20, as HubSpot and RFC 6749 expect.
    return url + ("&" if "?" in url else "?") + urlencode(params, quote_via=quote)


async def _token_request(
    connector: Connector,
    *,
    http: httpx.AsyncClient,
    client: OAuthClient,
    form: dict[str, str],
    context: Mapping[str, Any],
    clock: Callable[[], float],
    policy: RetryPolicy | None,
    sleep: Callable[[float], Awaitable[Any]],
    log: LogFn | None,
    previous_refresh_token: str | None = None,
) -> OAuthTokens:
    spec = connector.oauth
    if spec is None:
        raise ValueError(f"connector {connector.name!r} does not use OAuth2")
    display = connector.display_name
    resolve = _resolver(connector, context)
    url = spec.token_url.render(resolve)
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    data = dict(form)
    if spec.client_auth == "basic" and client.client_secret is not None:
        headers["Authorization"] = basic_auth(client.client_id, client.client_secret)
    else:
        data["client_id"] = client.client_id
        if client.client_secret is not None:
            data["client_secret"] = client.client_secret
    for key, tpl in spec.token_params:
        data[key] = tpl.render(resolve)
    # Token calls are not idempotent for rotating refresh tokens, but a 429/5xx
    # means the provider did not process them, so retrying those is safe.
    response = await send(
        http,
        "POST",
        url,
        params=None,
        headers=headers,
        data=data,
        policy=policy or RetryPolicy.short(),
        sleep=sleep,
        clock=clock,
        timeout=policy.request_timeout if policy else 30.0,
        log=log or (lambda level, msg: None),
        label="token",
        display=display,
    )
    try:
        body = response.json()
    except ValueError:
        raise OAuthError(
            f"{display}'s token endpoint answered HTTP {response.status_code} with something that is not JSON."
        ) from None
    if not isinstance(body, dict):
        raise OAuthError(f"{display}'s token endpoint answered with an unexpected shape.")
    tr = spec.token_response
    error = get_path(body, tr.error_path)
    ok = get_path(body, tr.ok_path) is True if tr.ok_path else True
    access = get_path(body, tr.access_token_path)
    secrets_in_play = [
        v for v in (client.client_secret, form.get("code"), form.get("refresh_token"), form.get("code_verifier")) if v
    ]

    def scrub(text: str) -> str:
        for value in secrets_in_play:
            text = text.replace(value, "***")
        return text

    if response.status_code >= 400 or not ok or not isinstance(access, str) or not access:
        code = str(error) if isinstance(error, str) else None
        description = get_path(body, tr.error_description_path)
        why = code or f"HTTP {response.status_code}"
        if isinstance(description, str) and description.strip():
            why += f": {scrub(short(description)).rstrip('.')}"
        if code in tr.invalid_grant_errors:
            raise CredentialsRejected(
                f"{display} no longer accepts this authorisation ({why}).",
                code="credentials_rejected",
                status=response.status_code,
            )
        if response.status_code < 400 and ok and not code:
            raise OAuthError(f"{display}'s token endpoint answered without an access token.")
        raise OAuthError(f"{display} refused the token request ({why}).", status=response.status_code)
    refresh = get_path(body, tr.refresh_token_path)
    expires_in = num(get_path(body, tr.expires_in_path))
    scope = get_path(body, tr.scope_path)
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    extra = {}
    for name, path in tr.extra:
        value = get_path(body, path)
        if value is not None:
            extra[name] = value
    return OAuthTokens(
        access_token=access,
        # RFC 6749 §6: the provider may keep the old refresh token (no rotation).
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh_token,
        expires_at=clock() + expires_in if expires_in is not None else None,
        scope=scope if isinstance(scope, str) else None,
        extra=extra,
    )


async def exchange_code(
    connector: Connector,
    *,
    http: httpx.AsyncClient,
    client: OAuthClient,
    code: str,
    code_verifier: str | None,
    context: Mapping[str, Any],
    clock: Callable[[], float] = time.time,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    log: LogFn | None = None,
) -> OAuthTokens:
    """Exchange an authorization ``code`` (plus the PKCE verifier) for tokens.

    Raises :class:`CredentialsRejected` on ``invalid_grant`` (code expired or
    reused), :class:`OAuthError` on any other bad answer.
    """
    spec = connector.oauth
    if spec is not None and spec.pkce and not code_verifier:
        raise ValueError(f"connector {connector.name!r} requires the PKCE code_verifier")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": client.redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    return await _token_request(
        connector,
        http=http,
        client=client,
        form=form,
        context=context,
        clock=clock,
        policy=policy,
        sleep=sleep,
        log=log,
    )


async def refresh_tokens(
    connector: Connector,
    *,
    http: httpx.AsyncClient,
    client: OAuthClient,
    refresh_token: str,
    context: Mapping[str, Any],
    clock: Callable[[], float] = time.time,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    log: LogFn | None = None,
) -> OAuthTokens:
    """Use a refresh token; the result keeps the old refresh token if the provider does not rotate."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await _token_request(
        connector,
        http=http,
        client=client,
        form=form,
        context=context,
        clock=clock,
        policy=policy,
        sleep=sleep,
        log=log,
        previous_refresh_token=refresh_token,
    )
