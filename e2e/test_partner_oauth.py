"""Seed 002's OAuth flow from the partner's own UI, verbatim: the partner's back-end creates the
connection, its page opens ``oauth_url`` in a new tab and, when that tab closes, asks
``GET /api/server/<id>``. No widget and no nonce hand-over: the start page says who asks and for
whom, and goes on when the person presses Continue, once, in the browser that pressed it."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Page, expect

from e2e.pages.sandbox_provider import ConsentPage
from e2e.stack import Stack


def open_partner_ui(page: Page, stack: Stack, customer: str) -> Page:
    page.goto(f"{stack.site_url}/partner-ui?customer={customer}")
    with page.expect_popup() as popup:
        page.get_by_role("button", name="Connect Sandbox CRM").click()
    tab = popup.value
    expect(tab.get_by_role("heading", name="Connect Sandbox CRM")).to_be_visible()
    return tab


def test_the_partner_ui_opens_oauth_url_in_a_new_tab_and_reads_the_result_when_it_closes(
    page: Page, stack: Stack, customer: str, browser: Browser
) -> None:
    tab = open_partner_ui(page, stack, customer)
    # Before the provider: who asks (the partner), for whom (the customer), for what, powered by what.
    expect(tab.locator("#who")).to_have_text("e2e asks to connect your Sandbox CRM account to the account of Test Co.")
    expect(tab.get_by_text("Powered by bff")).to_be_visible()
    oauth_url = tab.url
    tab.get_by_role("button", name="Continue to Sandbox CRM").click()
    ConsentPage(tab).allow()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Connection \d+: OK$"))

    # The link is used up: opened again (forwarded, or from the history), it starts nothing.
    other = browser.new_context()
    try:
        again = other.new_page()
        again.goto(oauth_url)
        expect(again.get_by_role("heading", name="Sign-in not started")).to_be_visible()
        expect(again.get_by_role("alert")).to_contain_text("expired or was already used")
        expect(again.get_by_role("button", name=re.compile("Continue"))).to_have_count(0)
    finally:
        other.close()


def test_a_forwarded_oauth_url_names_the_starters_customer_and_dies_once_used(
    page: Page, stack: Stack, customer: str, browser: Browser
) -> None:
    tab = open_partner_ui(page, stack, customer)
    victim = browser.new_context()
    try:
        forwarded = victim.new_page()
        forwarded.goto(tab.url)
        # Whoever gets the link sees whose account it would connect to, and the warning.
        expect(forwarded.locator("#who")).to_contain_text("to the account of Test Co")
        expect(forwarded.get_by_text("If someone sent you this link, close this page")).to_be_visible()
        # The starter continues first; the forwarded copy then starts nothing.
        tab.get_by_role("button", name="Continue to Sandbox CRM").click()
        consent = ConsentPage(tab).wait_until_shown()
        forwarded.get_by_role("button", name="Continue to Sandbox CRM").click()
        expect(forwarded.get_by_role("heading", name="Sign-in not started")).to_be_visible()
        expect(forwarded.get_by_role("alert")).to_contain_text("expired or was already started")
        # And the consent page itself, forwarded, completes nothing (bound to the starter's browser).
        stolen = victim.new_page()
        stolen.goto(consent.page.url)
        ConsentPage(stolen).allow()
        expect(stolen.get_by_role("heading", name="Connection not completed")).to_be_visible()
        expect(stolen.get_by_role("alert")).to_contain_text("started in another browser or window")
    finally:
        victim.close()
    consent.allow()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Connection \d+: OK$"))
