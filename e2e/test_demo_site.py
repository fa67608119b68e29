"""The demo partner site (Acme Books) driven as a customer would, in a real Chromium.

The BFF (sandbox providers on) runs on 127.0.0.1 and the demo site on localhost, wired like
`bff demo` (`ensure_demo_partner` for the site's origin). One stack serves the whole module; each
test signs in as its own fresh customer (its own sub-account), so tests never see each other's
connections. Covers issue 6's list: every connect flow, sync with progress, re-authorise, manual
refresh, delete, the Data page, forged messages, tokens kept out of URLs, axe, and the README's
screenshots (written to docs/ when BFF_UPDATE_SCREENSHOTS=1, else to test-results/).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page, Request, expect

from bff.client import PartnerClient
from e2e.pages.demo_site import DataPage, IntegrationsPage, SignInPage
from e2e.pages.sandbox_provider import BankRefreshPage, ConsentPage
from e2e.stack import DemoStack, locale_strings, running_demo

EN = locale_strings()["en"]
BANK = {"Login": "sandbox", "Password": "sandbox"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with running_demo(tmp_path_factory.mktemp("demo")) as value:
        yield value


@pytest.fixture(scope="module")
def coop_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """The same, with Cross-Origin-Opener-Policy: same-origin on the sandbox's consent page."""
    with running_demo(tmp_path_factory.mktemp("demo-coop"), BFF_SANDBOX_COOP="1") as value:
        yield value


@pytest.fixture(autouse=True)
def no_token_in_any_url(context: BrowserContext) -> Iterator[None]:
    """Every test: no token the browser sent (as Authorization) ever appears in a URL or Referer."""
    requests: list[Request] = []
    context.on("request", lambda request: requests.append(request))
    yield
    tokens = {r.headers["authorization"].split(" ", 1)[1] for r in requests if r.headers.get("authorization", "").startswith("Bearer ")}
    for request in requests:
        for token in tokens:
            assert token not in request.url, request.url
            assert token not in (request.headers.get("referer") or ""), request.url


def sign_in(page: Page, demo: DemoStack, company: str = "QA Test Co") -> IntegrationsPage:
    return SignInPage(page, demo.site_url).sign_in(demo.new_customer(company), EN)


def connect_bank(integrations: IntegrationsPage) -> None:
    modal = integrations.open_modal()
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()


# -- connecting --------------------------------------------------------------------------------------


def test_api_key_wrong_then_right_then_divisions_reauthorise_and_delete(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox Accounting")
    modal.fill({"API key": "not-the-key"})
    modal.connect_button.click()
    expect(modal.alert).to_have_text(EN["errRejected"])
    expect(modal.field("API key")).to_have_value("not-the-key")  # kept, to correct it
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.group("Divisions")).to_be_visible()  # CONFIG_SELECT
    modal.choice("Acme Retail").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    accounting = integrations.connection("Sandbox Accounting")
    expect(accounting.health).to_have_text("OK")
    expect(integrations.connection("Sandbox Bank").row).to_have_count(0)
    expect(accounting.refresh_button).to_have_count(0)  # manual refresh is for the bank only

    # Re-authorise a key connector: the widget's credentials form, in the modal.
    accounting.reauthorise_button.click()
    expect(integrations.dialog).to_be_visible()
    expect(modal.heading).to_have_text(modal.title("reauthTitle", name="Sandbox Accounting"))
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    expect(accounting.health).to_have_text("RE_AUTHORISED")

    accounting.delete()
    expect(accounting.row).to_have_count(0)
    expect(integrations.messages).to_have_text("Deleted Sandbox Accounting.")
    expect(integrations.no_connections).to_be_visible()
    expect(page.get_by_role("heading", name="Your connections")).to_be_focused()
    integrations.goto()
    expect(integrations.no_connections).to_be_visible()


def test_login_password_connect_sync_manual_refresh_and_data_page(page: Page, demo: DemoStack) -> None:
    # The only test that presses the bank's "Refresh" (the sandbox bank is shared by the module's
    # customers), so the counts are exact: 200 transactions, then 210.
    integrations = sign_in(page, demo)
    expect(integrations.no_connections).to_be_visible()
    connect_bank(integrations)
    bank = integrations.connection("Sandbox Bank")
    expect(bank.health).to_have_text("OK")
    expect(bank.last_run).to_have_text("never")

    seen = bank.sync(records=200)
    assert seen[:2] == ["Starting…", "Running…"], seen
    expect(bank.last_run).to_have_text(re.compile(r"^succeeded, 200 records, \d{4}-"))

    data = integrations.data_page()
    expect(data.connection("Sandbox Bank")).to_have_text("Sandbox Bank — HEALTHY")
    transactions = data.table("transactions")
    transactions.expect_rows(200)
    expect(transactions.rows).to_have_count(6)  # the header and the first 5
    expect(transactions.columns).to_contain_text(["id", "amount", "description"])

    integrations.nav_integrations.click()
    integrations.wait_until_ready()
    with page.expect_popup() as tab:
        bank.refresh_button.click()
    expect(integrations.messages).to_contain_text("Sync now")
    BankRefreshPage(tab.value).refresh_button.click()
    expect(tab.value.get_by_role("status")).to_have_text("10 new transactions imported.")
    tab.value.close()
    bank.sync()
    DataPage(page, demo.site_url).goto().table("transactions").expect_rows(210)


def test_oauth_allow_sync_until_healthy_and_reauthorise(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    consent = modal.start_oauth()
    expect(modal.waiting).to_be_visible()
    consent.allow()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    crm = integrations.connection("Sandbox CRM")
    expect(crm.health).to_have_text("OK")

    seen = crm.sync(records=1550)  # 1,250 contacts + 300 deals
    assert "Running…" in seen, seen
    data = integrations.data_page()
    data.table("contacts").expect_rows(1250)
    data.table("deals").expect_rows(300)

    # Re-authorise OAuth: the provider's consent in a new tab; the row's health follows.
    integrations.nav_integrations.click()
    integrations.wait_until_ready()
    with page.expect_popup() as tab:
        crm.reauthorise_button.click()
    expect(integrations.messages).to_have_text("Sign in to Sandbox CRM again in the new tab.")
    # The sign-in's start page takes its nonce from this page, then drops its opener before going
    # on: the provider's page has no handle on the partner page.
    tab.value.wait_for_url("**/sandbox/crm/oauth/authorize?**")
    assert tab.value.evaluate("window.opener") is None
    ConsentPage(tab.value).allow()
    expect(crm.health).to_have_text("RE_AUTHORISED", timeout=20_000)


def test_oauth_deny_leaves_no_connection(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.start_oauth().deny()
    expect(modal.alert).to_have_text("Access was denied at the provider.")
    modal.close_button.click()
    expect(integrations.dialog).to_be_hidden()
    expect(integrations.messages).to_have_text("")  # no stale error left on the page
    integrations.goto()
    expect(integrations.no_connections).to_be_visible()


def test_blocked_popup_continues_in_a_new_tab(page: Page, demo: DemoStack, context: BrowserContext) -> None:
    # What a pop-up blocker does: window.open returns null in the connect iframe.
    context.add_init_script("if (location.pathname.endsWith('/embed/v1/connect')) window.open = () => null;")
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox CRM")
    modal.connect_button.click()
    expect(modal.frame.get_by_role("alert").filter(has_text=EN["popupBlocked"])).to_be_visible()
    expect(modal.new_tab_link).to_be_focused()
    with page.expect_popup() as tab:
        modal.new_tab_link.click()
    ConsentPage(tab.value).allow()  # no opener: the widget's polling sees the completion
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    expect(integrations.connection("Sandbox CRM").health).to_have_text("OK")


def test_coop_provider_page_still_completes(page: Page, coop_demo: DemoStack) -> None:
    integrations = sign_in(page, coop_demo)
    modal = integrations.open_modal()
    consent = modal.start_oauth().wait_until_shown()
    # COOP severs the opener: popup.closed reads true; after the grace period the widget says
    # so, but keeps polling, so the late consent still completes the connection.
    expect(modal.alert).to_have_text(EN["popupClosed"], timeout=15_000)
    consent.allow_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    expect(integrations.connection("Sandbox CRM").health).to_have_text("OK")


def test_popup_closed_by_the_user_says_so_and_can_be_retried(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    consent = modal.start_oauth().wait_until_shown()
    consent.page.close()
    expect(modal.alert).to_have_text(EN["popupClosed"], timeout=15_000)
    expect(modal.waiting).to_be_hidden()
    expect(modal.connect_button).to_have_text(EN["connect"])
    with page.expect_popup() as again:
        modal.connect_button.click()
    ConsentPage(again.value).allow()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    expect(integrations.table.get_by_role("row")).to_have_count(2)  # the header and one connection


def test_connector_query_parameters_feed_available_and_selected_connector(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    integrations.goto(connectors=["sandbox_bank", "sandbox_accounting"])
    modal = integrations.open_modal()
    expect(modal.connectors()).to_have_count(2)
    expect(modal.connector("Sandbox Bank")).to_be_visible()
    expect(modal.connector("Sandbox CRM")).to_have_count(0)

    integrations.goto(connector="sandbox_bank")
    integrations.open_modal()
    expect(modal.heading).to_have_text(modal.title("connectTitle", name="Sandbox Bank"))
    expect(modal.field("Login")).to_be_focused()

    integrations.goto(connectors=["sandbox_accounting"], connector="sandbox_bank")  # the selected one is offered too
    integrations.open_modal()
    expect(modal.heading).to_have_text(modal.title("connectTitle", name="Sandbox Bank"))
    modal.back_button.click()
    expect(modal.connectors()).to_have_count(2)

    page.goto(f"{demo.site_url}/integrations?connector=%3Cscript%3E&connectors=nope!")  # not connector names: ignored
    integrations.wait_until_ready()
    integrations.open_modal()
    expect(modal.connector("Sandbox CRM")).to_be_visible()


def test_escape_closes_the_modal_and_focus_returns_to_add_connection(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    integrations.add_button.focus()
    page.keyboard.press("Enter")
    expect(integrations.dialog).to_be_visible()
    expect(integrations.modal.search).to_be_focused()
    expect(integrations.nav_data).not_to_be_focused()
    assert page.evaluate("document.querySelector('main').inert")  # the page behind is inert
    page.keyboard.press("Escape")
    expect(integrations.dialog).to_be_hidden()
    expect(integrations.add_button).to_be_focused()
    assert not page.evaluate("document.querySelector('main').inert")
    page.keyboard.press("Space")  # and it opens again from the keyboard
    expect(integrations.dialog).to_be_visible()


def test_an_expiring_token_is_refreshed_by_get_token_without_losing_input(page: Page, demo: DemoStack, context: BrowserContext) -> None:
    created: list[Request] = []
    context.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/servers") and created.append(r))
    page.clock.install()
    integrations = sign_in(page, demo)
    first_token = integrations.token()
    modal = integrations.open_modal()
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    page.clock.fast_forward("29:00")  # the 30-minute token now has under 2 minutes left
    with page.expect_response(lambda r: r.url == f"{demo.site_url}/integrations/token") as minted:
        modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    fresh_token = minted.value.json()["token"]
    assert fresh_token != first_token
    (request,) = created  # one request: the typed values survived the token change
    assert request.headers["authorization"] == f"Bearer {fresh_token}"
    assert request.post_data_json == {"servertype_id": 3, "login": "sandbox", "password": "sandbox"}


# -- messages from elsewhere --------------------------------------------------------------------------

FORGER = """<!doctype html><html lang="en"><head><title>Forger</title></head><body><script>
  // Another origin, holding a handle on the demo page, pretends to be the widget's iframe.
  opener.postMessage({source: 'peliqan', type: 'connected', data: {id: 666, name: 'Forged'}}, '*');
  opener.postMessage({source: 'peliqan', type: 'error', error: {code: 'forged', message: 'forged'}}, '*');
  opener.postMessage({source: 'peliqan', type: 'close'}, '*');
  for (let i = 0; i < opener.frames.length; i++) {
    opener.frames[i].postMessage({source: 'peliqan', type: 'init', token: 'forged-token', options: {mode: 'modal'}}, '*');
    opener.frames[i].postMessage({source: 'peliqan', type: 'open', options: {selectedConnector: 'sandbox_bank'}}, '*');
  }
  opener.postMessage({type: 'forger-done'}, '*');
  document.title = 'Forged';
</script></body></html>"""


def test_forged_post_messages_are_ignored(page: Page, demo: DemoStack, context: BrowserContext) -> None:
    sent_tokens: list[str] = []
    context.on("request", lambda r: sent_tokens.append(r.headers.get("authorization", "")))
    context.route("http://forger.test/**", lambda route: route.fulfill(content_type="text/html", body=FORGER))
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    page.evaluate("""() => {
        addEventListener('message', (e) => { if (e.data?.type === 'forger-done') window.forgerDone = true; });
        // A script on the page itself pretends to be the iframe.
        postMessage({source: 'peliqan', type: 'connected', data: {id: 1, name: 'Fake'}}, '*');
        postMessage({source: 'peliqan', type: 'close'}, '*');
        postMessage({source: 'peliqan', type: 'error', error: {code: 'fake', message: 'fake'}}, '*');
    }""")
    with page.expect_popup() as forger:
        page.evaluate("window.open('http://forger.test/')")
    expect(forger.value).to_have_title("Forged")
    page.wait_for_function("window.forgerDone === true")  # every message before it was delivered first
    expect(integrations.dialog).to_be_visible()
    expect(modal.search).to_be_visible()  # no forged `open` with a selected connector
    expect(integrations.messages).to_have_text("")  # no forged onConnected / onError
    # The iframe kept the real token: connecting still works, and nothing sent the forged one.
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    assert not any("forged-token" in value for value in sent_tokens)


# -- the whole page: accessibility and the README's pictures ------------------------------------------


def axe_violations(target: Any) -> list[str]:
    result = Axe().run(target)
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in result.response["violations"]]


def screenshot_path(name: str) -> Path:
    """docs/<name> with BFF_UPDATE_SCREENSHOTS=1 (to refresh the README's pictures), else test-results/."""
    folder = ROOT / "docs" if os.environ.get("BFF_UPDATE_SCREENSHOTS") == "1" else ROOT / "test-results"
    folder.mkdir(exist_ok=True)
    return folder / name


def test_integrations_page_with_synced_connections_and_the_modal_open_passes_axe(page: Page, demo: DemoStack) -> None:
    # wood_123, the first demo customer, as the README's pictures show it. Its connections are
    # set up through the API (the partner's back-end could do the same); the syncs are clicked.
    with PartnerClient(demo.bff_url, demo.partner_token) as partner:
        token = partner.integrate_token("wood_123", **demo.customers["wood_123"])["token"]
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=demo.bff_url, headers=headers, timeout=30) as api:
        api.post("/api/servers", json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"}).raise_for_status()
        accounting = api.post("/api/servers", json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"}).json()
        api.post(f"/api/server/{accounting['id']}/config", json={"divisions": ["101", "102"]}).raise_for_status()

    page.set_viewport_size({"width": 1100, "height": 620})
    integrations = SignInPage(page, demo.site_url).sign_in("wood_123", EN)
    integrations.connection("Sandbox Bank").sync()
    integrations.connection("Sandbox Accounting").sync(records=1000)
    page.mouse.move(0, 0)
    page.screenshot(path=str(screenshot_path("demo-site.png")))
    assert axe_violations(page) == [], "integrations page"

    modal = integrations.open_modal()
    expect(modal.connector("Sandbox CRM")).to_be_visible()
    assert axe_violations(page) == [], "integrations page with the modal open"
    assert axe_violations(modal.document()) == [], "the modal's catalogue"
    modal.choose("Sandbox Bank")
    expect(modal.field("Login")).to_be_focused()
    page.screenshot(path=str(screenshot_path("modal.png")))
    assert axe_violations(modal.document()) == [], "the modal's form"
