"""The demo partner site (Acme Books) driven as a customer would, in a real Chromium.

The BFF (sandbox providers on) runs on 127.0.0.1 and the demo site on localhost, wired like
`bff demo` (`ensure_demo_partner` for the site's origin). One stack serves the whole module; each
test signs in as its own fresh customer (its own sub-account), so tests never see each other's
connections. Covers issue 6's list: every connect flow, sync with progress, re-authorise, manual
refresh, delete, the Data page, forged messages, tokens kept out of URLs, axe, and the README's
screenshots (written to docs/ when BFF_UPDATE_SCREENSHOTS=1, else to test-results/).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page, Request, expect

from bff.client import PartnerClient
from e2e.browser import close_settled
from e2e.pages.demo_site import DataPage, IntegrationsPage, SignInPage
from e2e.pages.sandbox_provider import BankRefreshPage, ConsentPage
from e2e.stack import DemoStack, locale_strings, running_demo, screenshot_path

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
    tokens = {
        r.headers["authorization"].split(" ", 1)[1]
        for r in requests
        if r.headers.get("authorization", "").startswith("Bearer ")
    }
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
    expect(accounting.health).to_have_text("Connected")
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
    expect(accounting.health).to_have_text("Reconnected")

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
    expect(bank.health).to_have_text("Connected")
    expect(bank.last_run).to_have_text("Never synced")

    seen = bank.sync(records=200)
    assert seen[:2] == ["Starting…", "Running…"], seen
    expect(bank.last_run).to_have_text(
        re.compile(r"^Synced (now|\d+ seconds? ago)200 new records · 200 rows in total$")
    )
    when = bank.last_run.locator("time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", when.get_attribute("datetime") or "")
    assert re.search(r"\d{4}", when.get_attribute("title") or "")  # the full time on hover

    data = integrations.data_page()
    expect(data.connection("Sandbox Bank")).to_have_text("Sandbox Bank — Healthy")
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
    close_settled(tab.value)
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
    expect(crm.health).to_have_text("Connected")

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
    expect(crm.health).to_have_text("Reconnected", timeout=20_000)
    expect(integrations.messages).to_have_text("")  # "Sign in … again" is done with


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
    expect(integrations.connection("Sandbox CRM").health).to_have_text("Connected")


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
    expect(integrations.connection("Sandbox CRM").health).to_have_text("Connected")


def test_popup_closed_by_the_user_says_so_and_can_be_retried(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    consent = modal.start_oauth().wait_until_shown()
    consent.close()
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


def test_an_expiring_token_is_refreshed_by_get_token_without_losing_input(
    page: Page, demo: DemoStack, context: BrowserContext
) -> None:
    created: list[Request] = []
    context.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/servers") and created.append(r))
    page.clock.install()
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    page.clock.fast_forward("29:00")  # the 30-minute token now has under 2 minutes left
    with page.expect_response(lambda r: r.url == f"{demo.site_url}/integrations/token") as minted:
        modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    fresh_token = minted.value.json()["token"]
    # (Not compared with the page's first token: two tokens minted in the same second are identical.)
    (request,) = created  # one request: the typed values survived the token change
    assert request.headers["authorization"] == f"Bearer {fresh_token}"
    assert request.post_data_json == {"servertype_id": 3, "login": "sandbox", "password": "sandbox"}


# -- Finish setup, progress and page messages ----------------------------------------------------------


def test_closing_the_modal_at_the_division_step_leaves_a_row_to_finish(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox Accounting")
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.group("Divisions")).to_be_visible()
    with page.expect_navigation():
        modal.close_button.click()  # the page lists the half-made connection
    integrations.wait_until_ready()
    accounting = integrations.connection("Sandbox Accounting")
    expect(accounting.health).to_have_text("Finish setup")
    expect(accounting.sync_button).to_have_count(0)  # it could only fail
    expect(accounting.reauthorise_button).to_have_count(0)
    accounting.finish_button.click()
    expect(integrations.dialog).to_be_visible()
    expect(modal.heading).to_have_text(modal.title("finishTitle", name="Sandbox Accounting"))
    modal.choice("Acme Holding").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    expect(accounting.health).to_have_text("Connected")
    expect(integrations.table.get_by_role("row")).to_have_count(2)  # the same connection, finished
    accounting.sync(records=501)  # 500 invoices and the one entity type


def test_finish_setup_of_an_oauth_connection_left_authorizing(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    consent = modal.start_oauth()
    expect(modal.waiting).to_be_visible()
    consent.close()
    expect(modal.alert).to_have_text(EN["popupClosed"], timeout=15_000)
    with page.expect_navigation():
        modal.close_button.click()
    integrations.wait_until_ready()
    crm = integrations.connection("Sandbox CRM")
    expect(crm.health).to_have_text("Finish setup")
    crm.finish_button.click()
    expect(modal.heading).to_have_text(modal.title("finishTitle", name="Sandbox CRM"))
    with page.expect_popup() as popup:
        modal.connect_button.click()
    ConsentPage(popup.value).allow()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    expect(crm.health).to_have_text("Connected")
    expect(crm.sync_button).to_be_visible()


def test_a_run_reported_before_sync_now_returns_never_goes_back_to_running(page: Page, demo: DemoStack) -> None:
    # The watcher can report a fast run as finished before syncServer's answer arrives; the page then
    # wrote "Running…" over "Finished" and stayed there until reload.
    integrations = sign_in(page, demo)
    connect_bank(integrations)
    bank = integrations.connection("Sandbox Bank")
    held = []
    page.route("**/api/server/*/sync", lambda route: held.append((route, route.fetch())))
    bank.sync_button.click()
    # (200 or 210 transactions: the module's customers share the sandbox bank and its Refresh.)
    finished = re.compile(r"^Finished: 2[01]0 new records$")
    expect(bank.progress).to_have_text(finished, timeout=30_000)  # the watcher saw it
    route, response = held[0]
    route.fulfill(response=response)  # now syncServer answers
    expect(bank.row).to_have_attribute("data-started-run", re.compile(r"^\d+$"))  # the answer was handled
    expect(bank.progress).to_have_text(finished)
    expect(bank.health).to_have_text("Healthy")


def test_page_messages_never_repeat_the_modal_and_clear_when_stale(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox Bank")
    modal.fill({"Login": "sandbox", "Password": "wrong"})
    modal.connect_button.click()
    expect(modal.alert).to_have_text(EN["errRejected"])
    expect(integrations.messages).to_have_text("")  # the modal's error, not repeated behind it
    modal.fill(BANK)
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    expect(integrations.messages).to_have_text("")  # no "Connected …" beside "No connections yet."
    integrations.finish()
    bank = integrations.connection("Sandbox Bank")
    with page.expect_popup() as tab:
        bank.refresh_button.click()
    expect(integrations.messages).to_contain_text("Sync now")
    close_settled(tab.value)
    bank.sync()
    expect(integrations.messages).to_have_text("")  # the refresh hint is done with


def test_no_request_is_answered_404_and_both_origins_have_a_favicon(page: Page, demo: DemoStack) -> None:
    missing: list[str] = []
    page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    integrations = sign_in(page, demo)
    integrations.data_page()
    for origin in (demo.site_url, demo.bff_url):
        response = page.request.get(f"{origin}/favicon.ico")
        assert response.status == 200 and response.headers["content-type"] == "image/x-icon", origin
    assert missing == []


def test_data_page_formats_numbers_and_keeps_values_on_one_line(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox Accounting")
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    modal.choice("Acme Retail").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    integrations.connection("Sandbox Accounting").sync(records=501)  # 500 invoices and the one entity type
    data = integrations.data_page()
    invoices = data.table("invoices")
    invoices.expect_rows(500)
    expect(invoices.region.locator("xpath=..").get_by_text("500 new or changed in the last run.")).to_be_visible()
    amounts = invoices.region.locator("td.num").all_inner_texts()
    assert amounts and all(re.fullmatch(r"-?[\d,]+(\.\d\d)?", a) for a in amounts), amounts
    heights = page.evaluate(
        "[...document.querySelectorAll('table.data td')].map((td) => td.getBoundingClientRect().height)"
    )
    assert max(heights) < 2 * min(heights), heights  # nothing wraps inside a value ("101-/2025-/…")
    expect(data.connection("Sandbox Accounting")).to_have_text("Sandbox Accounting — Healthy")
    (ROOT / "test-results").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "test-results" / "data-page.png"), full_page=True)  # to look at, not asserted


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


LAYOUT = """() => {
    const rows = [...document.querySelectorAll('table.connections tbody tr')];
    return {
        pageWidth: document.documentElement.scrollWidth,
        viewport: innerWidth,
        // every button of a row's actions on one line (same top)
        actionLines: rows.map((r) => new Set([...r.querySelectorAll('.actions button:not([hidden])')].map((b) => Math.round(b.getBoundingClientRect().top))).size),
        // every cell of a row ends on the same line (the row's border is straight)
        cellBottoms: rows.map((r) => new Set([...r.children].map((c) => Math.round(c.getBoundingClientRect().bottom))).size),
        rowWidths: rows.map((r) => Math.round(r.getBoundingClientRect().right)),
        // the table stays inside its card
        overflow: Math.round(document.querySelector('table.connections').getBoundingClientRect().right - document.querySelector('.connections-card').getBoundingClientRect().right),
        rawCodes: [...document.querySelectorAll('[data-health]')].map((b) => b.textContent).filter((t) => /^[A-Z_]+$/.test(t)),
    };
}"""


def expect_product_layout(page: Page, *, phone: bool = False) -> None:
    """No sideways scroll, badges in words; wide: one line of actions per row, straight row borders."""
    layout = page.evaluate(LAYOUT)
    assert layout["pageWidth"] <= layout["viewport"], layout
    assert layout["rawCodes"] == [], layout
    assert all(right <= layout["viewport"] for right in layout["rowWidths"]), layout
    assert layout["overflow"] <= 0, layout
    if not phone:
        assert set(layout["actionLines"]) == {1}, layout
        assert set(layout["cellBottoms"]) == {1}, layout


def test_integrations_page_with_synced_connections_and_the_modal_open_passes_axe(page: Page, demo: DemoStack) -> None:
    # wood_123, the first demo customer, as the README's pictures show it. Its connections are
    # set up through the API (the partner's back-end could do the same); the syncs are clicked.
    with PartnerClient(demo.bff_url, demo.partner_token) as partner:
        token = partner.integrate_token("wood_123", **demo.customers["wood_123"])["token"]
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=demo.bff_url, headers=headers, timeout=30) as api:
        api.post(
            "/api/servers", json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"}
        ).raise_for_status()
        accounting = api.post(
            "/api/servers", json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"}
        ).json()
        api.post(f"/api/server/{accounting['id']}/config", json={"divisions": ["101", "102"]}).raise_for_status()
        api.post("/api/servers", json={"servertype_id": "sandbox_crm"}).raise_for_status()  # sign-in never finished

    page.set_viewport_size({"width": 1280, "height": 720})
    integrations = SignInPage(page, demo.site_url).sign_in("wood_123", EN)
    integrations.connection("Sandbox Bank").sync()
    integrations.connection("Sandbox Accounting").sync(records=1001)  # 2 x 500 invoices, 1 entity type
    expect(integrations.connection("Sandbox CRM").finish_button).to_be_visible()
    page.mouse.move(0, 0)
    expect_product_layout(page)
    page.screenshot(path=str(screenshot_path("demo-site.png")))
    assert axe_violations(page) == [], "integrations page"

    page.set_viewport_size({"width": 390, "height": 844})
    expect_product_layout(page, phone=True)
    page.screenshot(path=str(screenshot_path("demo-site-phone.png")), full_page=True)
    assert axe_violations(page) == [], "integrations page on a phone"
    page.set_viewport_size({"width": 1280, "height": 720})

    modal = integrations.open_modal()
    expect(modal.connector("Sandbox CRM")).to_be_visible()
    assert axe_violations(page) == [], "integrations page with the modal open"
    assert axe_violations(modal.document()) == [], "the modal's catalogue"
    modal.choose("Sandbox Bank")
    expect(modal.field("Login")).to_be_focused()
    page.screenshot(path=str(screenshot_path("modal.png")))
    assert axe_violations(modal.document()) == [], "the modal's form"


def test_the_back_end_adds_a_contact_to_the_crm_and_the_new_row_appears(page: Page, demo: DemoStack) -> None:
    # The writeback document's one-liner, done by Acme Books' back-end with an identity token and
    # refresh=true: the contact is created in Sandbox CRM, one sync of contacts follows, and the row shows.
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.start_oauth().allow()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    data = integrations.data_page()
    form = page.get_by_role("region", name="Add a contact to your CRM")
    form.get_by_label("Email", exact=True).fill("new.customer@example.test")
    form.get_by_label("First name", exact=True).fill("Nova")
    form.get_by_label("Last name", exact=True).fill("Customer")
    form.get_by_role("button", name="Add contact").click()
    expect(form.get_by_role("status")).to_contain_text("added to Sandbox CRM and synced", timeout=45_000)
    contacts = data.table("contacts")
    contacts.expect_rows(1251)  # the sandbox's 1,250 and the new one, synced by the refresh
    # The same address again: the CRM refuses the duplicate, the page says why next to the form
    # (with what was typed kept), and nothing is added.
    form.get_by_label("Email", exact=True).fill("new.customer@example.test")
    form.get_by_role("button", name="Add contact").click()
    expect(form.get_by_role("alert")).to_be_visible()
    expect(form.get_by_label("Email", exact=True)).to_have_value("new.customer@example.test")
    data.table("contacts").expect_rows(1251)


def test_the_activity_feed_shows_the_syncs_webhook_without_a_reload(page: Page, demo: DemoStack) -> None:
    # The BFF signs each event as a Standard Webhook to Acme Books' back-end (/webhooks), which
    # verifies it with the standardwebhooks package; the page polls its own server for the feed.
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    integrations.finish()
    activity = page.get_by_role("list", name="Activity")
    expect(activity).to_contain_text("Sandbox Bank connected", timeout=15_000)
    page.evaluate("window.stillTheSamePage = true")
    integrations.connection("Sandbox Bank").sync()  # (the session's bank may hold refreshed extras)
    expect(activity).to_contain_text("Sandbox Bank synced", timeout=15_000)
    assert page.evaluate("window.stillTheSamePage") is True  # arrived without a reload


def sandbox_control(demo: DemoStack, action: str, provider: str) -> None:
    """The sandbox's own switches (`BFF_SANDBOX_CONTROLS=open`, as `bff demo` runs it)."""
    import httpx

    httpx.post(f"{demo.bff_url}/sandbox/_control/{action}", json={"provider": provider}, timeout=10).raise_for_status()


def test_a_long_error_and_a_paused_connection_fit_the_page_and_resume_works(page: Page, demo: DemoStack) -> None:
    external_id = demo.new_customer("Long Error Co")
    with PartnerClient(demo.bff_url, demo.partner_token) as partner:
        token = partner.integrate_token(external_id, **demo.customers[external_id])["token"]
    import httpx

    with httpx.Client(base_url=demo.bff_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        bank = api.post(
            "/api/servers", json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"}
        )
        accounting = api.post(
            "/api/servers", json={"servertype_id": "sandbox_accounting", "api_key": "sandbox-valid-key"}
        ).json()
        api.post(f"/api/server/{accounting['id']}/config", json={"divisions": ["101"]}).raise_for_status()
        api.post(f"/api/server/{bank.json()['id']}/disable").raise_for_status()  # paused by the customer
    page.set_viewport_size({"width": 1280, "height": 800})
    integrations = SignInPage(page, demo.site_url).sign_in(external_id, EN)
    accounting_row = integrations.connection("Sandbox Accounting")
    sandbox_control(demo, "revoke", "accounting")  # the provider refuses the key: a real, long error
    try:
        accounting_row.sync_button.click()
        expect(accounting_row.progress).to_have_text("Failed: see Last run", timeout=30_000)
        # When it failed ("now", or "… ago" a moment later), then the reason, once.
        expect(accounting_row.last_run).to_contain_text(re.compile(r"Failed (now|.*ago).{60,}"))
    finally:
        sandbox_control(demo, "restore", "accounting")
    bank_row = integrations.connection("Sandbox Bank")
    resume = bank_row.row.get_by_role("button", name="Resume syncing", exact=True)
    expect(bank_row.health).to_have_text("Paused")
    expect(resume).to_be_visible()
    expect(bank_row.sync_button).to_be_hidden()  # the BFF would refuse it ("enable it before syncing")

    for width, phone in ((1280, False), (390, True)):
        page.set_viewport_size({"width": width, "height": 800})
        page.mouse.move(0, 0)
        expect_product_layout(page, phone=phone)
        # Every Delete is inside the card and on the screen.
        edges = page.evaluate(
            """() => {
                const card = document.querySelector('.connections-card').getBoundingClientRect();
                return [...document.querySelectorAll('[data-action="delete"]')].map((b) => {
                    const r = b.getBoundingClientRect();
                    return r.left >= card.left && r.right <= card.right && r.right <= innerWidth;
                });
            }"""
        )
        assert edges == [True, True], (width, edges)
        page.screenshot(path=str(ROOT / "test-results" / f"long-error-{width}.png"), full_page=True)  # to look at

    page.set_viewport_size({"width": 1280, "height": 800})
    resume.click()
    expect(integrations.messages).to_have_text("Sandbox Bank resumed: it syncs now.")
    expect(bank_row.sync_button).to_be_focused()  # Resume is gone: focus moves to what replaced it
    expect(bank_row.progress).to_have_text(re.compile(r"^Finished: [\d,]+ new records?$"), timeout=30_000)
    expect(bank_row.health).to_have_text("Healthy")
    expect(resume).to_be_hidden()
    activity = page.get_by_role("list", name="Activity")
    expect(activity).to_contain_text("Sandbox Bank paused: nothing syncs until it is resumed", timeout=15_000)
    expect(activity).to_contain_text("Sandbox Bank resumed")
    expect(activity).to_contain_text("Sandbox Accounting could not sync: ")
    for raw in ("re enabled", "disabled (", "re authorised"):
        expect(activity).not_to_contain_text(raw)


def test_the_activity_feed_never_calls_a_denied_sign_in_connected(page: Page, demo: DemoStack) -> None:
    integrations = sign_in(page, demo)
    modal = integrations.open_modal()
    modal.start_oauth().deny()
    expect(modal.alert).to_have_text("Access was denied at the provider.")
    with page.expect_navigation():  # the page reloads when the modal closes after a started connection
        page.keyboard.press("Escape")
    integrations.wait_until_ready()
    activity = page.get_by_role("list", name="Activity")
    expect(activity).to_contain_text("Sandbox CRM removed", timeout=15_000)
    expect(activity).to_contain_text("Signing in to Sandbox CRM started")
    expect(activity).to_contain_text("Signing in to Sandbox CRM failed: Access was denied at the provider.")
    expect(activity).not_to_contain_text("connected")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 800})
        page.screenshot(path=str(ROOT / "test-results" / f"activity-{width}.png"), full_page=True)  # to look at
