"""The embeddable widget in a real Chromium: partner page (localhost) and BFF (127.0.0.1) on two origins.

Covers issue 5's "Must show" list: loader, dialog accessibility, catalogue, forms, OAuth (popup,
blocked popup, COOP provider, closed popup), CONFIG_SELECT, getToken refresh, forged messages, no
token in any URL, destroy() teardown, axe (en and nl), inline mode, theme/zIndex, SDK functions.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, Request, Route, expect

from e2e.pages.connect_modal import ConnectModal
from e2e.pages.partner_page import PartnerPage
from e2e.pages.sandbox_provider import BankRefreshPage, ConsentPage
from e2e.stack import Stack, locale_strings

STRINGS = locale_strings()
EN = STRINGS["en"]
BANK = {"Login": "sandbox", "Password": "sandbox"}
# Sandbox Bank's field labels per locale, from the translations block of its definition.
BANK_LABELS = {
    "en": ("Login", "Password"),
    "nl": ("Gebruikersnaam", "Wachtwoord"),
    "fr": ("Identifiant", "Mot de passe"),
    "de": ("Benutzername", "Passwort"),
}
CONNECTED_FIELDS = {"id", "name", "servertype_id", "connector", "health_status", "account_id", "external_id"}


@pytest.fixture
def partner(page: Page, stack: Stack) -> PartnerPage:
    return PartnerPage(page, stack.site_url)


@pytest.fixture
def modal(page: Page) -> ConnectModal:
    return ConnectModal(page, EN)


def open_modal(partner: PartnerPage, modal: ConnectModal, **goto: Any) -> None:
    partner.goto(**goto)
    partner.trigger.click()
    expect(partner.dialog).to_be_visible()
    expect(modal.heading).to_be_visible()


def connect_bank(modal: ConnectModal) -> None:
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()


def axe_violations(target: Any) -> list[str]:
    result = Axe().run(target)
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in result.response["violations"]]


def create_connection(stack: Stack, token: str, **body: Any) -> dict[str, Any]:
    response = stack.api("POST", "/api/servers", token, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# -- the loader --------------------------------------------------------------------------------


def test_loader_is_served_as_a_cacheable_cross_origin_module(stack: Stack) -> None:
    for name in ("peliqan-integration.js", "peliqan-sdk.js"):
        response = httpx.get(f"{stack.bff_url}/embed/v1/{name}", headers={"Origin": stack.site_url})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
        assert response.headers["access-control-allow-origin"] == "*"
        assert "max-age=" in response.headers["cache-control"]
        again = httpx.get(f"{stack.bff_url}/embed/v1/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304


def test_loader_defines_peliqan_once_exports_by_name_and_fires_ready(partner: PartnerPage, stack: Stack) -> None:
    partner.goto(initialize=False)
    page = partner.page
    page.wait_for_function("() => window.Peliqan !== undefined")
    names = [
        "initialize",
        "syncServer",
        "getServerHealthStatus",
        "getServerSyncRunStatus",
        "reAuthoriseServer",
        "manualRefreshSaltEdge",
        "watchServer",
        "PeliqanError",
    ]
    same = page.evaluate(
        """async ([url, names]) => {
            const m = await import(url);
            return names.filter((n) => m[n] === window.Peliqan[n] && typeof m[n] === 'function');
        }""",
        [f"{stack.bff_url}/embed/v1/peliqan-integration.js", names],
    )
    assert same == names
    # A second copy (another URL) neither redefines window.Peliqan nor fires `peliqan:ready` again.
    page.evaluate(
        "async (url) => { window.first = window.Peliqan; await import(url + '?copy=2'); }",
        f"{stack.bff_url}/embed/v1/peliqan-integration.js",
    )
    assert page.evaluate("window.Peliqan === window.first")
    assert partner.seen()["readyEvents"] == 1


def test_the_source_documents_v1_3_script_path_loads_a_working_loader(partner: PartnerPage, stack: Stack) -> None:
    partner.goto()
    described = partner.page.evaluate(
        "async (base) => { const m = await import(base + 'peliqan-integration.js'), s = await import(base + 'peliqan-status.js');"
        " return [s.describeHealth('CONFIG_SELECT', 'nl'), typeof m.initialize, s.describeHealth('ERROR').label]; }",
        f"{stack.bff_url}/embed/v1.3/",
    )
    assert described == [
        {"label": "Koppeling afronden", "tone": "warning", "status": "CONFIG_SELECT"},
        "function",
        "Needs your attention",
    ]


def test_initialize_rejects_bad_options_saying_what_to_pass(partner: PartnerPage) -> None:
    partner.goto(initialize=False)
    cases = {
        "{}": "pass integrationToken or getToken",
        "{integrationToken: 'x', onConnect: () => {}}": 'unknown option "onConnect"',
        "{integrationToken: 'x', zIndex: '10'}": "zIndex must be an integer",
        "{integrationToken: 'x', locale: 'es'}": "locale must be one of en, nl, fr, de",
        "{integrationToken: 'x', availableConnectors: 'hubspot'}": "availableConnectors must be an array of connector names",
        "{integrationToken: 'x', theme: {colour: 'red'}}": "theme must be an object of CSS values for colorPrimary",
        "{integrationToken: 'x', button: '#missing'}": 'button "#missing" matches no element',
        "{integrationToken: 'x', availableConnectors: ['a'], selectedConnector: 'b'}": "selectedConnector must be in availableConnectors",
    }
    for options, message in cases.items():
        error = partner.page.evaluate(
            f"() => {{ try {{ Peliqan.initialize({options}); }} catch (e) {{ return [e.name, e.message]; }} }}"
        )
        assert error[0] == "TypeError" and message in error[1], (options, error)
    assert partner.page.locator("iframe").count() == 0


# -- the dialog ---------------------------------------------------------------------------------


def test_div_trigger_is_a_keyboard_button_that_opens_an_accessible_dialog(
    partner: PartnerPage, modal: ConnectModal
) -> None:
    partner.goto()
    expect(partner.trigger).to_have_attribute("role", "button")
    expect(partner.trigger).to_have_attribute("tabindex", "0")
    partner.trigger.focus()
    partner.page.keyboard.press("Enter")
    expect(partner.dialog).to_be_visible()
    expect(partner.dialog).to_have_attribute("aria-modal", "true")
    expect(partner.iframe).to_have_attribute("title", "Add connection")
    expect(modal.search).to_be_focused()
    assert partner.iframe_has_focus()
    assert partner.body_children_inert() and all(partner.body_children_inert())
    assert partner.scroll_locked()

    partner.page.keyboard.press("Escape")  # inside the iframe: it asks the parent to close
    expect(partner.dialog).to_be_hidden()
    expect(partner.trigger).to_be_focused()
    assert not any(partner.body_children_inert())
    assert not partner.scroll_locked()

    partner.page.keyboard.press("Space")
    expect(partner.dialog).to_be_visible()
    partner.page.evaluate("document.activeElement.blur()")  # focus back in the parent page: Escape still closes
    partner.page.keyboard.press("Escape")
    expect(partner.dialog).to_be_hidden()
    assert partner.event_types().count("open") == 2 and partner.seen()["closes"] == 2


def test_focus_is_trapped_inside_the_dialog(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal)
    doc = modal.document()
    seen = []
    for _ in range(12):
        partner.page.keyboard.press("Tab")
        assert partner.iframe_has_focus()
        seen.append(doc.evaluate("document.activeElement.getAttribute('aria-label') || document.activeElement.id"))
    assert seen.count("Sandbox CRM") >= 2, seen  # wrapped around
    for _ in range(6):
        partner.page.keyboard.press("Shift+Tab")
        assert partner.iframe_has_focus()


def test_reduced_motion_stops_the_spinner(partner: PartnerPage, modal: ConnectModal, context: BrowserContext) -> None:
    partner.page.emulate_media(reduced_motion="reduce")
    open_modal(partner, modal)
    consent = modal.start_oauth()
    expect(modal.waiting).to_be_visible()
    assert modal.document().evaluate("getComputedStyle(document.querySelector('.spinner')).animationName") == "none"
    consent.wait_until_shown()  # closed mid-way through the start page's redirect, close() once hung
    consent.close()


def test_theme_and_z_index_apply_and_a_strict_csp_sees_no_violation(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal, options={"theme": {"colorPrimary": "#0f766e", "borderRadius": "4px"}, "zIndex": 4242})
    expect(partner.dialog).to_have_css("z-index", "4242")
    modal.choose("Sandbox Bank")
    expect(modal.connect_button).to_have_css("background-color", "rgb(15, 118, 110)")
    assert partner.seen()["csp"] == []


# -- catalogue and forms ----------------------------------------------------------------------


def test_catalogue_names_connectors_by_display_name_and_searches(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal)
    for name, category in (("Sandbox CRM", "CRM"), ("Sandbox Accounting", "Accounting"), ("Sandbox Bank", "Banking")):
        tile = modal.connector(name)
        expect(tile).to_be_visible()
        expect(tile).to_have_accessible_description(category)
        expect(tile.locator("img")).to_have_attribute("alt", "")
    modal.search.fill("bank")
    expect(modal.connectors()).to_have_count(1)
    expect(modal.connector("Sandbox Bank")).to_be_visible()
    expect(modal.count).to_have_text("1 connector")
    modal.search.fill("no such thing")
    expect(modal.count).to_have_text(EN["noResults"])


def test_the_steps_after_a_pick_load_when_a_connector_is_pointed_at_and_again_after_a_failed_load(
    partner: PartnerPage, modal: ConnectModal
) -> None:
    page = partner.page
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/connect-steps.js" in r.url else None)
    page.route("**/connect-steps.js*", lambda route: route.abort())
    partner.goto()
    partner.trigger.focus()
    page.keyboard.press("Enter")  # no pointer over the catalogue yet
    expect(modal.connector("Sandbox Bank")).to_be_visible()
    assert asked == []  # the modal open at its catalogue needs no more than connect.js
    with page.expect_request("**/connect-steps.js*"):
        modal.connector("Sandbox Bank").hover()  # pointing at a connector fetches the steps
    modal.connector("Sandbox Bank").click()
    expect(modal.alert).to_have_text(EN["errNetwork"])  # a failed load says so, it does not hang
    page.unroute("**/connect-steps.js*")
    page.keyboard.press("Escape")
    expect(partner.dialog).to_be_hidden()
    partner.trigger.click()
    modal.choose("Sandbox Bank")  # loaded on another try
    expect(modal.heading).to_have_text(modal.title("connectTitle", name="Sandbox Bank"))


def test_available_connectors_filter_and_selected_connector_skips_to_its_form(
    partner: PartnerPage, modal: ConnectModal
) -> None:
    open_modal(partner, modal, options={"availableConnectors": ["sandbox_bank", "sandbox_accounting"]})
    expect(modal.connectors()).to_have_count(2)
    expect(modal.connector("Sandbox CRM")).to_have_count(0)

    open_modal(
        partner,
        modal,
        options={"availableConnectors": ["sandbox_bank", "sandbox_accounting"], "selectedConnector": "sandbox_bank"},
    )
    expect(modal.heading).to_have_text(modal.title("connectTitle", name="Sandbox Bank"))
    expect(modal.field("Login")).to_be_focused()
    assert {"type": "connector_selected", "connector": "sandbox_bank", "servertype_id": 3} in partner.seen()["events"]


def test_credentials_form_errors_then_success(partner: PartnerPage, modal: ConnectModal, customer: str) -> None:
    open_modal(partner, modal, customer=customer)
    modal.choose("Sandbox Bank")
    login, password = modal.field("Login"), modal.field("Password")
    expect(password).to_have_attribute("type", "password")
    for field in (login, password):
        expect(field).to_have_attribute("required", "")
        expect(field).to_have_accessible_description("Use sandbox.")
    expect(modal.frame.locator(".req")).to_have_count(2)

    modal.connect_button.click()  # nothing typed: each field says so, next to it
    expect(login).to_have_attribute("aria-invalid", "true")
    expect(login).to_have_accessible_description(re.compile(EN["errRequired"]))
    expect(modal.alert).to_have_text(EN["errFix"])

    modal.fill({"Login": "sandbox", "Password": "wrong"})
    modal.connect_button.click()
    expect(modal.alert).to_have_text(EN["errRejected"])
    expect(login).not_to_have_attribute("aria-invalid", "true")
    assert partner.seen()["errors"][-1] == {
        "code": "credentials_rejected",
        "status": 422,
        "message": EN["errRejected"],
        "peliqanError": True,
    }

    password.fill("sandbox")
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    expect(modal.frame.get_by_text("Sandbox Bank is connected.")).to_be_visible()
    connected = partner.seen()["connected"]
    assert len(connected) == 1 and set(connected[0]) == CONNECTED_FIELDS
    assert (
        connected[0]["connector"] == "sandbox_bank"
        and connected[0]["health_status"] == "OK"
        and connected[0]["external_id"] == customer
    )
    modal.done_button.click()
    expect(partner.dialog).to_be_hidden()
    expect(partner.trigger).to_be_focused()
    assert partner.event_types() == ["ready", "open", "connector_selected", "error", "connected", "close"]


def test_field_errors_from_the_api_are_shown_next_to_their_field(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal)
    modal.choose("Sandbox Accounting")
    key = modal.field("API key")
    key.fill("k" * 5000)  # the server refuses it (too long) as a field error
    modal.connect_button.click()
    expect(key).to_have_attribute("aria-invalid", "true")
    expect(key).to_have_accessible_description(re.compile("API key is too long"))
    expect(modal.alert).to_have_text(EN["errFix"])
    expect(key).to_be_focused()


def test_config_select_step_then_success(partner: PartnerPage, modal: ConnectModal, stack: Stack) -> None:
    open_modal(partner, modal)
    modal.choose("Sandbox Accounting")
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    divisions = modal.group("Divisions")
    expect(divisions).to_be_visible()
    modal.continue_button.click()
    expect(modal.alert).to_have_text(EN["errChoose"])
    modal.choice("Acme Retail").check()
    modal.choice("Acme Services").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    connection = partner.seen()["connected"][0]
    saved = stack.api("GET", f"/api/server/{connection['id']}", partner.config()["token"]).json()
    assert saved["health_status"] == "OK" and saved["config"] == {"divisions": ["102", "103"]}


def test_config_step_can_leave_tables_out(partner: PartnerPage, modal: ConnectModal, stack: Stack) -> None:
    """Seed 003's "(Optional) table selection via 'Advanced'", in the config step."""
    open_modal(partner, modal)
    modal.choose("Sandbox Accounting")
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.group("Divisions")).to_be_visible()
    tables = modal.group("Tables to sync")
    expect(tables).to_be_hidden()  # tucked away under "Advanced": every table unless asked
    modal.frame.get_by_text("Advanced", exact=True).click()
    for name in ("deleted", "entitytype"):
        tables.get_by_role("checkbox", name=name).uncheck()
    tables.get_by_role("checkbox", name="invoices").uncheck()
    modal.choice("Acme Retail").check()
    modal.continue_button.click()
    expect(modal.alert).to_have_text(EN["errTables"])
    tables.get_by_role("checkbox", name="invoices").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    connection = partner.seen()["connected"][0]
    saved = stack.api("GET", f"/api/server/{connection['id']}", partner.config()["token"]).json()
    assert saved["tables"] == ["invoices"] and saved["config"] == {"divisions": ["102"]}


# -- OAuth2 -----------------------------------------------------------------------------------


def test_oauth_popup_completes_and_is_confirmed_by_polling(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal)
    modal.choose("Sandbox CRM")
    expect(modal.frame.get_by_text(modal.title("oauthIntro", name="Sandbox CRM"))).to_be_visible()
    with partner.page.expect_popup() as popup:
        modal.connect_button.click()
    expect(modal.waiting).to_be_visible()
    ConsentPage(popup.value).allow()
    expect(modal.connected_heading).to_be_visible()
    (connected,) = partner.seen()["connected"]
    assert connected["connector"] == "sandbox_crm" and connected["health_status"] == "OK"


def test_oauth_waiting_box_shows_the_waiting_text_and_cancel_only(partner: PartnerPage, modal: ConnectModal) -> None:
    # replaceChildren() was given `false` for the absent "pop-up blocked" parts: it printed "falsefalse".
    open_modal(partner, modal)
    consent = modal.start_oauth()
    expect(modal.waiting).to_be_visible()
    wait_box = modal.frame.locator(".wait")
    expect(wait_box).not_to_contain_text("false")
    expect(wait_box).to_have_text(modal.title("oauthWaiting", name="Sandbox CRM") + EN["cancel"])
    consent.allow()
    expect(modal.connected_heading).to_be_visible()


def test_a_forwarded_consent_link_fails_in_another_browser(
    partner: PartnerPage, modal: ConnectModal, browser: Browser
) -> None:
    # A malicious customer starts a Sandbox CRM connection and forwards the consent link (or the
    # start page's link) to a victim, whose browser (another context: no cookies, no opener) opens it.
    open_modal(partner, modal)
    consent = modal.start_oauth().wait_until_shown()
    consent_url = consent.page.url
    victim = browser.new_context()
    try:
        forwarded = victim.new_page()
        forwarded.goto(consent_url)
        ConsentPage(forwarded).allow()
        expect(forwarded.get_by_role("heading", name="Connection not completed")).to_be_visible()
        expect(forwarded.get_by_role("alert")).to_contain_text("started in another browser or window")
        start = victim.new_page()
        start.goto(consent_url.split("/sandbox/")[0] + "/oauth/start")
        expect(start.get_by_role("heading", name="Sign-in not started")).to_be_visible()
        expect(start.get_by_role("alert")).to_contain_text("only works in the window your app opened")
    finally:
        victim.close()
    # Nothing was connected into the starter's account; the starter's own window still can finish it.
    expect(modal.waiting).to_be_visible()
    consent.allow()
    expect(modal.connected_heading).to_be_visible()


@pytest.mark.parametrize("locale", ["nl", "fr", "de"])
def test_connector_field_labels_and_help_are_in_the_widget_locale(page: Page, stack: Stack, locale: str) -> None:
    t = STRINGS[locale]
    partner, modal = PartnerPage(page, stack.site_url, locale=locale, title=t["title"]), ConnectModal(page, t)
    login, password = BANK_LABELS[locale]
    partner.goto()
    partner.trigger.click()
    modal.choose("Sandbox Bank")
    expect(modal.field(login)).to_be_visible()
    expect(modal.field(password)).to_be_visible()
    expect(modal.frame.get_by_text("Use sandbox.")).to_have_count(0)
    expect(modal.frame.get_by_text("Login", exact=True)).to_have_count(0)
    modal.back_button.click()
    modal.choose("Sandbox Accounting")
    modal.fill({{"nl": "API-sleutel", "fr": "Clé d’API", "de": "API-Schlüssel"}[locale]: "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.group({"nl": "Administraties", "fr": "Divisions", "de": "Mandanten"}[locale])).to_be_visible()


def test_oauth_denied_returns_to_the_form_and_removes_the_connection(
    partner: PartnerPage, modal: ConnectModal, stack: Stack
) -> None:
    open_modal(partner, modal)
    modal.start_oauth().deny()
    expect(modal.alert).to_have_text("Access was denied at the provider.")
    expect(modal.connect_button).to_have_attribute("aria-disabled", "false")
    partner.wait_for_api("/api/servers", "(body) => body.count === 0")  # the failed connection is deleted
    assert partner.seen()["errors"][-1]["code"] == "connection_failed"


def test_blocked_popup_offers_a_new_tab_and_keeps_polling(
    partner: PartnerPage, modal: ConnectModal, context: BrowserContext
) -> None:
    # What a pop-up blocker does: window.open returns null in the connect iframe.
    context.add_init_script("if (location.pathname.endsWith('/embed/v1/connect')) window.open = () => null;")
    open_modal(partner, modal)
    modal.choose("Sandbox CRM")
    modal.connect_button.click()
    expect(modal.frame.get_by_role("alert").filter(has_text=EN["popupBlocked"])).to_be_visible()
    expect(modal.new_tab_link).to_be_focused()
    expect(modal.new_tab_link).to_have_attribute("target", "_blank")
    # The sign-in's start page (it takes the nonce from the connect window, then goes to the provider).
    expect(modal.new_tab_link).to_have_attribute("href", re.compile(r"/oauth/start$"))
    expect(modal.new_tab_link).to_have_attribute("rel", "opener")
    with partner.page.expect_popup() as tab:
        modal.new_tab_link.click()
    ConsentPage(tab.value).allow()
    expect(modal.connected_heading).to_be_visible()


def test_coop_on_the_provider_page_does_not_stop_completion(page: Page, coop_stack: Stack) -> None:
    partner, modal = PartnerPage(page, coop_stack.site_url), ConnectModal(page, EN)
    open_modal(partner, modal)
    consent = modal.start_oauth().wait_until_shown()
    # COOP severs the opener: the iframe reads popup.closed === true and, after its grace
    # period, says so; its polling goes on, so the late consent still completes the connection.
    expect(modal.alert).to_have_text(EN["popupClosed"], timeout=15_000)
    consent.allow_button.click()
    expect(modal.connected_heading).to_be_visible()
    assert partner.seen()["connected"][0]["connector"] == "sandbox_crm"


def test_popup_closed_by_the_user_returns_to_the_form_with_a_message(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal)
    consent = modal.start_oauth().wait_until_shown()
    consent.close()
    expect(modal.alert).to_have_text(EN["popupClosed"], timeout=15_000)
    expect(modal.waiting).to_be_hidden()
    expect(modal.connect_button).to_have_text(EN["connect"])
    with partner.page.expect_popup() as again:  # trying again works
        modal.connect_button.click()
    ConsentPage(again.value).allow()
    expect(modal.connected_heading).to_be_visible()
    assert len(partner.seen()["connected"]) == 1


# -- tokens -----------------------------------------------------------------------------------


def test_get_token_refreshes_a_token_about_to_expire_and_keeps_the_form(
    partner: PartnerPage, modal: ConnectModal, context: BrowserContext
) -> None:
    created: list[Request] = []
    context.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/servers") and created.append(r))
    partner.page.clock.install()
    open_modal(partner, modal, auth="both")
    modal.choose("Sandbox Bank")
    modal.fill(BANK)
    assert partner.seen()["tokenCalls"] == 0
    partner.page.clock.fast_forward("29:00")  # the 30-minute token now has under 2 minutes left
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    seen = partner.seen()
    assert seen["tokenCalls"] == 1
    # Sent with the token getToken returned, carrying what the user had typed before.
    (request,) = created
    assert request.headers["authorization"] == f"Bearer {seen['tokens'][0]}"
    assert request.post_data_json == {"servertype_id": 3, "login": "sandbox", "password": "sandbox"}


def test_get_token_is_asked_when_no_token_is_given(partner: PartnerPage, modal: ConnectModal) -> None:
    open_modal(partner, modal, auth="getToken")
    expect(modal.connector("Sandbox Bank")).to_be_visible()
    assert partner.seen()["tokenCalls"] == 1


def test_no_request_url_carries_a_token(partner: PartnerPage, modal: ConnectModal, context: BrowserContext) -> None:
    requests: list[Request] = []
    context.on("request", lambda request: requests.append(request))
    open_modal(partner, modal, auth="both")
    connect_bank(modal)
    modal.done_button.click()
    partner.trigger.click()
    modal.start_oauth().allow()
    expect(modal.connected_heading).to_be_visible()
    tokens = [partner.config()["token"], *partner.seen()["tokens"]]
    assert len(requests) > 10
    for request in requests:
        for token in tokens:
            assert token not in request.url
            assert token not in (request.headers.get("referer") or "")
    iframe_url = partner.iframe.get_attribute("src") or ""
    assert re.fullmatch(
        r"http://127\.0\.0\.1:\d+/embed/v1/connect\?parent=http%3A%2F%2Flocalhost%3A\d+&locale=en", iframe_url
    )


# -- messages from elsewhere ------------------------------------------------------------------


def test_forged_messages_from_the_page_or_another_origin_are_ignored(
    partner: PartnerPage, modal: ConnectModal, stack: Stack, context: BrowserContext
) -> None:
    authorizations: list[str] = []
    context.on("request", lambda r: authorizations.append(r.headers.get("authorization", "")))
    open_modal(partner, modal)
    page = partner.page
    # The partner page itself (e.g. an injected script) pretends to be the iframe.
    page.evaluate("""() => {
        window.postMessage({source: 'peliqan', type: 'connected', data: {id: 1, name: 'fake'}}, '*');
        window.postMessage({source: 'peliqan', type: 'close'}, '*');
        window.postMessage({source: 'peliqan', type: 'error', error: {code: 'fake'}}, '*');
    }""")
    # Another origin, framed by the page, writes to the page and into the connect iframe.
    page.evaluate(
        "(url) => { const f = document.createElement('iframe'); f.src = url; document.body.append(f); }",
        f"{stack.other_url}/forge",
    )
    expect(page.frame_locator(f"iframe[src='{stack.other_url}/forge']").locator("body")).to_be_attached()
    page.wait_for_function("() => [...document.querySelectorAll('iframe')].length === 2")
    page.wait_for_timeout(500)  # give the forged messages every chance to land
    expect(partner.dialog).to_be_visible()
    expect(modal.search).to_be_visible()  # no `open`/`selectedConnector` from the forger
    seen = partner.seen()
    assert seen["connected"] == [] and seen["errors"] == [] and seen["closes"] == 0
    assert not any("forged-token" in a for a in authorizations)


def test_an_unregistered_parent_origin_is_refused(page: Page, stack: Stack) -> None:
    # The connect UI is sent with `frame-ancestors` naming only a registered origin, so the browser
    # itself refuses to show it in this page (in every browser: no reliance on ancestorOrigins).
    partner, modal = PartnerPage(page, stack.other_url), ConnectModal(page, EN)
    with page.expect_console_message(lambda message: "frame-ancestors" in message.text):
        partner.goto(wait_ready=False)  # the connect window never says it is ready
    partner.trigger.click()
    expect(modal.search).to_have_count(0)
    expect(modal.frame.locator("#title")).to_have_count(0)  # no connect UI inside the frame at all


# -- teardown ---------------------------------------------------------------------------------


def listener_counts(page: Page) -> dict[str, int]:
    """Event listeners on window, document and the trigger, read through the DevTools protocol."""
    cdp = page.context.new_cdp_session(page)
    counts = {}
    for name, expression in (
        ("window", "window"),
        ("document", "document"),
        ("trigger", "document.getElementById('peliqan-integration-button')"),
    ):
        handle = cdp.send("Runtime.evaluate", {"expression": expression})["result"]["objectId"]
        listeners = cdp.send("DOMDebugger.getEventListeners", {"objectId": handle})["listeners"]
        counts[name] = len(listeners)
    cdp.detach()
    return counts


SNAPSHOT = """() => [...document.querySelectorAll('*')].map((e) =>
    e.tagName + ' ' + [...e.attributes].map((a) => a.name + '=' + a.value).join(' ') + (e.inert ? ' inert' : '')).join('\\n')"""


def test_destroy_leaves_nothing_behind(partner: PartnerPage, modal: ConnectModal) -> None:
    partner.goto(initialize=False)
    page = partner.page
    page.wait_for_function("() => window.Peliqan !== undefined")
    dom_before, listeners_before = page.evaluate(SNAPSHOT), listener_counts(page)
    partner.initialize()
    partner.wait_for_event("ready")
    partner.trigger.click()
    expect(modal.search).to_be_focused()
    assert listener_counts(page) != listeners_before
    page.evaluate("() => { window.peliqan.destroy(); window.peliqan.destroy(); }")
    assert page.evaluate(SNAPSHOT) == dom_before
    assert listener_counts(page) == listeners_before
    assert partner.seen()["closes"] == 1
    plain_div = page.locator("#peliqan-integration-button")  # no longer a button
    plain_div.click()
    plain_div.press("Enter")
    expect(page.locator("iframe")).to_have_count(0)
    error = page.evaluate("() => { try { window.peliqan.open(); } catch (e) { return [e.name, e.code]; } }")
    assert error == ["PeliqanError", "destroyed"]


def test_initialize_again_on_the_same_trigger_returns_the_live_instance(partner: PartnerPage) -> None:
    partner.goto()
    page = partner.page
    same = page.evaluate("() => Peliqan.initialize(window.makeOptions({})) === window.peliqan")
    assert same is True
    expect(page.locator("body > [role=dialog]")).to_have_count(1)
    partner.trigger.click()
    expect(partner.dialog).to_have_count(1)
    page.keyboard.press("Escape")  # in the iframe: it asks the page to close (a message, not at once)
    expect(partner.dialog).to_be_hidden()
    assert not any(partner.body_children_inert()) and not partner.scroll_locked()
    # destroy() frees the trigger: the next initialize() makes a new instance
    fresh = page.evaluate(
        "() => { window.peliqan.destroy(); return Peliqan.initialize(window.makeOptions({})) !== window.peliqan; }"
    )
    assert fresh is True
    expect(page.locator("body > [role=dialog]")).to_have_count(1)


@pytest.mark.parametrize(
    "order", ["a b -a -b", "a b -b -a", "a b destroy-a -b", "a b destroy-b destroy-a", "b a -b -a"]
)
def test_no_order_of_opening_and_closing_instances_leaves_the_page_inert(partner: PartnerPage, order: str) -> None:
    partner.goto(initialize=False)
    page = partner.page
    page.wait_for_function("() => window.Peliqan !== undefined")
    page.evaluate(
        """() => {
            document.body.style.overflow = 'auto';  // the page's own value: put back, not removed
            const other = document.createElement('button');
            other.id = 'other-trigger';
            other.textContent = 'Other';
            document.querySelector('main').append(other);
            window.inst = {a: Peliqan.initialize(window.makeOptions({})), b: Peliqan.initialize(window.makeOptions({button: '#other-trigger'}))};
        }"""
    )
    assert page.evaluate("() => window.inst.a !== window.inst.b")
    for step in order.split():
        kind, name = (
            ("close", step[1:])
            if step.startswith("-")
            else ("destroy", step[8:])
            if step.startswith("destroy-")
            else ("open", step)
        )
        page.evaluate("([kind, name]) => window.inst[name][kind]()", [kind, name])
        if kind == "open":
            # The dialog opened last is on top (what the user sees and clicks) and the only live part.
            expect(page.locator("body > [role=dialog]:visible")).to_have_count(order.split().index(step) + 1)
            # Focus moves into the new top dialog's iframe (it may still be on the one below a moment).
            page.wait_for_function(
                """() => {
                    const live = [...document.querySelectorAll('body > [role=dialog]')].filter((d) => d.style.display !== 'none' && !d.inert);
                    return document.activeElement?.tagName === 'IFRAME' && live.length === 1 && live[0].contains(document.activeElement);
                }"""
            )
            top = page.evaluate(
                """() => {
                    const shown = document.elementFromPoint(innerWidth / 2, innerHeight / 2).closest('[role=dialog]');
                    const live = [...document.querySelectorAll('body > [role=dialog]')].filter((d) => d.style.display !== 'none' && !d.inert);
                    return [live.length, live[0] === shown, shown.contains(document.activeElement)];
                }"""
            )
            assert top == [1, True, True], (step, top)
    expect(page.locator("body > [role=dialog]:visible")).to_have_count(0)
    state = page.evaluate(
        "() => [[...document.body.children].filter((c) => c.inert).length, document.body.style.overflow, document.documentElement.getAttribute('style')]"
    )
    assert state == [0, "auto", None]
    page.get_by_role("link", name="A link behind the modal").click(timeout=3_000)  # the page answers clicks


# -- inline mode --------------------------------------------------------------------------------


def test_inline_mode_renders_in_the_container(partner: PartnerPage, modal: ConnectModal) -> None:
    partner.goto(inline=True)
    expect(partner.page.locator("#inline-slot iframe")).to_be_visible()
    expect(modal.search).to_be_visible()
    expect(partner.page.get_by_role("dialog")).to_have_count(0)
    expect(modal.close_button).to_be_hidden()
    height = partner.page.evaluate("parseInt(document.querySelector('#inline-slot iframe').style.height)")
    assert height > 200
    connect_bank(modal)
    modal.done_button.click()
    expect(modal.search).to_be_visible()  # back to the start
    assert partner.event_types()[-2:] == ["connected", "close"]


# -- accessibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", ["en", "nl"])
def test_axe_finds_no_violations(page: Page, stack: Stack, locale: str) -> None:
    t = STRINGS[locale]
    partner, modal = PartnerPage(page, stack.site_url, locale=locale, title=t["title"]), ConnectModal(page, t)
    partner.goto()
    partner.trigger.click()
    expect(partner.dialog).to_be_visible()
    expect(modal.search).to_be_visible()
    assert modal.document().evaluate("document.documentElement.lang") == locale
    assert axe_violations(page) == [], "partner page with the dialog open"
    assert axe_violations(modal.document()) == [], "catalogue"

    login, password = BANK_LABELS[locale]
    modal.choose("Sandbox Bank")
    expect(modal.field(login)).to_be_focused()
    assert axe_violations(modal.document()) == [], "form"

    modal.fill({login: "sandbox", password: "wrong"})
    modal.connect_button.click()
    expect(modal.alert).to_have_text(t["errRejected"])
    modal.fill({login: ""})
    modal.connect_button.click()
    expect(modal.field(login)).to_have_attribute("aria-invalid", "true")
    assert axe_violations(modal.document()) == [], "error state"

    modal.fill({login: "sandbox", password: "sandbox"})
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    assert axe_violations(modal.document()) == [], "success screen"


# -- SDK functions --------------------------------------------------------------------------------


def test_sdk_rejects_bad_arguments_and_api_errors_with_peliqan_error(partner: PartnerPage) -> None:
    partner.goto()
    page = partner.page
    bad = page.evaluate(
        "Peliqan.getServerHealthStatus({serverId: 1}).catch((e) => [e instanceof Peliqan.PeliqanError, e.code, e.status])"
    )
    assert bad == [True, "invalid_argument", 0]
    missing = page.evaluate(
        "Peliqan.reAuthoriseServer({identityToken: window.cfg.token, serverId: 999999}).catch((e) => [e.name, e.code, e.status])"
    )
    assert missing == ["PeliqanError", "not_found", 404]
    wrong = page.evaluate(
        "Peliqan.manualRefreshSaltEdge({identityToken: 'not-a-token', serverId: 1}).catch((e) => [e.name, e.code, e.status])"
    )
    assert wrong == ["PeliqanError", "token_invalid", 401]
    assert len(partner.page.context.pages) == 1  # the blank tabs were closed again


def test_reauthorise_oauth_opens_the_consent_in_a_new_tab(
    partner: PartnerPage, modal: ConnectModal, stack: Stack
) -> None:
    open_modal(partner, modal)
    modal.start_oauth().allow()
    expect(modal.connected_heading).to_be_visible()
    modal.done_button.click()
    server_id = partner.seen()["connected"][0]["id"]
    with partner.page.expect_popup() as tab:
        result = partner.run_sdk(
            f"Peliqan.reAuthoriseServer({{identityToken: window.cfg.token, serverId: {server_id}}})"
        )
    assert "auth_uri" in result["ok"]
    # The tab first shows the sign-in's start page (it takes the nonce from this page, its opener),
    # which drops its opener before going on: the provider's page has no handle on the partner page.
    tab.value.wait_for_url("**/sandbox/crm/oauth/authorize?**")
    assert tab.value.evaluate("window.opener") is None
    ConsentPage(tab.value).allow()
    partner.wait_for_api(f"/api/server/{server_id}", "(body) => body.health_status === 'RE_AUTHORISED'")


def test_reauthorise_key_login_opens_the_credentials_form_in_the_modal(
    partner: PartnerPage, modal: ConnectModal, stack: Stack, customer: str
) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    partner.goto(customer=customer)
    result = partner.run_sdk(
        f"Peliqan.reAuthoriseServer({{identityToken: window.cfg.token, serverId: {connection['id']}}})"
    )
    assert "form" in result["ok"]
    expect(partner.dialog).to_be_visible()
    expect(modal.heading).to_have_text(modal.title("reauthTitle", name="Sandbox Bank"))
    modal.fill(BANK)
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()
    assert partner.seen()["connected"][0]["health_status"] == "RE_AUTHORISED"
    assert len(partner.page.context.pages) == 1  # the blank tab opened for a possible auth_uri was closed


def test_reauthorise_before_the_config_step_ends_at_the_config_step(
    partner: PartnerPage, modal: ConnectModal, stack: Stack, customer: str
) -> None:
    # Re-authorising used to mark the connection RE_AUTHORISED with no divisions: every sync then failed.
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_accounting", api_key="sandbox-valid-key")
    assert connection["health_status"] == "CONFIG_SELECT"
    partner.goto(customer=customer)
    partner.run_sdk(f"Peliqan.reAuthoriseServer({{identityToken: window.cfg.token, serverId: {connection['id']}}})")
    expect(modal.heading).to_have_text(modal.title("reauthTitle", name="Sandbox Accounting"))
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.group("Divisions")).to_be_visible()
    assert stack.api("GET", f"/api/server/{connection['id']}", token).json()["health_status"] == "CONFIG_SELECT"
    modal.choice("Acme Retail").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    saved = stack.api("GET", f"/api/server/{connection['id']}", token).json()
    assert saved["health_status"] == "OK" and saved["config"] == {"divisions": ["102"]}


def test_reauthorise_keeps_the_saved_config_choice(
    partner: PartnerPage, modal: ConnectModal, stack: Stack, customer: str
) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_accounting", api_key="sandbox-valid-key")
    stack.api(
        "POST", f"/api/server/{connection['id']}/config", token, json={"divisions": ["101", "103"]}
    ).raise_for_status()
    partner.goto(customer=customer)
    partner.run_sdk(f"Peliqan.reAuthoriseServer({{identityToken: window.cfg.token, serverId: {connection['id']}}})")
    modal.fill({"API key": "sandbox-valid-key"})
    modal.connect_button.click()
    expect(modal.connected_heading).to_be_visible()  # not asked again
    saved = stack.api("GET", f"/api/server/{connection['id']}", token).json()
    assert saved["health_status"] == "RE_AUTHORISED" and saved["config"] == {"divisions": ["101", "103"]}


# -- "Finish setup": open({serverId}) ----------------------------------------------------------------


def test_open_with_server_id_resumes_a_connection_left_at_the_config_step(
    partner: PartnerPage, modal: ConnectModal, stack: Stack, customer: str
) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_accounting", api_key="sandbox-valid-key")
    partner.goto(customer=customer)
    partner.page.evaluate(f"window.peliqan.open({{serverId: {connection['id']}}})")
    expect(partner.dialog).to_be_visible()
    expect(modal.heading).to_have_text(modal.title("finishTitle", name="Sandbox Accounting"))
    expect(modal.group("Divisions")).to_be_visible()
    modal.choice("Acme Services").check()
    modal.continue_button.click()
    expect(modal.connected_heading).to_be_visible()
    (connected,) = partner.seen()["connected"]
    assert connected["id"] == connection["id"] and connected["health_status"] == "OK"
    assert stack.api("GET", "/api/servers", token).json()["count"] == 1  # resumed, not a second connection


def test_open_with_server_id_resumes_a_connection_left_authorizing(
    partner: PartnerPage, modal: ConnectModal, stack: Stack, customer: str
) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_crm")  # the sign-in window was never used
    assert connection["health_status"] == "AUTHORIZING"
    partner.goto(customer=customer)
    partner.page.evaluate(f"window.peliqan.open({{serverId: {connection['id']}}})")
    expect(modal.heading).to_have_text(modal.title("finishTitle", name="Sandbox CRM"))
    expect(modal.frame.get_by_text(modal.title("finishOauth", name="Sandbox CRM"))).to_be_visible()
    with partner.page.expect_popup() as popup:
        modal.connect_button.click()
    ConsentPage(popup.value).allow()
    expect(modal.connected_heading).to_be_visible()
    (connected,) = partner.seen()["connected"]
    assert (
        connected["id"] == connection["id"] and connected["health_status"] == "OK"
    )  # a first connect, not RE_AUTHORISED


def test_open_rejects_a_bad_server_id(partner: PartnerPage) -> None:
    partner.goto()
    error = partner.page.evaluate(
        "() => { try { window.peliqan.open({serverId: -1}); } catch (e) { return [e.name, e.message]; } }"
    )
    assert error[0] == "TypeError" and "serverId must be a connection id" in error[1]


def test_reauthorise_key_login_without_an_instance_rejects(partner: PartnerPage, stack: Stack, customer: str) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    partner.goto(customer=customer, initialize=False)
    result = partner.run_sdk(
        f"Peliqan.reAuthoriseServer({{identityToken: window.cfg.token, serverId: {connection['id']}}})"
    )
    assert result["error"] == "not_initialized"


def test_manual_refresh_opens_the_bank_refresh_page(partner: PartnerPage, stack: Stack, customer: str) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    partner.goto(customer=customer)
    with partner.page.expect_popup() as tab:
        result = partner.run_sdk(
            f"Peliqan.manualRefreshSaltEdge({{identityToken: window.cfg.token, serverId: {connection['id']}}})"
        )
    assert result["ok"]["refresh_url"].endswith("/sandbox/bank/refresh")
    tab.value.wait_for_url("**/sandbox/bank/refresh")
    expect(BankRefreshPage(tab.value).refresh_button).to_be_visible()


def sync_api_available(stack: Stack, token: str, server_id: int) -> bool:
    return stack.api("GET", f"/api/server/{server_id}/sync-status", token).status_code != 404


def test_sync_health_and_watch(partner: PartnerPage, stack: Stack, customer: str, context: BrowserContext) -> None:
    token = stack.integrate(customer)
    connection = create_connection(stack, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")
    if not sync_api_available(stack, token, connection["id"]):
        pytest.skip("the sync API (POST /sync, /health, /sync-status, /runs) is not routed yet")
    health_responses: list[tuple[int, str | None]] = []
    context.on(
        "response",
        lambda r: "/health" in r.url and health_responses.append((r.status, r.request.headers.get("if-none-match"))),
    )
    partner.goto(customer=customer)
    sid = connection["id"]
    page = partner.page
    assert (
        page.evaluate(f"Peliqan.getServerHealthStatus({{identityToken: window.cfg.token, serverId: {sid}}})")[
            "health_status"
        ]
        == "OK"
    )
    page.evaluate(f"""() => {{
        window.watched = [];
        window.stopWatching = Peliqan.watchServer({{identityToken: window.cfg.token, serverId: {sid}, interval: 250,
            onChange: (h) => watched.push(['change', h.health_status]),
            onRunFinished: (run) => watched.push(['run', run && run.status])}});
    }}""")
    page.wait_for_function("() => window.watched.length >= 1")
    started = page.evaluate(f"Peliqan.syncServer({{identityToken: window.cfg.token, serverId: {sid}}})")
    assert started["syncing"] is True
    page.wait_for_function("() => window.watched.some((w) => w[0] === 'run')", timeout=60_000)
    assert (
        page.evaluate(f"Peliqan.getServerSyncRunStatus({{identityToken: window.cfg.token, serverId: {sid}}})")[
            "running"
        ]
        is False
    )
    watched = page.evaluate("window.watched")
    assert watched[0] == ["change", "OK"] and ["change", "HEALTHY"] in watched
    assert [w for w in watched if w[0] == "run"] == [["run", "succeeded"]]
    # Conditional polling: once nothing changes, the answers are 304s.
    page.wait_for_event(
        "response",
        lambda r: "/health" in r.url and r.status == 304 and bool(r.request.headers.get("if-none-match")),
        timeout=15_000,
    )

    # A hidden tab polls nothing; showing it again polls at once.
    set_hidden = "(hidden) => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }"
    page.evaluate(set_hidden, True)
    page.wait_for_timeout(500)  # a poll already in flight may still land
    count = len(health_responses)
    page.wait_for_timeout(2000)  # longer than the back-off has grown to: nothing may happen
    assert len(health_responses) == count
    with page.expect_response(lambda r: "/health" in r.url, timeout=1_000):
        page.evaluate(set_hidden, False)

    page.evaluate("window.stopWatching()")
    count = len(health_responses)
    page.wait_for_timeout(1500)  # several first intervals: a live watch would have polled
    assert len(health_responses) == count


def test_watch_reports_the_health_a_run_left_before_the_run_finished(
    partner: PartnerPage, stack: Stack, customer: str
) -> None:
    # The race a real poll can hit: its health read is answered just before a run ends, the
    # run's end is seen right after. Forced here by answering one health poll with what the
    # server said before a sync ran, while that sync runs to the end.
    token = stack.integrate(customer)
    sid = create_connection(stack, token, servertype_id="sandbox_bank", login="sandbox", password="sandbox")["id"]
    page = partner.goto(customer=customer).page
    page.evaluate(f"""() => {{
        window.watched = [];
        Peliqan.watchServer({{identityToken: window.cfg.token, serverId: {sid}, interval: 250,
            onChange: (h) => watched.push(['change', h.health_status]),
            onRunFinished: (run) => watched.push(['run', run && run.status])}});
    }}""")
    page.wait_for_function("() => window.watched.length >= 1")
    held: list[str] = []

    def answer_from_before_the_sync(route: Route) -> None:
        if held:
            return route.continue_()
        before = route.fetch()  # the health (or 304) as it is now, before the sync
        run = stack.api("POST", f"/api/server/{sid}/sync", token).json()["run_data"][0]["pipeline_run_id"]
        held.append(str(run))
        while stack.api("GET", f"/api/server/{sid}/sync-status", token).json()["running"]:
            pass  # each check is an HTTP round trip
        route.fulfill(response=before)

    page.route(f"**/api/server/{sid}/health", answer_from_before_the_sync)
    page.wait_for_function("() => window.watched.some((w) => w[0] === 'run')", timeout=30_000)
    watched = page.evaluate("window.watched")
    assert watched == [["change", "OK"], ["change", "HEALTHY"], ["run", "succeeded"]], watched
