"""HTML rendering for the sandbox's few pages (consent, errors, bank refresh)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from starlette.responses import HTMLResponse

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
