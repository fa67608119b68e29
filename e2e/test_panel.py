"""The embeddable "Your connections" panel (Peliqan.mountConnections) on the demo site's
/integrations/embedded page, and on the bare partner page: listing, Sync now with live progress,
Finish setup, re-authorise, manual refresh, delete with an in-panel confirmation, keyboard, axe,
locale, destroy()."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from e2e.pages.connect_modal import ConnectModal
from e2e.pages.connections_panel import ConnectionsPanel
from e2e.pages.demo_site import SignInPage
from e2e.pages.partner_page import PartnerPage
from e2e.pages.sandbox_provider import ConsentPage
from e2e.stack import DemoStack, Stack, locale_strings, running_demo, screenshot_path

ROOT = Path(__file__).resolve().parents[1]
STRINGS = locale_strings()
EN = STRINGS["en"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with running_demo(tmp_path_factory.mktemp("panel-demo")) as value:
        yield value


def api_token(demo: DemoStack, external_id: str) -> str:
    response = httpx.post(
        f"{demo.bff_url}/api/partner/sub-account/integrate/",
        json={"external_id": external_id, **demo.customers[external_id]},
        headers={"Authorization": f"Bearer {demo.partner_token}"},
    )
    response.raise_for_status()
    return str(response.json()["token"])


def create(demo: DemoStack, token: str, **body: str) -> dict[str, object]:
    response = httpx.post(
        f"{demo.bff_url}/api/servers", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def open_panel(page: Page, demo: DemoStack, external_id: str) -> ConnectionsPanel:
    SignInPage(page, demo.site_url).sign_in(external_id, EN)
    page.goto(f"{demo.site_url}/integrations/embedded")
    panel = ConnectionsPanel(page, EN)
    expect(panel.heading).to_be_visible()
    return panel


# The panel is part of the partner's page (its heading is an h2 under the page's h1), so the one
# document-level rule about an h1 does not apply when its iframe is checked on its own.
PANEL_ONLY = {"rules": {"page-has-heading-one": {"enabled": False}}}


def axe_violations(target: object, options: dict[str, object] | None = None) -> list[str]:
    result = Axe().run(target, options=options)
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in result.response["violations"]]


def test_panel_lists_connections_syncs_with_live_progress_and_passes_axe(page: Page, demo: DemoStack) -> None:
    customer = demo.new_customer()
    token = api_token(demo, customer)
    create(demo, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    create(demo, token, servertype_id="sandbox_accounting", api_key="sandbox-valid-key")  # left at the division step
    panel = open_panel(page, demo, customer)
    bank, accounting = panel.connection("Sandbox Bank"), panel.connection("Sandbox Accounting")
    expect(bank.badge).to_have_text("Connected")
    expect(bank.fact(EN["lastSync"])).to_have_text(EN["never"])
    expect(accounting.badge).to_have_text("Finish setup")
    expect(accounting.sync_button).to_have_count(0)
    expect(bank.refresh_button).to_be_visible()  # the bank has a manual refresh
    expect(accounting.refresh_button).to_have_count(0)
    assert axe_violations(page) == [], "the page"
    assert axe_violations(panel.document(), PANEL_ONLY) == [], "the panel"

    bank.sync_button.click()
    expect(bank.progress).to_have_text(re.compile(r"^Synced: 2[01]0 new records\.$"), timeout=30_000)
    expect(bank.badge).to_have_text("Healthy")
    expect(bank.fact(EN["records"])).to_have_text(re.compile(r"^2[01]0$"))
    expect(bank.fact(EN["lastSync"]).locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    # A second sync brings nothing new: "Records" still says what the connection holds (not 0).
    bank.sync_button.click()
    expect(bank.progress).to_have_text("Synced: 0 new records.", timeout=30_000)
    held = httpx.get(f"{demo.bff_url}/api/servers", headers={"Authorization": f"Bearer {token}"}).json()["results"]
    assert [c["live_count"] for c in held if c["connector"] == "sandbox_bank"] == [
        int(bank.fact(EN["records"]).inner_text())
    ]
    expect(bank.fact(EN["records"])).to_have_text(re.compile(r"^2[01]0$"))
    assert axe_violations(panel.document(), PANEL_ONLY) == [], "the panel after a sync"

    # Looks like a product at both widths; the pictures are for people to look at (test-results/).
    ROOT.joinpath("test-results").mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.mouse.move(0, 0)
    panel.fitted()
    page.screenshot(path=str(screenshot_path("panel.png")), full_page=True)  # the README's picture
    page.set_viewport_size({"width": 390, "height": 844})
    expect(bank.sync_button).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    assert panel.document().evaluate("document.documentElement.scrollWidth <= innerWidth")
    panel.fitted()
    page.screenshot(path=str(ROOT / "test-results" / "panel-phone.png"), full_page=True)


def test_finish_setup_and_key_reauthorise_open_the_connect_window(page: Page, demo: DemoStack) -> None:
    customer = demo.new_customer()
    token = api_token(demo, customer)
    create(demo, token, servertype_id="sandbox_accounting", api_key="sandbox-valid-key")
    panel = open_panel(page, demo, customer)
    modal = ConnectModal(page, EN)
    accounting = panel.connection("Sandbox Accounting")
    accounting.finish_button.click()
    expect(page.get_by_role("dialog", name=EN["title"])).to_be_visible()
    expect(modal.heading).to_have_text(modal.title("finishTitle", name="Sandbox Accounting"))
    modal.choice("Acme Retail").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    modal.done_button.click()
    expect(accounting.badge).to_have_text("Connected")  # the panel reloaded when the modal closed
    accounting.reauthorise_button.click()
    expect(modal.heading).to_have_text(modal.title("reauthTitle", name="Sandbox Accounting"))
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()  # the saved divisions are kept
    modal.done_button.click()
    expect(accounting.badge).to_have_text("Reconnected")


def test_oauth_reauthorise_and_manual_refresh_open_tabs(page: Page, demo: DemoStack) -> None:
    customer = demo.new_customer()
    token = api_token(demo, customer)
    create(demo, token, servertype_id="sandbox_crm")  # its sign-in window was never used
    create(demo, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    panel = open_panel(page, demo, customer)
    crm = panel.connection("Sandbox CRM")
    expect(crm.badge).to_have_text("Finish setup")
    # Finish the CRM's sign-in from the panel.
    modal = ConnectModal(page, EN)
    crm.finish_button.click()
    with page.expect_popup() as popup:
        modal.connect_button.click()
    ConsentPage(popup.value).allow()
    expect(modal.connected_heading).to_be_visible()
    modal.done_button.click()
    expect(crm.badge).to_have_text("Connected")
    with page.expect_popup() as tab:
        crm.reauthorise_button.click()
    expect(panel.announcer).to_have_text("Sign in to Sandbox CRM again in the new tab.")
    # The provider's page never gets a handle on the partner's page: at most on the panel's own
    # document (BFF origin), which handed the start page its nonce.
    ConsentPage(tab.value).wait_until_shown()
    assert tab.value.evaluate("!window.opener || window.opener.location.pathname.endsWith('/embed/v1/panel')")
    ConsentPage(tab.value).allow()
    expect(crm.badge).to_have_text("Reconnected", timeout=20_000)
    with page.expect_popup() as bank_tab:
        panel.connection("Sandbox Bank").refresh_button.click()
    bank_tab.value.wait_for_url("**/sandbox/bank/refresh**")


def test_delete_asks_inside_the_panel_and_works_from_the_keyboard(page: Page, demo: DemoStack) -> None:
    customer = demo.new_customer()
    token = api_token(demo, customer)
    create(demo, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    panel = open_panel(page, demo, customer)
    bank = panel.connection("Sandbox Bank")
    bank.delete_button.focus()
    page.keyboard.press("Enter")
    expect(panel.frame.get_by_text("Delete Sandbox Bank? Its synced data is deleted too.")).to_be_visible()
    expect(bank.cancel_button).to_be_focused()
    page.keyboard.press("Escape")
    expect(bank.confirm_delete_button).to_have_count(0)
    expect(bank.delete_button).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Shift+Tab")
    expect(bank.confirm_delete_button).to_be_focused()
    assert axe_violations(panel.document(), PANEL_ONLY) == [], "the confirmation"
    page.keyboard.press("Enter")
    expect(panel.announcer).to_have_text("Sandbox Bank was deleted.")
    expect(panel.empty).to_be_visible()
    expect(panel.heading).to_be_focused()
    assert dialogs == []  # never confirm()
    response = httpx.get(f"{demo.bff_url}/api/servers", headers={"Authorization": f"Bearer {token}"})
    assert response.json()["count"] == 0


@pytest.fixture
def partner(page: Page, stack: Stack) -> PartnerPage:
    return PartnerPage(page, stack.site_url, locale="nl", title=STRINGS["nl"]["title"])


def test_panel_speaks_the_locale_reports_changes_and_destroy_leaves_nothing(
    partner: PartnerPage, stack: Stack, customer: str
) -> None:
    nl = STRINGS["nl"]
    token = stack.integrate(customer)
    stack.api(
        "POST", "/api/servers", token, json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"}
    ).raise_for_status()
    partner.goto(customer=customer, initialize=False)
    page = partner.page
    page.wait_for_function("() => window.Peliqan !== undefined")
    before = page.evaluate("document.body.innerHTML")
    assert (
        page.evaluate("performance.getEntriesByType('resource').some((e) => e.name.includes('peliqan-panel.js'))")
        is False
    )  # loaded only when mounted
    page.evaluate("""() => {
        window.changes = [];
        window.panel = Peliqan.mountConnections('#inline-slot', {integrationToken: window.cfg.token, locale: 'nl', onChange: (c) => window.changes.push(c.type)});
    }""")
    panel = ConnectionsPanel(page, nl)
    expect(panel.heading).to_be_visible()
    assert panel.document().evaluate("document.documentElement.lang") == "nl"
    bank = panel.connection("Sandbox Bank")
    expect(bank.badge).to_have_text("Gekoppeld")
    bank.sync_button.click()
    expect(bank.progress).to_have_text(re.compile(r"^Gesynchroniseerd: 2[01]0 nieuwe records\.$"), timeout=30_000)
    page.wait_for_function("() => window.changes.includes('sync_finished')")
    assert axe_violations(panel.document(), PANEL_ONLY) == [], "nl"
    page.evaluate("() => { window.panel.destroy(); window.panel.destroy(); }")
    expect(panel.iframe).to_have_count(0)
    assert page.evaluate("document.body.innerHTML") == before
    bad = page.evaluate(
        "() => Peliqan.mountConnections('#inline-slot', {locale: 'es', integrationToken: 'x'}).ready.catch((e) => [e.name, e.message])"
    )
    assert bad[0] == "TypeError" and "locale must be one of en, nl, fr, de" in bad[1]


def test_pause_and_resume_syncing_from_the_panel(page: Page, demo: DemoStack) -> None:
    customer = demo.new_customer()
    token = api_token(demo, customer)
    created = create(demo, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    panel = open_panel(page, demo, customer)
    bank = panel.connection("Sandbox Bank")
    bank.pause_button.click()
    expect(panel.announcer).to_have_text("Sandbox Bank is paused: nothing syncs until you resume it.")
    expect(bank.resume_button).to_be_visible()
    expect(bank.sync_button).to_have_count(0)
    health = httpx.get(
        f"{demo.bff_url}/api/server/{created['id']}/health", headers={"Authorization": f"Bearer {token}"}
    )
    assert health.json()["health_status"] == "DISABLED"
    refused = httpx.post(
        f"{demo.bff_url}/api/server/{created['id']}/sync", headers={"Authorization": f"Bearer {token}"}
    )
    assert refused.status_code == 409 and refused.json()["code"] == "connection_disabled"
    bank.resume_button.click()
    expect(panel.announcer).to_have_text("Sandbox Bank resumed: it syncs now.")
    expect(bank.sync_button).to_be_visible()
    expect(bank.pause_button).to_be_visible()
    assert axe_violations(panel.document(), PANEL_ONLY) == []


def test_the_panel_tells_the_truth_after_resume_on_errors_and_for_twins(page: Page, demo: DemoStack) -> None:
    customer = demo.new_customer()
    token = api_token(demo, customer)
    first = create(demo, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    second = create(demo, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    accounting = create(demo, token, servertype_id="sandbox_accounting", api_key="sandbox-valid-key")
    headers = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{demo.bff_url}/api/server/{accounting['id']}/config", json={"divisions": ["101"]}, headers=headers)
    httpx.post(f"{demo.bff_url}/api/server/{first['id']}/disable", headers=headers).raise_for_status()
    panel = open_panel(page, demo, customer)

    # Two connections named "Sandbox Bank": each card shows its id, and its actions say which.
    items = panel.items.filter(has=panel.frame.get_by_role("heading", name="Sandbox Bank", level=3, exact=True))
    expect(items).to_have_count(2)
    for created in (first, second):
        card = panel.frame.locator(f"li[data-id='{created['id']}']")
        expect(card.locator(".cid")).to_have_text(f"#{created['id']}")
        expect(card.get_by_role("group", name=f"Actions for Sandbox Bank #{created['id']}", exact=True)).to_be_visible()
    paused = panel.frame.locator(f"li[data-id='{first['id']}']")

    # Resume: the sync it starts is followed, and its result shows within seconds (not at the next 30 s poll).
    paused.get_by_role("button", name=EN["resume"], exact=True).click()
    expect(paused.get_by_role("status")).to_have_text(re.compile(r"^Synced: [\d,]+ new records\.$"), timeout=10_000)
    expect(paused.locator("dl div").first.locator("dd time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    expect(paused.locator(".badge")).to_have_text("Healthy")

    # A failed run says it failed, and the card says why it needs attention.
    card = panel.frame.locator(f"li[data-id='{accounting['id']}']")
    httpx.post(f"{demo.bff_url}/sandbox/_control/revoke", json={"provider": "accounting"}).raise_for_status()
    try:
        card.get_by_role("button", name=EN["syncNow"], exact=True).click()
        expect(card.get_by_role("status")).to_have_text(re.compile(r"^The sync failed: "), timeout=30_000)
    finally:
        httpx.post(f"{demo.bff_url}/sandbox/_control/restore", json={"provider": "accounting"})
    expect(card.locator(".badge")).to_have_text("Needs your attention")
    expect(card.locator(".why")).to_have_text(re.compile(r"^Why: \S.{10,}"))
    expect(card.locator("dl div").first.locator("dd")).to_have_text(re.compile(r"^Failed \S"))
    assert axe_violations(panel.document(), PANEL_ONLY) == []
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.mouse.move(0, 0)
        assert panel.document().evaluate("document.documentElement.scrollWidth <= innerWidth")
        panel.fitted()
        page.screenshot(path=str(ROOT / "test-results" / f"panel-truth-{width}.png"), full_page=True)  # to look at
