"""HTML rendering for the sandbox's few pages (consent, errors, bank refresh)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

# Forms carry a CSRF value equal to a first-party cookie set with the page (double submit):
# a page on another site can post the form but cannot read or set the cookie.
CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "sandbox_csrf"
CSRF_MAX_AGE = 3600

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# Pages carry their styles in one <style> element and load nothing else.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"
# The consent page must never be framed (clickjacking the Allow button).
_CSP_NO_FRAMES = _CSP + "; frame-ancestors 'none'"


def render(
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    frameable: bool = True,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    html = _ENV.get_template(template).render(**context)
    response_headers = {
        "Content-Security-Policy": _CSP if frameable else _CSP_NO_FRAMES,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }
    if not frameable:
        response_headers["X-Frame-Options"] = "DENY"
    response_headers.update(headers or {})
    return HTMLResponse(html, status_code=status_code, headers=response_headers)


def csrf_token(request: Request) -> str:
    """The browser's current CSRF value (from its cookie), or a fresh one."""
    current = request.cookies.get(CSRF_COOKIE, "")
    return current if 20 <= len(current) <= 64 and current.isascii() else secrets.token_urlsafe(24)


def csrf_ok(request: Request, sent: object) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return isinstance(sent, str) and bool(cookie) and secrets.compare_digest(sent.encode(), cookie.encode())


def with_csrf_cookie(response: HTMLResponse, request: Request, token: str) -> HTMLResponse:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=CSRF_MAX_AGE,
        path=(request.scope.get("root_path", "") or "") + "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def csrf_failure() -> HTMLResponse:
    return render("form_expired.html", {}, status_code=403, frameable=False)
