"""Drive the sandbox providers' browser pages over HTTP, as a customer's browser would."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

_HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"')


def consent_form(page_html: str) -> dict[str, str]:
    fields = {name: html.unescape(value) for name, value in _HIDDEN.findall(page_html)}
    assert fields, "no consent form on the page"
    return fields


async def start_sign_in(
    client: httpx.AsyncClient, answer: Mapping[str, Any], *, opener_origin: str | None = None
) -> str:
    """What the start page does in the browser that opened it: swap the nonce for the binding
    cookie (kept in ``client``) and the provider's URL, which it returns."""
    start_url = str(answer.get("oauth_url") or answer["auth_uri"])
    parts = urlsplit(start_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    page = await client.get(start_url)
    assert page.status_code == 200 and "oauth_nonce" in page.text, page.text
    started = await client.post(
        start_url,
        json={"nonce": answer["oauth_nonce"], "opener_origin": opener_origin or origin},
        headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"},
    )
    assert started.status_code == 200, started.text
    return str(started.json()["authorize_url"])


async def authorize(
    client: httpx.AsyncClient, started: Mapping[str, Any] | str, *, decision: str = "allow"
) -> httpx.Response:
    """Start the sign-in (an answer with ``oauth_url``/``auth_uri`` and ``oauth_nonce``, or the
    provider's URL of an already started one), press Allow/Deny, follow the redirect to /oauth/callback."""
    oauth_url = started if isinstance(started, str) else await start_sign_in(client, started)
    page = await client.get(oauth_url)
    assert page.status_code == 200, page.text
    answer = await client.post("/sandbox/crm/oauth/decision", data={**consent_form(page.text), "decision": decision})
    assert answer.status_code == 302, answer.text
    return await client.get(answer.headers["location"])


async def press_refresh(client: httpx.AsyncClient, refresh_url: str) -> httpx.Response:
    """Open the bank's manual-refresh page and press "Refresh" (the form carries its CSRF value)."""
    page = await client.get(refresh_url)
    assert page.status_code == 200, page.text
    return await client.post(refresh_url, data=consent_form(page.text))


async def connect_crm(client: httpx.AsyncClient, token: str, **extra: Any) -> dict[str, Any]:
    created = await client.post(
        "/api/servers", json={"servertype_id": "sandbox_crm", **extra}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    callback = await authorize(client, created.json())
    assert callback.status_code == 200, callback.text
    return created.json()  # type: ignore[no-any-return]


async def connect_accounting(
    client: httpx.AsyncClient, token: str, divisions: tuple[str, ...] = ("101", "102", "103")
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    created = await client.post(
        "/api/servers", json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"}, headers=headers
    )
    assert created.status_code == 201, created.text
    configured = await client.post(
        f"/api/server/{created.json()['id']}/config", json={"divisions": list(divisions)}, headers=headers
    )
    assert configured.status_code == 200, configured.text
    return configured.json()  # type: ignore[no-any-return]


async def connect_bank(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    created = await client.post(
        "/api/servers",
        json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]
