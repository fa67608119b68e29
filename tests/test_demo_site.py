from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections.abc import Callable

import httpx
from conftest import free_port, serve_in_thread
from standardwebhooks import Webhook

from bff.cli import ensure_demo_partner, ensure_demo_webhook
from bff.settings import Settings
from demo_site.app import activity_strings, create_site_app, describe_event, format_value


async def test_demo_site_pages_and_csp(settings_factory: Callable[..., Settings]) -> None:
    bff_port = free_port()
    settings = settings_factory(public_url=f"http://127.0.0.1:{bff_port}", sandbox_enabled=True)
    site_port = free_port()
    site_url = f"http://localhost:{site_port}"
    partner = await ensure_demo_partner(settings, site_url)
    assert json.loads((settings.data_dir / "demo-partner.json").read_text())["token"] == partner["token"]
    site = create_site_app(bff_url=settings.public_url, partner_token=partner["token"], site_url=site_url)
    with serve_in_thread(settings, port=bff_port), serve_in_thread(site, port=site_port, host="localhost") as base:
        async with httpx.AsyncClient(base_url=base, follow_redirects=True) as browser:
            login = await browser.get("/")
            assert "Sign in to Acme Books" in login.text
            bad = await browser.post("/login", data={"customer": "nobody"})
            assert bad.status_code == 400 and 'role="alert"' in bad.text
            page = await browser.post("/login", data={"customer": "wood_123"})
            assert page.status_code == 200 and str(page.url).endswith("/integrations")
            csp = page.headers["content-security-policy"]
            nonce = csp.split("'nonce-")[1].split("'")[0]
            assert f"script-src 'nonce-{nonce}' {settings.public_url};" in csp and "unsafe-inline" not in csp
            assert (
                f'<script type="module" src="{settings.public_url}/embed/v1/peliqan-integration.js" nonce="{nonce}">'
                in page.text
            )
            assert '<div id="peliqan-integration-button"' in page.text
            assert partner["token"] not in page.text  # the partner token never reaches the browser
            config = json.loads(page.text.split('id="acme-config">')[1].split("</script>")[0])
            assert config["bffUrl"] == settings.public_url and config["token"]

            # getToken's endpoint needs the session's CSRF value.
            assert (await browser.post("/integrations/token")).status_code == 403
            fresh = await browser.post("/integrations/token", headers={"X-CSRF-Token": config["csrf"]})
            assert fresh.status_code == 200 and fresh.json()["token"] != ""
            assert fresh.headers["cache-control"] == "no-store"

            icon = await browser.get("/favicon.ico")
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
            assert '<link rel="icon" href="/favicon.ico"' in page.text
            assert (await browser.get("/integrations/1/summary")).status_code == 403  # CSRF header needed
            summary = await browser.get("/integrations/999/summary", headers={"X-CSRF-Token": config["csrf"]})
            assert summary.status_code == 404 and summary.json()["code"] == "not_found"  # not this customer's

            embedded = await browser.get("/integrations/embedded")
            assert embedded.status_code == 200 and 'id="connections-panel"' in embedded.text
            assert '<script type="module" src="/static/embedded.js"' in embedded.text
            assert partner["token"] not in embedded.text

            data = await browser.get("/data")
            assert data.status_code == 200 and "wood_123" in data.text and "No synced tables yet" in data.text
            await browser.post("/logout")
            assert "Sign in" in (await browser.get("/integrations")).text
            assert "Sign in" in (await browser.get("/integrations/embedded")).text


def test_data_page_values_are_formatted() -> None:
    assert format_value(135.5, "number") == "135.50"
    assert format_value(1234567.891, "number") == "1,234,567.89"
    assert format_value(-68, "number") == "-68.00"
    assert format_value(1500, "decimal") == "1,500.00"  # amounts are decimal columns
    assert format_value(1250, "integer") == "1,250"
    assert format_value("101-/2025-/00001", "text") == "101-/2025-/00001"
    assert format_value(None, "text") == "—"
    assert format_value(True, None) == "yes"


async def test_demo_site_receives_verified_webhooks_and_shows_activity(
    settings_factory: Callable[..., Settings],
) -> None:
    bff_port, site_port = free_port(), free_port()
    settings = settings_factory(
        public_url=f"http://127.0.0.1:{bff_port}", sandbox_enabled=True, webhook_allow_private=True
    )
    site_url = f"http://localhost:{site_port}"
    partner = await ensure_demo_partner(settings, site_url)
    secret = await ensure_demo_webhook(settings, int(partner["id"]), f"{site_url}/webhooks")
    assert secret.startswith("whsec_")
    assert await ensure_demo_webhook(settings, int(partner["id"]), f"{site_url}/webhooks") == secret  # kept across runs
    assert json.loads((settings.data_dir / "demo-partner.json").read_text())["webhook_secret"] == secret
    site = create_site_app(
        bff_url=settings.public_url, partner_token=partner["token"], site_url=site_url, webhook_secret=secret
    )
    with serve_in_thread(settings, port=bff_port), serve_in_thread(site, port=site_port, host="localhost") as base:
        async with (
            httpx.AsyncClient(base_url=base, follow_redirects=True) as browser,
            httpx.AsyncClient(base_url=settings.public_url) as api,
        ):
            await browser.post("/login", data={"customer": "wood_123"})
            minted = await api.post(
                "/api/partner/sub-account/integrate/",
                json={"external_id": "wood_123"},
                headers={"Authorization": f"Bearer {partner['token']}"},
            )
            token = minted.json()["token"]
            created = await api.post(
                "/api/servers",
                json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert created.status_code == 201, created.text
            synced = await api.post(
                f"/api/server/{created.json()['id']}/sync?wait=60", headers={"Authorization": f"Bearer {token}"}
            )
            assert synced.status_code == 200, synced.text
            texts: list[str] = []
            for _ in range(200):
                texts = [e["text"] for e in (await browser.get("/integrations/activity")).json()["events"]]
                if "Sandbox Bank synced: 200 transactions" in texts:
                    break
                await asyncio.sleep(0.05)
            assert texts[0] == "Sandbox Bank synced: 200 transactions" and "Sandbox Bank connected" in texts

            body = json.dumps(
                {"type": "connection.created", "timestamp": "x", "data": {"external_id": "wood_123", "name": "Forged"}}
            )
            headers = {"webhook-id": "msg_forged", "webhook-timestamp": "1700000000", "webhook-signature": "v1,AAAA"}
            assert (await browser.post("/webhooks", content=body, headers=headers)).status_code == 401
            # A correctly signed one by someone with another secret: refused too.
            other = Webhook("whsec_" + "A" * 32)
            now = datetime.datetime.now(datetime.UTC)
            signed = {
                "webhook-id": "msg_2",
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": other.sign("msg_2", now, body),
            }
            assert (await browser.post("/webhooks", content=body, headers=signed)).status_code == 401
            assert "Forged connected" not in [
                e["text"] for e in (await browser.get("/integrations/activity")).json()["events"]
            ]


async def test_data_page_saved_queries(settings_factory: Callable[..., Settings]) -> None:
    bff_port = free_port()
    settings = settings_factory(public_url=f"http://127.0.0.1:{bff_port}", sandbox_enabled=True)
    site_port = free_port()
    site_url = f"http://localhost:{site_port}"
    partner = await ensure_demo_partner(settings, site_url)
    site = create_site_app(bff_url=settings.public_url, partner_token=partner["token"], site_url=site_url)
    with serve_in_thread(settings, port=bff_port), serve_in_thread(site, port=site_port, host="localhost") as base:
        async with httpx.AsyncClient(base_url=base, follow_redirects=True) as browser:
            page = await browser.post("/login", data={"customer": "wood_123"})
            csrf = json.loads(page.text.split('id="acme-config">')[1].split("</script>")[0])["csrf"]
            empty = await browser.get("/data")
            assert "Saved queries" in empty.text and "No saved queries yet." in empty.text

            forged = await browser.post("/data/queries", data={"name": "x", "query": "SELECT 1 AS one"})
            assert forged.status_code == 403 and "form_expired" in forged.text
            elsewhere = await browser.post(
                "/data/queries",
                data={"csrf": csrf, "name": "x", "query": "SELECT 1 AS one"},
                headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
            )
            assert elsewhere.status_code == 403 and "cross_site" in elsewhere.text

            saved = await browser.post(
                "/data/queries",
                data={"csrf": csrf, "name": "The answer", "query": "SELECT 42 AS answer, 'forty-two' AS words"},
            )
            assert saved.status_code == 200 and "/data?query=" in str(saved.url)
            assert (
                'aria-current="true">The answer</a>' in saved.text
                and "forty-two" in saved.text
                and "1 rows" in saved.text
            )

            refused = await browser.post(
                "/data/queries", data={"csrf": csrf, "name": "Bad", "query": "SELECT 1; SELECT 2"}
            )
            assert refused.status_code == 200 and 'role="alert"' in refused.text and "multiple commands" in refused.text
            assert "SELECT 1; SELECT 2" in refused.text  # the draft is kept for editing
            listed = await browser.get("/data")
            assert listed.text.count('href="/data?query=') == 1


def _event(kind: str, **data: object) -> dict[str, object]:
    return {"type": kind, "data": {"name": "Sandbox CRM", "server_id": 7, **data}}


def test_the_activity_feed_has_every_sentence_in_every_locale_with_the_same_placeholders() -> None:
    tables = activity_strings()
    assert list(tables) == ["en", "nl", "fr", "de"]
    for locale, table in tables.items():
        assert set(table) == set(tables["en"]), locale
        for key, text in table.items():
            assert text.strip() and set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", tables["en"][key]))
    assert describe_event(_event("connection.deleted", health_status="OK"), "de") == "Sandbox CRM entfernt"


def test_the_activity_feed_speaks_human_words_and_only_says_connected_when_it_is() -> None:
    def feed(*events: dict[str, object], locale: str = "en") -> list[str | None]:
        return [describe_event(e, locale) for e in events]

    # An OAuth sign-in that was denied, then cleaned up: never "connected".
    denied = feed(
        _event("connection.created", health_status="AUTHORIZING"),
        _event(
            "connection.health_changed",
            **{"from": "AUTHORIZING", "to": "ERROR", "detail": "Access was denied at the provider."},
        ),
        _event("connection.deleted", health_status="ERROR"),
    )
    assert denied == [
        "Signing in to Sandbox CRM started",
        "Signing in to Sandbox CRM failed: Access was denied at the provider.",
        "Sandbox CRM removed",
    ]
    # Abandoned (the window closed, Cancel): deleted while still signing in.
    assert feed(_event("connection.deleted", health_status="AUTHORIZING")) == [
        "The setup of Sandbox CRM was not finished: nothing was connected"
    ]
    # Finished: "connected" once, when the sign-in completes.
    assert feed(
        _event("connection.health_changed", **{"from": "AUTHORIZING", "to": "OK", "detail": None}),
        _event("connection.health_changed", **{"from": "OK", "to": "HEALTHY", "detail": None}),
        _event("connection.created", health_status="OK"),
    ) == ["Sandbox CRM connected", None, "Sandbox CRM connected"]
    # States in words, the reason once (not "disabled (Disabled: …)", "re enabled", "re authorised").
    lifecycle = feed(
        _event(
            "connection.health_changed",
            **{"from": "HEALTHY", "to": "DISABLED", "detail": "Disabled: paused by the customer."},
        ),
        _event("connection.health_changed", **{"from": "DISABLED", "to": "RE_ENABLED", "detail": None}),
        _event("connection.health_changed", **{"from": "RE_AUTHORISING", "to": "RE_AUTHORISED", "detail": None}),
        _event(
            "connection.health_changed", **{"from": "HEALTHY", "to": "ERROR", "detail": "Re-authorise this connection."}
        ),
    )
    assert lifecycle == [
        "Sandbox CRM paused: nothing syncs until it is resumed",
        "Sandbox CRM resumed",
        "Sandbox CRM reconnected",
        "Sandbox CRM needs your attention: Re-authorise this connection.",
    ]
    for text in lifecycle:
        assert text and not any(raw in text.lower() for raw in ("re enabled", "re authorised", "(disabled"))
    # Syncs and scripts.
    assert feed(
        _event("sync.finished", status="succeeded", records={"contacts": 1250, "deals": 0}),
        _event("sync.finished", status="succeeded", records={}),
        _event("sync.finished", status="failed", error="Timed out."),
        {"type": "script.finished", "data": {"name": "nightly totals", "status": "succeeded", "exit_code": 0}},
        {
            "type": "script.finished",
            "data": {"name": "nightly totals", "status": "failed", "error": None, "exit_code": 3},
        },
    ) == [
        "Sandbox CRM synced: 1,250 contacts, 0 deals",
        "Sandbox CRM synced: nothing new",
        "Sandbox CRM could not sync: Timed out.",
        "Script nightly totals ran",
        "Script nightly totals failed: exit code 3",
    ]
    # The widget's string tables, one per locale.
    assert feed(_event("connection.health_changed", **{"from": "HEALTHY", "to": "DISABLED"}), locale="nl") == [
        "Sandbox CRM gepauzeerd: er wordt niets gesynchroniseerd tot je hervat"
    ]
