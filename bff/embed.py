"""The widget's files: the loader module, the connect iframe document and its assets, logos."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .auth import services
from .connectors import LOGO_DIR
from .errors import not_found

ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*\.(js|css|d\.ts)$")
LOGO_NAME = re.compile(r"^[a-z0-9_]+\.svg$")
# scheme://host[:port], nothing else: it goes into a CSP header verbatim.
_ORIGIN = re.compile(r"https?://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",  # the hand-written .d.ts, for editors and tsc
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
# The source documents' script tag says /embed/v1.3/peliqan-integration.js: a copied tag must work,
# so that path serves the same loader (and the modules it imports relative to itself).
EMBED_PATHS = ("/embed/v1", "/embed/v1.3")
# The iframe document: scripts and styles from this origin only, talks only to this API, and
# may be framed only by the page its URL names (``?parent=``) when a partner registered that origin.
CONNECT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors {ancestors}; base-uri 'none'; form-action 'none'"
)


def widget_dir() -> Path:
    """The source checkout's ``widget/``, or the copy installed as ``bff.widget``."""
    source = Path(__file__).resolve().parent.parent / "widget"
    if (source / "peliqan-integration.js").exists():
        return source
    import importlib

    installed = importlib.import_module("bff.widget")  # installed by `pip install .` (package-dir mapping)
    return Path(str(installed.__file__)).resolve().parent


@lru_cache(maxsize=64)
def _load(path: Path, mtime_ns: int) -> tuple[bytes, str]:
    body = path.read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def file_response(
    request: Request, path: Path, *, cache_seconds: int, extra_headers: dict[str, str] | None = None
) -> Response:
    if not path.is_file():
        raise not_found("No such file.")
    body, etag = _load(path, path.stat().st_mtime_ns)
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={cache_seconds}",
        "X-Content-Type-Options": "nosniff",
        **(extra_headers or {}),
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=CONTENT_TYPES[path.suffix], headers=headers)


async def loader(request: Request) -> Response:
    """The embeddable ES module (`<script type="module" src=…>`)."""
    return file_response(
        request,
        widget_dir() / "peliqan-integration.js",
        cache_seconds=300,
        # Access-Control-Allow-Origin: * comes from the CORS middleware (all of /embed/v1/ is public).
        extra_headers={"Cross-Origin-Resource-Policy": "cross-origin"},
    )


async def frame_ancestors(request: Request) -> str:
    """``?parent=`` when that exact origin is registered on a partner, else ``'none'``.

    The browser enforces it for every ancestor, so a page of an unregistered origin cannot
    frame the connect UI even where ``location.ancestorOrigins`` is missing (Firefox). Which
    partner's token is used is checked later (``POST /api/embed/session``).
    """
    parent = request.query_params.get("parent", "")
    if _ORIGIN.fullmatch(parent) and await services(request).origin_registered(parent):
        return parent
    return "'none'"


async def connect_document(request: Request) -> Response:
    """The connect UI, loaded in an iframe on the partner's page."""
    csp = CONNECT_CSP.format(ancestors=await frame_ancestors(request))
    return file_response(
        request,
        widget_dir() / "connect.html",
        cache_seconds=60,
        extra_headers={"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer"},
    )


async def panel_document(request: Request) -> Response:
    """The "Your connections" panel (Peliqan.mountConnections), loaded in an iframe on the partner's page;
    framed only by a registered ``?parent=``, like the connect UI."""
    csp = CONNECT_CSP.format(ancestors=await frame_ancestors(request))
    return file_response(
        request,
        widget_dir() / "panel.html",
        cache_seconds=60,
        extra_headers={"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer"},
    )


async def asset(request: Request) -> Response:
    """The connect UI's own scripts and styles, and the loader's type definitions."""
    name = request.path_params["name"]
    if not ASSET_NAME.match(name):
        raise not_found("No such file.")
    return file_response(request, widget_dir() / name, cache_seconds=300)


async def favicon(request: Request) -> Response:
    """The BFF's icon, for its own pages (OAuth callback, sandbox pages) opened as tabs."""
    return file_response(request, widget_dir() / "favicon.ico", cache_seconds=86400)


async def logo(request: Request) -> Response:
    """A connector logo."""
    name = request.path_params["name"]
    if not LOGO_NAME.match(name):
        raise not_found("No such logo.")
    return file_response(request, Path(LOGO_DIR) / name, cache_seconds=3600)


def routes() -> list[BaseRoute]:
    return [
        *(Route(f"{prefix}/peliqan-integration.js", loader, methods=["GET"]) for prefix in EMBED_PATHS),
        Route("/embed/v1/connect", connect_document, methods=["GET"]),
        Route("/embed/v1/panel", panel_document, methods=["GET"]),
        Route("/embed/v1/logos/{name}", logo, methods=["GET"]),
        *(Route(f"{prefix}/{{name}}", asset, methods=["GET"]) for prefix in EMBED_PATHS),
        Route("/favicon.ico", favicon, methods=["GET"]),
    ]
