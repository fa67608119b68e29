"""`bff partner rotate-token` / `revoke` on the demo's partner while the demo runs."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from conftest import auth, free_port, serve_in_thread

from bff.cli import ensure_demo_partner, partner_action
from bff.settings import Settings
from demo_site.app import create_site_app


async def test_the_demo_site_picks_up_a_rotated_token_and_says_what_to_do_after_revoke(
    settings_factory: Callable[..., Settings],
) -> None:
    bff_port, site_port = free_port(), free_port()
    settings = settings_factory(public_url=f"http://127.0.0.1:{bff_port}", sandbox_enabled=True)
    site_url = f"http://localhost:{site_port}"
    partner = await ensure_demo_partner(settings, site_url)
    token_file = settings.data_dir / "demo-partner.json"
    site = create_site_app(
        bff_url=settings.public_url, partner_token=partner["token"], site_url=site_url, partner_token_file=token_file
    )
    with serve_in_thread(settings, port=bff_port), serve_in_thread(site, port=site_port, host="localhost") as base:
        async with httpx.AsyncClient(base_url=base, follow_redirects=True) as browser:
            page = await browser.post("/login", data={"customer": "wood_123"})
            assert page.status_code == 200 and str(page.url).endswith("/integrations")
            csrf = json.loads(page.text.split('id="acme-config">')[1].split("</script>")[0])["csrf"]

            rotated = await partner_action(settings, "rotate-token", partner_id=int(partner["id"]))
            assert json.loads(token_file.read_text())["token"] == rotated["token"] != partner["token"]
            assert token_file.stat().st_mode & 0o777 == 0o600
            for path in ("/integrations", "/data", "/integrations/embedded"):
                answer = await browser.get(path)
                assert answer.status_code == 200, (path, answer.text)
            assert (await browser.post("/integrations/token", headers={"X-CSRF-Token": csrf})).status_code == 200

            await partner_action(settings, "revoke", partner_id=int(partner["id"]))
            assert json.loads(token_file.read_text())["token"] is None
            refused = await browser.get("/integrations")
            assert refused.status_code == 502
            assert "has been revoked" in refused.text and "rotated; use the new one" not in refused.text
            assert f"bff partner rotate-token {partner['id']} --data-dir {settings.data_dir}" in refused.text
            token = await browser.post("/integrations/token", headers={"X-CSRF-Token": csrf})
            assert token.status_code == 401 and token.json()["code"] == "token_revoked"

            await partner_action(settings, "rotate-token", partner_id=int(partner["id"]))
            assert (await browser.get("/integrations")).status_code == 200


async def test_a_partner_token_after_revoke_says_revoked(settings_factory: Callable[..., Settings]) -> None:
    from conftest import running_bff

    async with running_bff(settings_factory()) as bff:
        partner_id, token = await bff.partner()
        await partner_action(bff.services.settings, "revoke", partner_id=partner_id)
        answer = await bff.client.get("/api/partner/sub-accounts", headers=auth(token))
        assert answer.status_code == 401 and answer.json()["code"] == "token_revoked"
        assert "has been revoked" in answer.json()["detail"] and "rotated; use the new one" not in answer.text
