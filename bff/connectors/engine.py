"""One engine runs every connector definition with httpx.

Public surface (used by the BFF routes and the sync runner):

* OAuth helpers: :func:`new_pkce_pair`, :func:`build_authorize_url`,
  :func:`exchange_code`, :func:`refresh_tokens` with :class:`OAuthClient` and
  :class:`OAuthTokens`;
* :class:`ConnectorSession`: ``test()``, ``config_options()`` and ``read()``
  (an async iterator of :class:`Page`);
* the error family :class:`ConnectorError` → :class:`CredentialsRejected`,
  :class:`ProviderError` (→ :class:`RetriesExhausted`), :class:`OAuthError`,
  :class:`ConfigRequired`. ``str(exc)`` is a sentence for the user and never
  contains credentials or tokens.

Incremental state (what :attr:`Page.state` holds) is crash-safe to persist in
the same transaction as the page's records:

* non-incremental streams: ``{}``;
* incremental: ``{"cursor": <highest cursor value seen>}``, or
  ``{"partitions": {"101": {"cursor": …}, …}}`` for partitioned streams.

With ``"order": "asc"`` (the API sorts ascending by the cursor field, which is
the assumption for most definitions and what the sandbox guarantees) the cursor
advances page by page: every record at or below it has been delivered. With
``"desc"``/``"none"`` the cursor only advances on the last page of a
partition, so a crash mid-way repeats the partition instead of skipping rows.
Incremental filters are treated as exclusive (``> cursor``); records that share
the cursor value across a page boundary are the documented blind spot.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from urllib.parse import quote, urlencode

import httpx

from .definitions import (
    Connector,
    FieldSpec,
    Incremental,
    Paging,
    Stream,
    Template,
    get_path,
)
from .retry import Cause, LongWait, RetryPolicy

__all__ = [
    "ConfigRequired",
    "ConnectorError",
    "ConnectorSession",
    "CredentialsRejected",
    "OAuthClient",
    "OAuthError",
    "OAuthTokens",
    "Page",
    "ProviderError",
    "RetriesExhausted",
    "build_authorize_url",
    "exchange_code",
    "new_pkce_pair",
    "refresh_tokens",
]

USER_AGENT = "bff-connectors/0.1 (+https://github.com/)"
REFRESH_MARGIN = 60.0  # refresh OAuth tokens this many seconds before they expire

LogFn = Callable[[str, str], None]


# --------------------------------------------------------------------------- errors


class ConnectorError(Exception):
    """Base of every connector failure. ``str(exc)`` is a user-facing sentence."""

    code = "connector_error"

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.detail


class CredentialsRejected(ConnectorError):
    """The provider refused the credentials (401/403, or ``invalid_grant`` from the token endpoint)."""

    code = "credentials_rejected"


class ProviderError(ConnectorError):
    """The provider failed or answered something we cannot use."""

    code = "provider_error"


class RetriesExhausted(ProviderError):
    """The retry policy gave up; ``reason`` is the policy's sentence."""

    code = "retries_exhausted"

    def __init__(self, reason: str, *, detail: str | None = None, status: int | None = None) -> None:
        self.reason = reason
        super().__init__(detail or reason, status=status)


class OAuthError(ConnectorError):
    """An OAuth step failed in a way that is not a credential rejection (bad token response, …)."""

    code = "oauth_error"


class ConfigRequired(ConnectorError):
    """The connection lacks configuration a request needs (e.g. no divisions chosen yet)."""

    code = "config_required"


# --------------------------------------------------------------------------- OAuth values


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


@dataclass(frozen=True)
class Page:
    """One provider page, normalised. Persist ``state`` together with ``records``."""

    stream: str
    partition: str | None
    records: list[dict[str, Any]]
    state: dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _context_resolver(context: Mapping[str, Any]) -> Callable[[str], str]:
    """Resolver for URL-level templates (OAuth URLs, manual refresh) from a context mapping."""

    def resolve(name: str) -> str:
        root, _, key = name.partition(".")
        if root == "sandbox":
            value = context.get("sandbox")
        elif root == "context":
            value = context.get(key)
        elif root in ("config", "credentials"):
            value = (context.get(root) or {}).get(key)
        else:
            value = None
        if value is None:
            raise ConfigRequired(f"The connector needs '{name}', which is not configured.")
        return str(value).rstrip("/") if root == "sandbox" else str(value)

    return resolve


def _basic(user: str, password: str | None) -> str:
    raw = f"{user}:{password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _provider_message(body: Any) -> str | None:
    """A short error message from common provider error shapes."""
    if not isinstance(body, dict):
        return None
    for key in ("message", "error_description", "error", "detail"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("message") or value.get("code")
        if isinstance(value, str) and value.strip():
            return _short(value)
    err = get_path(body, ("error", "message", "value"))  # OData v2 (Exact Online)
    return _short(err) if isinstance(err, str) else None


def _url_path(url: str | httpx.URL) -> str:
    try:
        return httpx.URL(str(url)).path or "/"
    except Exception:  # noqa: BLE001 - only used for log lines
        return "?"


async def _send(
    http: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str],
    data: Mapping[str, str] | None = None,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[Any]],
    clock: Callable[[], float],
    timeout: float,
    log: LogFn,
    label: str,
    display: str,
) -> httpx.Response:
    """One logical API call through the retry policy; returns any non-retryable answer."""
    retries: dict[Cause, int] = {}
    waited: dict[Cause, float] = {}
    while True:
        retry_after: str | None = None
        status: int | None = None
        try:
            response = await http.request(method, url, params=params, headers=headers, data=data, timeout=timeout)
        except httpx.TimeoutException:
            cause = Cause.TIMEOUT
        except httpx.RequestError:  # connect/read errors, RemoteProtocolError (chunked encoding), decoding, …
            cause = Cause.CONNECTION
        else:
            status = response.status_code
            if status == 429:
                cause = Cause.RATE_LIMITED
            elif status >= 500:
                cause = Cause.SERVER_ERROR
            else:
                return response
            retry_after = response.headers.get("Retry-After")
        n = retries.get(cause, 0)
        w = waited.get(cause, 0.0)
        decision = policy.decide(cause, n, w, retry_after, now=clock())
        if not decision.retry:
            log("error", f"{label}: {decision.reason} [{method} {_url_path(url)}]")
            raise RetriesExhausted(decision.reason, detail=f"{display} kept failing: {decision.reason}.", status=status)
        log("warning", f"{label}: {decision.reason} [{method} {_url_path(url)}]")
        if policy.long_wait is not None and decision.delay > policy.long_wait:
            raise LongWait(decision.delay, decision.reason)  # the caller frees its worker instead of sleeping
        await sleep(decision.delay)
        retries[cause] = n + 1
        waited[cause] = w + decision.delay


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------- OAuth


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
    resolve = _context_resolver(context)
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
    resolve = _context_resolver(context)
    url = spec.token_url.render(resolve)
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    data = dict(form)
    if spec.client_auth == "basic" and client.client_secret is not None:
        headers["Authorization"] = _basic(client.client_id, client.client_secret)
    else:
        data["client_id"] = client.client_id
        if client.client_secret is not None:
            data["client_secret"] = client.client_secret
    for key, tpl in spec.token_params:
        data[key] = tpl.render(resolve)
    # Token calls are not idempotent for rotating refresh tokens, but a 429/5xx
    # means the provider did not process them, so retrying those is safe.
    response = await _send(
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
        raise OAuthError(f"{display}'s token endpoint answered HTTP {response.status_code} with something that is not JSON.") from None
    if not isinstance(body, dict):
        raise OAuthError(f"{display}'s token endpoint answered with an unexpected shape.")
    tr = spec.token_response
    error = get_path(body, tr.error_path)
    ok = get_path(body, tr.ok_path) is True if tr.ok_path else True
    access = get_path(body, tr.access_token_path)
    secrets_in_play = [v for v in (client.client_secret, form.get("code"), form.get("refresh_token"), form.get("code_verifier")) if v]

    def scrub(text: str) -> str:
        for value in secrets_in_play:
            text = text.replace(value, "***")
        return text

    if response.status_code >= 400 or not ok or not isinstance(access, str) or not access:
        code = str(error) if isinstance(error, str) else None
        description = get_path(body, tr.error_description_path)
        why = code or f"HTTP {response.status_code}"
        if isinstance(description, str) and description.strip():
            why += f": {scrub(_short(description)).rstrip('.')}"
        if code in tr.invalid_grant_errors:
            raise CredentialsRejected(
                f"{display} no longer accepts this authorisation ({why}). Connect again to authorise.",
                code="credentials_rejected",
                status=response.status_code,
            )
        if response.status_code < 400 and ok and not code:
            raise OAuthError(f"{display}'s token endpoint answered without an access token.")
        raise OAuthError(f"{display} refused the token request ({why}).", status=response.status_code)
    refresh = get_path(body, tr.refresh_token_path)
    expires_in = _num(get_path(body, tr.expires_in_path))
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
        connector, http=http, client=client, form=form, context=context, clock=clock, policy=policy, sleep=sleep, log=log
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


# --------------------------------------------------------------------------- records


_ODATA_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def _to_text(v: Any) -> Any:
    if type(v) is str:
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    return str(v)


def _to_int(v: Any) -> Any:
    t = type(v)
    if t is int:
        return v
    if t is bool:
        return int(v)
    if t is float:
        return int(v) if v.is_integer() else v
    if t is str:
        try:
            return int(v)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                return v
            return int(f) if f.is_integer() else f
    return v


def _to_number(v: Any) -> Any:
    t = type(v)
    if t is int or t is float:
        return v
    if t is bool:
        return int(v)
    if t is str:
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    return v


_TRUE = frozenset(("true", "1", "yes", "y", "t"))
_FALSE = frozenset(("false", "0", "no", "n", "f"))


def _to_bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    if type(v) is str:
        low = v.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return v
    if type(v) is int:
        return v != 0
    return v


def _to_datetime(v: Any) -> Any:
    if type(v) is str:
        if v.startswith("/Date("):
            # OData v2 JSON date (Exact Online). Exact encodes its local wall
            # clock as if it were UTC; we keep that naive wall clock so the
            # value round-trips into a `datetime'…'` filter unchanged.
            m = _ODATA_DATE.match(v)
            if m:
                ms = int(m.group(1))
                dt = datetime.fromtimestamp(ms / 1000, timezone.utc).replace(tzinfo=None)
                return dt.isoformat(timespec="milliseconds") if ms % 1000 else dt.isoformat(timespec="seconds")
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, timezone.utc).isoformat().replace("+00:00", "Z")
    return v


_COERCE: dict[str, Callable[[Any], Any] | None] = {
    "text": _to_text,
    "integer": _to_int,
    "number": _to_number,
    "boolean": _to_bool,
    "datetime": _to_datetime,
    "json": None,  # keep the Python object as decoded
}


@functools.lru_cache(maxsize=256)
def _compile_normaliser(fields: tuple[FieldSpec, ...]) -> Callable[[Any], dict[str, Any]]:
    """Build ``record -> {declared field: value}`` once per stream (no per-record parsing)."""
    plan = []
    for f in fields:
        single = f.path[0] if len(f.path) == 1 and isinstance(f.path[0], str) else None
        plan.append((f.name, single, f.path, _COERCE[f.type]))
    plan_t = tuple(plan)

    def normalise(record: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, single, path, coerce in plan_t:
            value = record.get(single) if single is not None else get_path(record, path)
            if value is not None and coerce is not None:
                value = coerce(value)
            out[name] = value
        return out

    return normalise


def _cursor_gt(a: Any, b: Any) -> bool:
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None and not isinstance(a, str) and not isinstance(b, str):
        return na > nb
    return str(a) > str(b)


def _format_cursor(inc: Incremental, value: Any) -> str:
    if inc.format == "unix":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(int(value))
        text = str(value)
        if text.lstrip("-").isdigit():
            return text
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return str(int(dt.timestamp()))
    if inc.format == "iso8601":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, timezone.utc).isoformat().replace("+00:00", "Z")
        return str(value)
    assert inc.template is not None
    text = str(value)
    return inc.template.render(lambda name: text)


# --------------------------------------------------------------------------- session


class ConnectorSession:
    """Talks to one connection's provider: test credentials, list config options, read streams.

    ``credentials`` holds the connect-form values (API key, login, …);
    ``config`` holds the CONFIG_SELECT choices (e.g. ``{"divisions": ["101"]}``);
    ``context`` holds deployment values, at least ``sandbox`` (the BFF's
    ``<public url>/sandbox``). For OAuth2 connectors pass ``oauth_client`` and
    ``tokens``; every refresh is reported through ``on_tokens`` so the caller can
    persist rotated tokens. ``log(level, message)`` receives retry warnings
    (paths only, never query strings, headers or secrets).
    """

    def __init__(
        self,
        connector: Connector,
        *,
        http: httpx.AsyncClient,
        credentials: Mapping[str, str],
        config: Mapping[str, Any],
        context: Mapping[str, Any],
        policy: RetryPolicy = RetryPolicy.default(),
        oauth_client: OAuthClient | None = None,
        tokens: OAuthTokens | None = None,
        on_tokens: Callable[[OAuthTokens], Awaitable[None]] | None = None,
        log: LogFn | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        timeout: float = 120.0,
    ) -> None:
        self.connector = connector
        self._http = http
        self._credentials = dict(credentials or {})
        self._config = dict(config or {})
        self._context = dict(context or {})
        self._policy = policy
        self._oauth_client = oauth_client
        self._tokens = tokens
        self._on_tokens = on_tokens
        self._log: LogFn = log or (lambda level, message: None)
        self._clock = clock
        self._sleep = sleep
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._lookups: dict[str, str] = {}
        self._base_url: str | None = None
        self._display = connector.display_name
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        headers.update(dict(connector.headers))
        self._static_headers = headers

    # ------------------------------------------------------------------ properties

    @property
    def tokens(self) -> OAuthTokens | None:
        """The current OAuth tokens (after any refresh)."""
        return self._tokens

    # ------------------------------------------------------------------ secrets

    def _secret_values(self) -> list[str]:
        values = [v for v in self._credentials.values() if isinstance(v, str) and len(v) >= 4]
        if self._tokens is not None:
            values += [v for v in (self._tokens.access_token, self._tokens.refresh_token) if v]
        if self._oauth_client is not None and self._oauth_client.client_secret:
            values.append(self._oauth_client.client_secret)
        return values

    def _scrub(self, text: str) -> str:
        for value in self._secret_values():
            if value in text:
                text = text.replace(value, "***")
        return text

    # ------------------------------------------------------------------ templates

    def _resolver(self, partition: Any = None, quote_values: bool = False) -> Callable[[str], str]:
        def resolve(name: str) -> str:
            root, _, key = name.partition(".")
            if root == "sandbox":
                value: Any = self._context.get("sandbox")
                if value is None:
                    raise ConfigRequired("The sandbox URL is not configured on this server.")
                return str(value).rstrip("/")
            if root == "config":
                value = self._config.get(key)
                if value is None or value == "" or value == []:
                    raise ConfigRequired(f"{self._display} needs '{key}' to be configured first.")
            elif root == "credentials":
                value = self._credentials.get(key)
                if value is None or value == "":
                    raise CredentialsRejected(f"{self._display} is missing the '{key}' credential; fill in the connect form again.")
            elif root == "context":
                value = self._context.get(key)
                if value is None:
                    raise ConfigRequired(f"{self._display} needs the server setting '{key}'.")
            elif root == "lookup":
                value = self._lookups[key]
            elif root == "partition":
                value = partition
            else:  # pragma: no cover - validated at load time
                raise ConfigRequired(f"Unknown placeholder {{{name}}}.")
            text = str(value)
            return quote(text, safe="") if quote_values else text

        return resolve

    async def _prepare(self, templates: Iterable[Template]) -> None:
        """Fetch the ``{lookup.x}`` values the given templates need (once per session)."""
        for tpl in templates:
            for name in tpl.names:
                root, _, key = name.partition(".")
                if root == "lookup" and key not in self._lookups:
                    spec = self.connector.lookup(key)
                    url = await self._url(spec.path)
                    params = self._params(spec.params)
                    _, body = await self._call("GET", url, params, f"lookup {key}")
                    value = get_path(body, spec.value_path)
                    if value is None or isinstance(value, (dict, list)):
                        raise ProviderError(f"{self._display} did not tell us its {key.replace('_', ' ')}.")
                    self._lookups[key] = str(value)

    async def _base(self) -> str:
        if self._base_url is None:
            await self._prepare([self.connector.base_url])
            # Values are URL-quoted so a typed-in field (Pipedrive's company domain)
            # cannot move the host, e.g. "evil.test/#" stays inside ".pipedrive.com".
            self._base_url = self.connector.base_url.render(self._resolver(quote_values=True)).rstrip("/")
        return self._base_url

    async def _url(self, path: Template, partition: Any = None) -> str:
        await self._prepare([path])
        return await self._base() + path.render(self._resolver(partition, quote_values=True))

    def _params(self, params: tuple[tuple[str, Template], ...], partition: Any = None) -> dict[str, str]:
        resolve = self._resolver(partition)
        return {k: t.render(resolve) for k, t in params}

    # ------------------------------------------------------------------ auth

    def _apply_auth(self, headers: dict[str, str], params: dict[str, str]) -> str | None:
        auth = self.connector.auth
        kind = auth.kind
        if kind == "bearer":
            assert self._tokens is not None
            headers["Authorization"] = "Bearer " + self._tokens.access_token
            return self._tokens.access_token
        if kind == "none":
            return None
        if kind == "basic":
            user = self._credential(auth.username_field)
            password = self._credentials.get(auth.password_field) if auth.password_field else None
            headers["Authorization"] = _basic(user, password)
            return None
        value = self._credential(auth.field)
        if kind == "header":
            assert auth.header
            headers[auth.header] = auth.prefix + value
        else:
            assert auth.param
            params[auth.param] = value
        return None

    def _credential(self, name: str | None) -> str:
        value = self._credentials.get(name or "")
        if not value:
            label = next((f.label for f in self.connector.connect_form if f.name == name), name)
            raise CredentialsRejected(f"{self._display} needs the '{label}' field; fill in the connect form again.")
        return str(value)

    async def _ensure_fresh(self) -> None:
        tokens = self._tokens
        if tokens is None:
            raise CredentialsRejected(f"{self._display} is not authorised yet; connect it first.")
        if tokens.expires_soon(self._clock()):
            async with self._lock:  # one refresh at a time; others wait and reuse it
                tokens = self._tokens
                if tokens is not None and tokens.expires_soon(self._clock()):
                    await self._refresh()

    async def _refresh_after_401(self, used_token: str | None) -> None:
        async with self._lock:
            if self._tokens is not None and self._tokens.access_token != used_token:
                return  # another request already refreshed while we were waiting
            await self._refresh()

    async def _refresh(self) -> None:
        tokens = self._tokens
        if tokens is None or not tokens.refresh_token:
            raise CredentialsRejected(f"{self._display}'s access has expired and cannot be renewed automatically; reconnect it.")
        if self._oauth_client is None:
            raise CredentialsRejected(f"{self._display}'s access has expired and this server has no OAuth client to renew it.")
        new = await refresh_tokens(
            self.connector,
            http=self._http,
            client=self._oauth_client,
            refresh_token=tokens.refresh_token,
            context=self._context,
            clock=self._clock,
            policy=self._policy,
            sleep=self._sleep,
            log=self._log,
        )
        self._tokens = new
        self._log("info", f"{self._display}: access token renewed")
        if self._on_tokens is not None:
            await self._on_tokens(new)

    # ------------------------------------------------------------------ HTTP

    def _check_origin(self, url: httpx.URL) -> None:
        # Never send credentials to a host the provider's paging points us to
        # unless it is the API's own host.
        base = httpx.URL(self._base_url) if self._base_url else None
        if base is None or (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise ProviderError(f"{self._display} pointed the next page to another host; refusing to send credentials there.")

    async def _call(
        self, method: str, url: str | httpx.URL, params: Mapping[str, str] | None, label: str, *, want_json: bool = True
    ) -> tuple[httpx.Response, Any]:
        """One API request with auth, retries, the 401→refresh→retry rule and error mapping."""
        oauth = self.connector.auth.kind == "bearer"
        refreshed = False
        while True:
            if oauth:
                await self._ensure_fresh()
            headers = dict(self._static_headers)
            query = dict(params) if params else {}
            used = self._apply_auth(headers, query)
            target: str | httpx.URL = url
            if query and "?" in str(url):
                # httpx would replace the URL's own query with `params`; merge instead
                # (next-page URLs carry their own query).
                target = httpx.URL(str(url)).copy_merge_params(query)
                query = {}
            response = await _send(
                self._http,
                method,
                target,
                params=query or None,
                headers=headers,
                policy=self._policy,
                sleep=self._sleep,
                clock=self._clock,
                timeout=self._timeout,
                log=self._log,
                label=label,
                display=self._display,
            )
            status = response.status_code
            body: Any = None
            auth_failed = status == 401
            if 200 <= status < 300 and (want_json or self.connector.response_check):
                body = self._json(response)
                check = self.connector.response_check
                if check is not None and isinstance(body, dict) and get_path(body, check.ok_path) is not True:
                    error = get_path(body, check.error_path)
                    if error in check.auth_errors:
                        auth_failed = True
                    else:
                        raise ProviderError(
                            f"{self._display} reported an error ({_short(self._scrub(str(error)))}) on {method} {_url_path(url)}.",
                            code="provider_error",
                            status=status,
                        )
            if auth_failed:
                if oauth and not refreshed:
                    self._log("info", f"{label}: {self._display} rejected the access token; renewing it once")
                    await self._refresh_after_401(used)
                    refreshed = True
                    continue
                if oauth:
                    raise CredentialsRejected(
                        f"{self._display} rejected the authorisation even after renewing the access token; reconnect it.",
                        status=status,
                    )
                raise CredentialsRejected(f"{self._display} rejected the credentials; check them and connect again.", status=status)
            if status == 403:
                raise CredentialsRejected(
                    f"{self._display} refused access (HTTP 403); the account may lack the permissions this connector needs.",
                    status=status,
                )
            if status >= 400:
                try:
                    detail = _provider_message(response.json())
                except ValueError:
                    detail = None
                suffix = f": {self._scrub(detail)}" if detail else ""
                raise ProviderError(
                    f"{self._display} answered HTTP {status} on {method} {_url_path(url)}{suffix}.",
                    code="not_found" if status == 404 else "provider_error",
                    status=status,
                )
            return response, body

    def _json(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return json.loads(response.content)
        except ValueError:
            raise ProviderError(
                f"{self._display} answered with something that is not JSON on {response.request.method} {_url_path(response.request.url)}."
            ) from None

    def _records(self, body: Any, path: tuple[str | int, ...], where: str) -> list[Any]:
        records = get_path(body, path) if path else body
        if records is None:
            return []  # e.g. Pipedrive's `"data": null` on an empty list
        if not isinstance(records, list):
            raise ProviderError(f"{self._display} answered in an unexpected shape (no list of {where}).")
        if records and not isinstance(records[0], dict):
            raise ProviderError(f"{self._display} answered in an unexpected shape ({where} are not objects).")
        return records

    async def _pages(
        self, paging: Paging, url: str, params: dict[str, str], records_path: tuple[str | int, ...], label: str
    ) -> AsyncIterator[tuple[list[Any], bool]]:
        """Yield ``(raw records, is_last)`` per provider page, following ``paging``."""
        kind = paging.kind
        params = dict(params)
        if paging.limit_param and paging.limit:
            params[paging.limit_param] = str(paging.limit)
        if kind == "none":
            _, body = await self._call("GET", url, params, label)
            yield self._records(body, records_path, label), True
            return

        if kind == "cursor":
            cursor: str | None = None
            while True:
                query = dict(params)
                if cursor is not None:
                    query[paging.cursor_param or "cursor"] = cursor
                _, body = await self._call("GET", url, query, label)
                records = self._records(body, records_path, label)
                if paging.next_cursor_path is not None:
                    nxt = get_path(body, paging.next_cursor_path)
                    last = nxt is None or nxt == ""
                else:
                    nxt = get_path(records[-1], paging.cursor_record_path) if records else None
                    last = not records or nxt is None
                if paging.has_more_path is not None and get_path(body, paging.has_more_path) is False:
                    last = True
                if not last and str(nxt) == cursor:
                    raise ProviderError(f"{self._display} returned the same page cursor twice; stopping to avoid a loop.")
                yield records, last
                if last:
                    return
                cursor = str(nxt)

        if kind == "offset":
            offset = 0
            while True:
                query = dict(params)
                query[paging.offset_param or "offset"] = str(offset)
                _, body = await self._call("GET", url, query, label)
                records = self._records(body, records_path, label)
                n = len(records)
                has_more = get_path(body, paging.has_more_path) if paging.has_more_path else None
                total = _num(get_path(body, paging.total_path)) if paging.total_path else None
                nxt = _num(get_path(body, paging.next_offset_path)) if paging.next_offset_path else None
                next_offset = int(nxt) if nxt is not None else offset + n
                if n == 0:
                    last = True
                elif isinstance(has_more, bool):
                    last = not has_more
                elif total is not None:
                    last = next_offset >= total
                elif paging.next_offset_path:
                    last = nxt is None
                else:  # no signal declared: a short page is the last one
                    last = paging.limit is not None and n < paging.limit
                if not last and next_offset <= offset:
                    raise ProviderError(f"{self._display} returned a paging offset that does not advance; stopping.")
                yield records, last
                if last:
                    return
                offset = next_offset

        if kind == "page_number":
            page = paging.page_start
            while True:
                query = dict(params)
                query[paging.page_param or "page"] = str(page)
                _, body = await self._call("GET", url, query, label)
                records = self._records(body, records_path, label)
                n = len(records)
                has_more = get_path(body, paging.has_more_path) if paging.has_more_path else None
                page_count = _num(get_path(body, paging.page_count_path)) if paging.page_count_path else None
                total = _num(get_path(body, paging.total_path)) if paging.total_path else None
                pages_done = page - paging.page_start + 1
                if n == 0:
                    last = True
                elif isinstance(has_more, bool):
                    last = not has_more
                elif page_count is not None:
                    last = pages_done >= page_count
                elif total is not None and paging.limit:
                    last = pages_done * paging.limit >= total
                else:
                    last = paging.limit is not None and n < paging.limit
                yield records, last
                if last:
                    return
                page += 1

        if kind in ("link_header", "next_url"):
            current: str | httpx.URL = url
            query: dict[str, str] | None = params
            while True:
                response, body = await self._call("GET", current, query, label)
                records = self._records(body, records_path, label)
                if kind == "link_header":
                    nxt = response.links.get("next", {}).get("url")
                else:
                    assert paging.next_url_path is not None
                    nxt = get_path(body, paging.next_url_path)
                last = not nxt or not isinstance(nxt, str)
                next_url: httpx.URL | None = None
                if not last:
                    next_url = response.request.url.join(nxt)  # relative links are allowed
                    self._check_origin(next_url)
                    if next_url == response.request.url:
                        raise ProviderError(f"{self._display} returned the same next-page link twice; stopping to avoid a loop.")
                yield records, last
                if last:
                    return
                assert next_url is not None
                current, query = next_url, None  # the next URL carries its own query
            return

    # ------------------------------------------------------------------ public API

    async def test(self) -> None:
        """Prove the credentials work; raises :class:`CredentialsRejected` or :class:`ProviderError`."""
        spec = self.connector.test
        await self._prepare([spec.path, *(t for _, t in spec.params)])
        url = await self._url(spec.path)
        response, body = await self._call(spec.method, url, self._params(spec.params), "connection test", want_json=spec.expect_json is not None)
        if response.status_code != spec.expect_status:
            raise ProviderError(
                f"{self._display} answered HTTP {response.status_code} instead of {spec.expect_status} when checking the connection.",
                status=response.status_code,
            )
        if spec.expect_json is not None and get_path(body, spec.expect_json) is None:
            raise ProviderError(f"{self._display} answered, but not with the account information we expected.")

    async def config_options(self) -> list[dict[str, str]]:
        """Options for the CONFIG_SELECT step, e.g. ``[{"value": "101", "label": "Acme Holding"}]``."""
        spec = self.connector.config_select
        if spec is None:
            return []
        url = await self._url(spec.path)
        params = self._params(spec.params)
        options: list[dict[str, str]] = []
        seen: set[str] = set()
        async for records, _ in self._pages(spec.paging, url, params, spec.records_path, "config options"):
            for record in records:
                value = get_path(record, spec.value_path)
                if value is None or str(value) in seen:
                    continue
                seen.add(str(value))
                label = get_path(record, spec.label_path)
                options.append({"value": str(value), "label": str(label) if label not in (None, "") else str(value)})
        return options

    def _partition_values(self) -> list[str]:
        key = self.connector.partition_by
        assert key is not None
        raw = self._config.get(key)
        if isinstance(raw, (list, tuple)):
            values = [str(v) for v in raw if v not in (None, "")]
        elif raw in (None, ""):
            values = []
        else:
            values = [str(raw)]
        if not values:
            label = self.connector.config_select.label if self.connector.config_select else key
            raise ConfigRequired(f"Choose {label.lower()} for {self._display} before syncing.")
        return values

    async def read(self, stream: str, state: Mapping[str, Any] | None = None) -> AsyncIterator[Page]:
        """Page through ``stream`` (every partition), incrementally from ``state``.

        Each :class:`Page` carries normalised records and the state to persist
        with them (see the module docstring for its shape).
        """
        try:
            spec = self.connector.stream(stream)
        except KeyError:
            raise ProviderError(f"{self._display} has no table named {stream!r}.", code="unknown_stream") from None
        state = state or {}
        if not spec.partitioned:
            start = state.get("cursor") if spec.incremental else None
            async for records, cursor in self._read_one(spec, None, start):
                out = {"cursor": cursor} if spec.incremental and cursor is not None else {}
                yield Page(spec.name, None, records, out)
            return
        previous = state.get("partitions") if spec.incremental else None
        done: dict[str, dict[str, Any]] = {}
        if isinstance(previous, Mapping):
            done = {str(k): dict(v) for k, v in previous.items() if isinstance(v, Mapping)}
        for value in self._partition_values():
            start = done.get(value, {}).get("cursor") if spec.incremental else None
            async for records, cursor in self._read_one(spec, value, start):
                if spec.incremental:
                    if cursor is not None:
                        done[value] = {"cursor": cursor}
                    out: dict[str, Any] = {"partitions": {k: dict(v) for k, v in done.items()}}
                else:
                    out = {}
                yield Page(spec.name, value, records, out)

    async def _read_one(self, spec: Stream, partition: str | None, start: Any) -> AsyncIterator[tuple[list[dict[str, Any]], Any]]:
        """Yield ``(normalised records, cursor to persist)`` for one partition."""
        inc = spec.incremental
        url = await self._url(spec.path, partition)
        params = self._params(spec.params, partition)
        if inc is not None:
            if start is None and inc.start is not None:
                start = inc.start
            if start is not None:
                params[inc.param] = _format_cursor(inc, start)
        normalise = _compile_normaliser(spec.fields)
        label = spec.name if partition is None else f"{spec.name} [{partition}]"
        best = start
        cursor_field = inc.cursor_field if inc else None
        async for raw, last in self._pages(spec.paging, url, params, spec.records_path, label):
            records = [normalise(r) for r in raw]
            if inc is None:
                yield records, None
                continue
            for record in records:
                value = record.get(cursor_field)
                if value is not None and (best is None or _cursor_gt(value, best)):
                    best = value
            yield records, best if (inc.order == "asc" or last) else start
