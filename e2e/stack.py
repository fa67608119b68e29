"""The servers behind the browser tests: the real BFF and a partner site, on two different origins.

The BFF runs from ``bff.app.create_app(settings)`` in a uvicorn thread on ``127.0.0.1``; the
partner site (a tiny Starlette app, below) runs on ``localhost``: the same machine, a different
origin, as in production. The partner site holds the partner token and mints integrate tokens
through the partner API over HTTP, exactly like a partner's back-end; the browser never sees the
partner token.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from bff.app import create_app
from bff.cli import create_partner, ensure_demo_partner, ensure_demo_webhook
from bff.settings import Secret, Settings, generate_encryption_key, generate_secret_key
from bff.testing import TestDatabases, free_port, serve_in_thread
from demo_site.app import CUSTOMERS, create_site_app
from e2e import frameworks

WIDGET = Path(__file__).resolve().parents[1] / "widget"


# -- the partner site ------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Partner app</title>
<script nonce="{nonce}">
  // Recorded before the loader runs, so nothing the widget does can be missed.
  window.seen = {{connected: [], events: [], errors: [], closes: 0, tokenCalls: 0, tokens: [], csp: [], readyEvents: 0, sdk: []}};
  document.addEventListener('securitypolicyviolation', (e) => window.seen.csp.push(e.violatedDirective + ' ' + e.blockedURI));
  addEventListener('peliqan:ready', () => window.seen.readyEvents++);
</script>
<script type="module" src="{bff}/embed/v1/peliqan-integration.js"></script>
</head>
<body>
<header><h1>Partner app</h1></header>
<main>
  <p><a href="#top">A link behind the modal</a></p>
  <div id="peliqan-integration-button">Add connection</div>
  <button type="button" id="sdk-call">Run SDK call</button>
  <div id="inline-slot"></div>
</main>
<script type="application/json" id="cfg">{config}</script>
<script type="module" nonce="{nonce}">
  const cfg = window.cfg = JSON.parse(document.getElementById('cfg').textContent);
  const seen = window.seen;
  window.getToken = async () => {{
    seen.tokenCalls++;
    const response = await fetch('/token?customer=' + encodeURIComponent(cfg.customer), {{method: 'POST'}});
    const {{token}} = await response.json();
    seen.tokens.push(token);
    return token;
  }};
  window.makeOptions = (extra = {{}}) => ({{
    ...(cfg.token ? {{integrationToken: cfg.token}} : {{}}),
    ...(cfg.getToken ? {{getToken: window.getToken}} : {{}}),
    ...cfg.options,
    onConnected: (data) => seen.connected.push(data),
    onClose: () => seen.closes++,
    onError: (e) => seen.errors.push({{code: e.code, status: e.status, message: e.message, peliqanError: e instanceof Peliqan.PeliqanError}}),
    onEvent: (e) => seen.events.push(e.type === 'error' ? {{type: 'error', code: e.error.code}} : e),
    ...extra,
  }});
  // A partner's own button running whatever SDK call a test set up (a real click: pop-ups allowed).
  document.getElementById('sdk-call').addEventListener('click', () => {{
    Promise.resolve(window.nextSdkCall?.()).then((r) => seen.sdk.push({{ok: r ?? null}}), (e) => seen.sdk.push({{error: e.code, status: e.status, message: e.message}}));
  }});
  if (cfg.initialize) window.peliqan = Peliqan.initialize(window.makeOptions(cfg.inline ? {{container: '#inline-slot'}} : {{}}));
</script>
</body>
</html>
"""

FORGE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Forger</title></head><body>
<script>
  // Another origin tries to drive the widget: fake results to the partner page, a fake token to the iframe.
  parent.postMessage({source: 'peliqan', type: 'connected', data: {id: 666, name: 'forged'}}, '*');
  parent.postMessage({source: 'peliqan', type: 'close'}, '*');
  for (let i = 0; i < parent.frames.length; i++) {
    parent.frames[i].postMessage({source: 'peliqan', type: 'init', token: 'forged-token', options: {mode: 'modal'}}, '*');
    parent.frames[i].postMessage({source: 'peliqan', type: 'open', options: {selectedConnector: 'sandbox_bank'}}, '*');
    parent.frames[i].postMessage({source: 'peliqan', type: 'token', token: 'forged-token'}, '*');
  }
  document.title = 'Forged';
</script></body></html>"""


# Seed 002's "connector with oAuth2 flow", as a partner's own UI does it without the widget: its
# back-end created the connection (POST /api/servers) and got oauth_url; the page opens it in a new
# tab, and when that tab closes asks GET /api/server/<id>. Nothing else (no nonce hand-over).
PARTNER_UI_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Partner UI</title></head>
<body>
<main>
  <h1>Integrations</h1>
  <p>Data access for this integration is powered by bff.</p>
  <button type="button" id="connect">Connect Sandbox CRM</button>
  <p id="result" role="status"></p>
</main>
<script nonce="{nonce}">
  const config = {config};
  document.getElementById('connect').addEventListener('click', () => {{
    const tab = window.open(config.oauth_url, '_blank');
    const timer = setInterval(async () => {{
      if (!tab.closed) return;
      clearInterval(timer);
      const answer = await fetch(config.bff + '/api/server/' + config.id, {{
        headers: {{ Authorization: 'JWT ' + config.token }},
      }});
      const body = await answer.json();
      document.getElementById('result').textContent = 'Connection ' + config.id + ': ' + body.health_status;
    }}, 250);
  }});
</script>
</body></html>"""


def content_security_policy(nonce: str, bff_url: str, other_url: str) -> str:
    # Strict: no inline styles at all, scripts by nonce or from the BFF. The widget must live with it.
    return (
        f"default-src 'self'; script-src 'nonce-{nonce}' {bff_url}; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {bff_url}; frame-src {bff_url} {other_url}; base-uri 'none'; object-src 'none'"
    )


def create_partner_site(*, bff_url: str, partner_token: str, other_url: str) -> Starlette:
    """Page options come from the query string; tokens never do."""

    async def mint(customer: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=bff_url) as client:
            response = await client.post(
                "/api/partner/sub-account/integrate/",
                json={
                    "external_id": customer,
                    "first_name": "Test",
                    "last_name": "Customer",
                    "email": f"{customer}@example.test",
                    "company_name": "Test Co",
                },
                headers={"Authorization": f"Bearer {partner_token}"},
            )
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def page(request: Request) -> Response:
        q = request.query_params
        customer = q.get("customer") or f"cust-{uuid.uuid4().hex[:8]}"
        auth = q.get("auth", "token")
        token = (await mint(customer))["token"] if auth in ("token", "both") else None
        options = json.loads(q.get("options", "{}"))
        config = {
            "customer": customer,
            "token": token,
            "getToken": auth in ("getToken", "both"),
            "options": options,
            "inline": q.get("inline") == "1",
            "initialize": q.get("manual") != "1",
            "bff": bff_url,
        }
        nonce = secrets.token_urlsafe(12)
        body = PAGE.format(nonce=nonce, bff=bff_url, config=json.dumps(config).replace("</", "<\\/"))
        return HTMLResponse(
            body, headers={"Content-Security-Policy": content_security_policy(nonce, bff_url, other_url)}
        )

    async def token(request: Request) -> JSONResponse:
        return JSONResponse({"token": (await mint(request.query_params["customer"]))["token"]})

    async def partner_ui(request: Request) -> HTMLResponse:
        """The connection is created by the partner's back-end, as seed 002 shows it."""
        customer = request.query_params.get("customer") or f"cust-{uuid.uuid4().hex[:8]}"
        token = (await mint(customer))["token"]
        async with httpx.AsyncClient(base_url=bff_url) as client:
            created = await client.post(
                "/api/servers", json={"servertype_id": "sandbox_crm"}, headers={"Authorization": f"JWT {token}"}
            )
        created.raise_for_status()
        config = {"bff": bff_url, "token": token, "id": created.json()["id"], "oauth_url": created.json()["oauth_url"]}
        nonce = secrets.token_urlsafe(12)
        body = PARTNER_UI_PAGE.format(nonce=nonce, config=json.dumps(config).replace("</", "<\\/"))
        return HTMLResponse(
            body, headers={"Content-Security-Policy": content_security_policy(nonce, bff_url, other_url)}
        )

    async def forge(request: Request) -> HTMLResponse:
        return HTMLResponse(FORGE_PAGE)

    async def framework_page(request: Request) -> Response:
        """A React 18 or Vue 3 app hosting the widget (e2e/frameworks.py)."""
        if request.path_params["framework"] not in ("react", "vue"):
            return Response(status_code=404)
        customer = request.query_params.get("customer") or f"cust-{uuid.uuid4().hex[:8]}"
        config = {
            "customer": customer,
            "token": (await mint(customer))["token"],
            "naive": request.query_params.get("naive") == "1",
            "bff": bff_url,
        }
        nonce = secrets.token_urlsafe(12)
        body = frameworks.host_page(
            request.path_params["framework"], nonce=nonce, config=json.dumps(config).replace("</", "<\\/")
        )
        return HTMLResponse(
            body, headers={"Content-Security-Policy": content_security_policy(nonce, bff_url, other_url)}
        )

    async def npm_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in frameworks.FILES:
            return Response(status_code=404)
        return FileResponse(frameworks.fixtures_dir() / name, media_type="text/javascript")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/token", token, methods=["POST"]),
            Route("/partner-ui", partner_ui),
            Route("/forge", forge),
            Route("/host/{framework}", framework_page),
            Route("/npm/{name}", npm_file),
        ]
    )


# -- one stack: BFF + partner + partner site --------------------------------------------------


@dataclass(frozen=True)
class Stack:
    bff_url: str
    site_url: str  # registered for the partner
    other_url: str  # the same site on an origin the partner did not register
    partner_token: str

    def integrate(self, customer: str) -> str:
        response = httpx.post(
            f"{self.bff_url}/api/partner/sub-account/integrate/",
            json={
                "external_id": customer,
                "first_name": "T",
                "last_name": "C",
                "email": "t@example.test",
                "company_name": "Co",
            },
            headers={"Authorization": f"Bearer {self.partner_token}"},
        )
        response.raise_for_status()
        return str(response.json()["token"])

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, self.bff_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs
        )


@functools.cache
def test_databases() -> TestDatabases:
    """One embedded PostgreSQL for the browser suite (outside pytest's owner-only temp root,
    since the server runs as its own user); each stack gets a fresh database on it."""
    root = Path(tempfile.mkdtemp(prefix="bff-e2e-pg-"))
    atexit.register(shutil.rmtree, root, True)
    return TestDatabases(root)


def sandbox_settings(data_dir: Path, bff_url: str, sandbox_env: dict[str, str]) -> Settings:
    return Settings(
        database_url=Secret(test_databases().create()),
        data_dir=data_dir,
        secret_keys=(Secret(generate_secret_key()),),
        encryption_key=Secret(generate_encryption_key()),
        public_url=bff_url,
        sandbox_enabled=True,
        sandbox_env={"BFF_SANDBOX_CONTROLS": "open", **sandbox_env},  # like `bff demo`
        # The browser tests press "Sync now" themselves; the scheduler has its own tests.
        schedules_enabled=False,
        webhook_allow_private=True,  # the demo site receives webhooks on localhost, as in `bff demo`
    )


def off_thread(coroutine: Any) -> Any:
    """Run a coroutine on its own thread: Playwright's sync API owns this thread's event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextlib.contextmanager
def running_stack(data_dir: Path, **sandbox_env: str) -> Iterator[Stack]:
    bff_port, site_port = free_port(), free_port()
    bff_url = f"http://127.0.0.1:{bff_port}"
    site_url = f"http://localhost:{site_port}"
    other_url = f"http://127.0.0.1:{site_port}"
    settings = sandbox_settings(data_dir, bff_url, sandbox_env)
    partner = off_thread(create_partner(settings, "e2e", [site_url]))  # `bff partner create`
    with serve_in_thread(create_app(settings), port=bff_port):
        site = create_partner_site(bff_url=bff_url, partner_token=partner["token"], other_url=other_url)
        with serve_in_thread(site, port=site_port):
            yield Stack(bff_url=bff_url, site_url=site_url, other_url=other_url, partner_token=partner["token"])


# -- the demo partner site (Acme Books), as `bff demo` runs it ----------------------------------------


@dataclass(frozen=True)
class DemoStack:
    bff_url: str
    site_url: str
    partner_token: str
    customers: dict[str, dict[str, str]]  # the demo site's user directory, read on every request

    def new_customer(self, company: str = "QA Test Co") -> str:
        """A fresh Acme Books customer (its own sub-account, so its connections are its own)."""
        external_id = f"qa_{uuid.uuid4().hex[:10]}"
        self.customers[external_id] = {
            "first_name": "Quinn",
            "last_name": "Tester",
            "email": f"{external_id}@example.test",
            "company_name": company,
            "language": "en",
        }
        return external_id


@contextlib.contextmanager
def running_demo(data_dir: Path, **sandbox_env: str) -> Iterator[DemoStack]:
    """The BFF (sandbox on) on 127.0.0.1 and the demo site on localhost, wired like `bff demo`."""
    bff_port, site_port = free_port(), free_port()
    bff_url = f"http://127.0.0.1:{bff_port}"
    site_url = f"http://localhost:{site_port}"
    settings = sandbox_settings(data_dir, bff_url, sandbox_env)
    partner = off_thread(ensure_demo_partner(settings, site_url))
    webhook_secret = off_thread(ensure_demo_webhook(settings, int(partner["id"]), f"{site_url}/webhooks"))
    customers = {external_id: dict(profile) for external_id, profile in CUSTOMERS.items()}
    with serve_in_thread(create_app(settings), port=bff_port):
        site = create_site_app(
            bff_url=bff_url,
            partner_token=partner["token"],
            site_url=site_url,
            customers=customers,
            webhook_secret=webhook_secret,
        )
        with serve_in_thread(site, port=site_port):
            yield DemoStack(bff_url=bff_url, site_url=site_url, partner_token=partner["token"], customers=customers)


def screenshot_path(name: str) -> Path:
    """docs/<name> with BFF_UPDATE_SCREENSHOTS=1 (to refresh the README's pictures), else test-results/."""
    root = WIDGET.parent
    folder = root / "docs" if os.environ.get("BFF_UPDATE_SCREENSHOTS") == "1" else root / "test-results"
    folder.mkdir(exist_ok=True)
    return folder / name


def locale_strings() -> dict[str, dict[str, Any]]:
    """The widget's own string tables by locale: widget/locales.<xx>.js and the panel's
    panel-locales.<xx>.js (JSON after `export default`), merged."""

    def table(path: Path) -> dict[str, Any]:
        source = path.read_text()
        start = source.index("\nexport default ") + len("\nexport default ")
        return json.loads(source[start:].strip().rstrip(";"))  # type: ignore[no-any-return]

    return {
        path.name.split(".")[1]: {**table(path), **table(WIDGET / f"panel-locales.{path.name.split('.')[1]}.js")}
        for path in sorted(WIDGET.glob("locales.*.js"))
    }
