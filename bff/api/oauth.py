"""The OAuth2 sign-in pages: the start page (a ticket swapped for a browser binding and the
provider's URL) and the registered redirect URI. The flow itself is
:class:`bff.services.oauth_flows.OAuthFlows`; here are the HTTP parts: origins, the binding
cookie (RFC 9700 §4.7), the pages and their headers."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..auth import services
from ..contract.requests import OAuthStart
from ..errors import ApiError
from ..http import parse_body
from ..services.oauth_flows import LINK_PARAM, OAUTH_FLOW_MAX_AGE, OAUTH_START_PATH, SignInResult, state_hash
from ..templates import render

BINDING_COOKIE = "bff_oauth_"


def _public_origin(request: Request) -> str:
    parts = urlsplit(services(request).settings.public_url)
    return f"{parts.scheme}://{parts.netloc}"


def _binding_cookie(request: Request, state_hash: str) -> tuple[str, str, bool]:
    """(name, path, secure): ``__Host-`` on HTTPS, so no sibling subdomain can plant one."""
    secure = services(request).settings.public_url.startswith("https:")
    name = BINDING_COOKIE + state_hash[:24]
    return ("__Host-" + name, "/", True) if secure else (name, "/oauth/callback", False)


async def start_page(request: Request) -> HTMLResponse:
    """The page ``oauth_url`` opens. With a link ticket (``?link=``): it names the partner, the
    customer and the connector and goes on to the provider when the person presses Continue. Either
    way it takes the nonce from the window that opened it, if that window hands it over, and goes on."""
    nonce = secrets.token_urlsafe(16)
    link = request.query_params.get(LINK_PARAM)
    info = await services(request).oauth.describe_link(link) if link and len(link) <= 128 else None
    html = render(
        "oauth_start.html",
        nonce=nonce,
        start_path=OAUTH_START_PATH,
        link=link if info is not None else None,
        link_spent=bool(link) and info is None,
        info=info,
    )
    return HTMLResponse(
        html,
        headers={
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )


async def oauth_start(request: Request) -> Response:
    """Swap a ticket for a browser binding (an HttpOnly cookie) and the provider's URL.

    Called only by the start page itself (same origin, JSON): a page on another site cannot
    make a victim's browser do it. ``{nonce, opener_origin}``: the origin the start page received
    the nonce from: the connect iframe (this origin) or a page the ticket's partner registered.
    ``{link}``: the link ticket of the page's own URL, after the person pressed Continue.
    """
    svc = services(request)
    own_origin = _public_origin(request)
    if (
        request.headers.get("origin") != own_origin
        or request.headers.get("sec-fetch-site", "same-origin") != "same-origin"
    ):
        raise ApiError(403, "origin_not_allowed", "Only the sign-in start page may start a sign-in.")
    given = await parse_body(request, OAuthStart)
    if given.link is not None and given.nonce is None:
        url, hashed = await svc.oauth.swap_link(given.link)  # Continue pressed on an oauth_url opened on its own
    else:
        assert given.nonce is not None and given.opener_origin is not None  # OAuthStart checks it
        url, hashed = await svc.oauth.swap_ticket(given.nonce, opener=given.opener_origin, own_origin=own_origin)
    response = JSONResponse({"authorize_url": url}, headers={"Cache-Control": "no-store"})
    name, path, secure = _binding_cookie(request, hashed)
    response.set_cookie(
        name,
        svc.tokens.sign_oauth_binding(hashed),
        max_age=OAUTH_FLOW_MAX_AGE,
        path=path,
        secure=secure,
        httponly=True,
        samesite="lax",
    )
    return response


def callback_page(
    request: Request, *, ok: bool, connection_id: int | None, message: str, status: int = 200
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    svc = services(request)
    html = render(
        "oauth_callback.html",
        ok=ok,
        message=message,
        nonce=nonce,
        result={
            "source": "peliqan-oauth",
            "type": "oauth_result",
            "connection_id": connection_id,
            "ok": ok,
            "error": None if ok else message,
            "target_origin": svc.settings.public_url,
        },
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )


def _result_page(request: Request, result: SignInResult) -> HTMLResponse:
    return callback_page(
        request, ok=result.ok, connection_id=result.connection_id, message=result.message, status=result.status
    )


async def oauth_callback(request: Request) -> HTMLResponse:
    """The registered redirect URI: exchanges the code (with the PKCE verifier) and reports to the opener."""
    svc = services(request)
    state = request.query_params.get("state")
    if not state:
        return callback_page(
            request,
            ok=False,
            connection_id=None,
            message="This sign-in response has no state; start again from the app.",
            status=400,
        )
    name, _, _ = _binding_cookie(request, state_hash(state))
    binding = request.cookies.get(name, "")
    if not svc.tokens.oauth_binding_matches(binding, state_hash(state), max_age=OAUTH_FLOW_MAX_AGE):
        # Not the browser that started this sign-in (a forwarded link), or a ticket used as a state.
        return callback_page(
            request,
            ok=False,
            connection_id=None,
            status=400,
            message="This sign-in was started in another browser or window, so it cannot be finished here. "
            "Nothing was connected. If you want to connect your account, start again from the app.",
        )
    # The binding cookie stays until it expires: it names a state that is now used up.
    return _result_page(request, await svc.oauth.complete(state, request.query_params))


def routes() -> list[BaseRoute]:
    return [
        Route("/oauth/callback", oauth_callback, methods=["GET"]),
        Route(OAUTH_START_PATH, start_page, methods=["GET"]),
        Route(OAUTH_START_PATH, oauth_start, methods=["POST"]),
    ]
