"""A small but strict OAuth2 authorization server (RFC 6749 + PKCE S256, RFC 7636)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from . import pages
from .options import SandboxOptions
from .store import SandboxStore, token_hash

CODE_TTL = 60
REALM = "Sandbox CRM"
DEFAULT_SCOPE = "contacts.read deals.read"

# Parameters an authorization request carries; the consent form echoes them back.
AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_SCOPE_TEXT = {
    "contacts.read": "Read your contacts",
    "deals.read": "Read your deals",
    "contacts": "Read your contacts",
    "deals": "Read your deals",
    "offline_access": "Keep access while you are not using the app",
}


@dataclass(frozen=True)
class Client:
    client_id: str
    secret: str
    name: str


CLIENTS = {"bff-sandbox": Client("bff-sandbox", "bff-sandbox-secret", "BFF integrations")}


@dataclass(frozen=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    scope: str
    state: str | None
    code_challenge: str


class InvalidAuthorization(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


@dataclass
class Grant:
    """One user consent; every token minted from it dies with it."""

    client_id: str
    scope: str
    revoked: bool = False
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))


@dataclass
class AuthorizationCode:
    request: AuthorizationRequest
    grant: Grant
    expires_at: float
    used: bool = False


@dataclass
class AccessToken:
    grant: Grant
    expires_at: float


@dataclass
class TokenStore:
    """Codes (in memory: they live a minute) and, by SHA-256 hash, the tokens kept in the sandbox store."""

    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    access: dict[str, AccessToken] = field(default_factory=dict)
    refresh: dict[str, Grant] = field(default_factory=dict)

    @classmethod
    def load(cls, store: SandboxStore) -> TokenStore:
        grants = {gid: Grant(client_id, scope, revoked, gid) for gid, client_id, scope, revoked in store.grants()}
        tokens = cls()
        for hashed, kind, grant_id, expires_at in store.tokens():
            if kind == "access":
                tokens.access[hashed] = AccessToken(grants[grant_id], float(expires_at or 0))
            else:
                tokens.refresh[hashed] = grants[grant_id]
        return tokens


class OAuthError(Exception):
    def __init__(self, error: str, description: str, *, status_code: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status_code = status_code

    def response(self) -> JSONResponse:
        headers = dict(_NO_STORE)
        if self.status_code == 401:
            headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status_code,
            headers=headers,
        )


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def validate_authorization_request(params: Mapping[str, list[str]], options: SandboxOptions) -> AuthorizationRequest:
    """Check an authorize (or consent-decision) request; raise InvalidAuthorization."""
    for name in AUTHORIZE_PARAMS:
        if len(params.get(name, [])) > 1:
            raise InvalidAuthorization("invalid_request", f"The parameter {name} appears more than once.")
    value: dict[str, str | None] = {name: next(iter(params.get(name) or []), None) for name in AUTHORIZE_PARAMS}
    client = CLIENTS.get(value["client_id"] or "")
    if client is None:
        message = (
            f"The client_id {value['client_id']!r} is not a registered client."
            if value["client_id"]
            else "The client_id parameter is missing."
        )
        raise InvalidAuthorization("invalid_client", message)
    redirect_uri = _check_redirect_uri(value["redirect_uri"], options)
    if value["response_type"] != "code":
        raise InvalidAuthorization(
            "unsupported_response_type",
            'The response_type must be "code" (authorization code flow).',
        )
    challenge = _check_challenge(value["code_challenge"], value["code_challenge_method"])
    scope = _check_scope(value["scope"])
    return AuthorizationRequest(client, redirect_uri, scope, value["state"], challenge)


def _check_redirect_uri(uri: str | None, options: SandboxOptions) -> str:
    if not uri:
        raise InvalidAuthorization("invalid_request", "The redirect_uri parameter is missing.")
    if options.redirect_uris:
        if uri not in options.redirect_uris:
            raise InvalidAuthorization("invalid_request", "The redirect_uri is not registered for this client.")
        return uri
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or "#" in uri:
        raise InvalidAuthorization(
            "invalid_request",
            "The redirect_uri must be an absolute http(s) URL without a fragment.",
        )
    return uri


def _check_challenge(challenge: str | None, method: str | None) -> str:
    if not challenge:
        raise InvalidAuthorization("invalid_request", "PKCE is required: the code_challenge parameter is missing.")
    if method != "S256":
        shown = "missing (which means plain)" if not method else f'"{method}"'
        raise InvalidAuthorization(
            "invalid_request",
            f"The code_challenge_method is {shown}; only S256 is accepted.",
        )
    if not _S256_CHALLENGE.fullmatch(challenge):
        raise InvalidAuthorization(
            "invalid_request",
            "The code_challenge must be the 43-character base64url SHA-256 of the code verifier.",
        )
    return challenge


def _check_scope(scope: str | None) -> str:
    tokens = (scope or DEFAULT_SCOPE).split(" ")
    if not all(_SCOPE_TOKEN.fullmatch(token) for token in tokens):
        raise InvalidAuthorization("invalid_scope", "The scope parameter is malformed.")
    return " ".join(dict.fromkeys(tokens))


def redirect_with(uri: str, params: Mapping[str, str | None]) -> RedirectResponse:
    # The redirect_uri may carry its own query; RFC 6749 §3.1.2 says keep it.
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "" if uri.endswith(("?", "&")) else ("&" if "?" in uri else "?")
    headers = {**_NO_STORE, "Referrer-Policy": "no-referrer"}
    return RedirectResponse(uri + separator + query, status_code=302, headers=headers)


def pkce_matches(verifier: str, challenge: str) -> bool:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)


class CrmOAuth:
    """Endpoints and token bookkeeping of the sandbox CRM's authorization server."""

    def __init__(
        self,
        options: SandboxOptions,
        clock: Callable[[], float],
        is_revoked: Callable[[], bool],
        store: SandboxStore,
    ) -> None:
        self.options = options
        self.clock = clock
        self.is_revoked = is_revoked
        self.store = store
        self.tokens = TokenStore.load(store)

    # -- authorize + consent ------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        params = {key: request.query_params.getlist(key) for key in request.query_params.keys()}
        headers = {"Cross-Origin-Opener-Policy": "same-origin"} if self.options.coop else {}
        try:
            auth = validate_authorization_request(params, self.options)
        except InvalidAuthorization as exc:
            return _error_page(exc, headers)
        hidden = [
            ("response_type", "code"),
            ("client_id", auth.client.client_id),
            ("redirect_uri", auth.redirect_uri),
            ("scope", auth.scope),
            ("code_challenge", auth.code_challenge),
            ("code_challenge_method", "S256"),
        ]
        if auth.state is not None:
            hidden.append(("state", auth.state))
        scopes = auth.scope.split()
        context = {
            "client_name": auth.client.name,
            "client_id": auth.client.client_id,
            "scopes": [(s, _SCOPE_TEXT.get(s, f"Use the {s} permission")) for s in scopes],
            "redirect_origin": urlsplit(auth.redirect_uri).netloc,
            "action": request.scope.get("root_path", "") + "/crm/oauth/decision",
            "hidden": hidden,
        }
        csrf = pages.csrf_token(request)
        hidden.append((pages.CSRF_FIELD, csrf))
        page = pages.render("consent.html", context, frameable=False, headers=headers)
        return pages.with_csrf_cookie(page, request, csrf)

    async def decision(self, request: Request) -> Response:
        form = await request.form()
        params = {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form.keys()}
        try:
            auth = validate_authorization_request(params, self.options)
        except InvalidAuthorization as exc:
            return _error_page(exc, {})
        if not pages.csrf_ok(request, next(iter(params.get(pages.CSRF_FIELD, [])), None)):
            return pages.csrf_failure()
        choice = params.get("decision", [])
        if choice == ["deny"]:
            return redirect_with(
                auth.redirect_uri,
                {
                    "error": "access_denied",
                    "error_description": "The user denied access.",
                    "state": auth.state,
                },
            )
        if choice != ["allow"]:
            return _error_page(InvalidAuthorization("invalid_request", 'Choose "Allow" or "Deny".'), {})
        code = self._issue_code(auth)
        return redirect_with(auth.redirect_uri, {"code": code, "state": auth.state})

    def _issue_code(self, auth: AuthorizationRequest) -> str:
        now = self.clock()
        # Expired codes can no longer be redeemed, so there is nothing left to detect.
        self.tokens.codes = {k: c for k, c in self.tokens.codes.items() if c.expires_at > now}
        code = "sbx_code_" + secrets.token_urlsafe(24)
        grant = Grant(auth.client.client_id, auth.scope)
        self.tokens.codes[code] = AuthorizationCode(auth, grant, now + CODE_TTL)
        return code

    # -- token endpoint -----------------------------------------------------

    async def token(self, request: Request) -> Response:
        try:
            form = await _token_form(request)
            client = self._authenticate_client(request, form)
            grant_type = _single(form, "grant_type")
            if grant_type == "authorization_code":
                body = self._exchange_code(client, form)
            elif grant_type == "refresh_token":
                body = self._refresh(client, form)
            elif grant_type is None:
                raise OAuthError("invalid_request", "The grant_type parameter is missing.")
            else:
                raise OAuthError("unsupported_grant_type", f"The grant_type {grant_type!r} is not supported.")
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers=_NO_STORE)

    def _authenticate_client(self, request: Request, form: FormData) -> Client:
        header = request.headers.get("authorization")
        body_id = _single(form, "client_id")
        body_secret = _single(form, "client_secret")
        if header is not None:
            if body_secret is not None:
                raise OAuthError("invalid_request", "Use one client authentication method, not two.")
            client_id, secret = _parse_basic(header)
            if body_id is not None and body_id != client_id:
                raise OAuthError("invalid_client", "The client_id does not match.", status_code=401)
            status = 401  # RFC 6749 §5.2: a failed Authorization header gets 401.
        elif body_id is not None and body_secret is not None:
            client_id, secret, status = body_id, body_secret, 400
        else:
            raise OAuthError("invalid_client", "Client authentication is required.")
        client = CLIENTS.get(client_id)
        if client is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            raise OAuthError("invalid_client", "Client authentication failed.", status_code=status)
        return client

    def _exchange_code(self, client: Client, form: FormData) -> dict[str, Any]:
        code = _required(form, "code")
        redirect_uri = _required(form, "redirect_uri")
        verifier = _required(form, "code_verifier")
        stored = self.tokens.codes.get(code)
        if stored is None or stored.request.client.client_id != client.client_id:
            raise OAuthError("invalid_grant", "The authorization code is invalid.")
        if stored.used:
            # A replayed code may be stolen: kill whatever it already produced (§4.1.2).
            stored.grant.revoked = True
            self.store.revoke_grant(stored.grant.id)
            raise OAuthError("invalid_grant", "The authorization code has already been used.")
        # Any redemption attempt consumes the code, so a verifier cannot be guessed.
        stored.used = True
        if self.clock() >= stored.expires_at:
            raise OAuthError("invalid_grant", "The authorization code has expired.")
        if redirect_uri != stored.request.redirect_uri:
            raise OAuthError("invalid_grant", "The redirect_uri differs from the one used to authorize.")
        if not _VERIFIER.fullmatch(verifier) or not pkce_matches(verifier, stored.request.code_challenge):
            raise OAuthError("invalid_grant", "The code_verifier does not match the code_challenge.")
        if self.is_revoked():
            raise OAuthError("invalid_grant", "Access to Sandbox CRM has been revoked.")
        return self._mint(stored.grant)

    def _refresh(self, client: Client, form: FormData) -> dict[str, Any]:
        refresh_token = token_hash(_required(form, "refresh_token"))
        grant = self.tokens.refresh.get(refresh_token)
        if grant is None or grant.client_id != client.client_id or grant.revoked:
            raise OAuthError("invalid_grant", "The refresh token is invalid.")
        if self.is_revoked():
            raise OAuthError("invalid_grant", "Access to Sandbox CRM has been revoked.")
        requested = _single(form, "scope")
        if requested is not None and not set(requested.split()) <= set(grant.scope.split()):
            raise OAuthError("invalid_scope", "The requested scope exceeds the granted scope.")
        del self.tokens.refresh[refresh_token]  # rotation: the old one is spent
        self.store.drop_tokens([refresh_token])
        return self._mint(grant, scope=requested)

    def _mint(self, grant: Grant, scope: str | None = None) -> dict[str, Any]:
        now = self.clock()
        expired = [k for k, t in self.tokens.access.items() if t.expires_at <= now]
        for key in expired:
            del self.tokens.access[key]
        self.store.drop_tokens(expired)
        access = "sbx_at_" + secrets.token_urlsafe(32)
        refresh = "sbx_rt_" + secrets.token_urlsafe(32)
        ttl = self.options.access_token_ttl
        self.store.save_grant(grant.id, grant.client_id, grant.scope)
        self.tokens.access[token_hash(access)] = AccessToken(grant, now + ttl)
        self.store.save_token("access", token_hash(access), grant.id, now + ttl)
        self.tokens.refresh[token_hash(refresh)] = grant
        self.store.save_token("refresh", token_hash(refresh), grant.id, None)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope or grant.scope,
        }

    # -- resource-server side -----------------------------------------------

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        stored = self.tokens.access.get(token_hash(token.strip()))
        return (
            stored is not None
            and not stored.grant.revoked
            and self.clock() < stored.expires_at
            and not self.is_revoked()
        )


def _error_page(exc: InvalidAuthorization, headers: Mapping[str, str]) -> Response:
    context = {"message": exc.message, "error": exc.error}
    return pages.render("oauth_error.html", context, status_code=400, frameable=False, headers=headers)


async def _token_form(request: Request) -> FormData:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The token request must be application/x-www-form-urlencoded.")
    return await request.form()


def _single(form: FormData, name: str) -> str | None:
    values = form.getlist(name)
    if len(values) > 1:
        raise OAuthError("invalid_request", f"The parameter {name} appears more than once.")
    if not values or values[0] == "":
        return None  # RFC 6749 §3.1: empty parameters count as omitted
    value = values[0]
    if not isinstance(value, str):
        raise OAuthError("invalid_request", f"The parameter {name} must be a plain form field.")
    return value


def _required(form: FormData, name: str) -> str:
    value = _single(form, name)
    if value is None:
        raise OAuthError("invalid_request", f"The {name} parameter is missing.")
    return value


def _parse_basic(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise _basic_error("Only HTTP Basic client authentication is supported.")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _basic_error("The Authorization header is malformed.") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _basic_error("The Authorization header is malformed.")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


def _basic_error(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, status_code=401)
