"""The widget inside real React 18 (StrictMode, development build) and Vue 3 apps (e2e/frameworks.py).

React's StrictMode runs every effect twice in development (mount, cleanup, mount): with the
README's cleanup that is two instances one after the other; with a naive effect (no cleanup) it
is two initialize() calls on one trigger, which must not give two dialogs. Route changes unmount
the components while the modal may be open: the host page must never be left inert or unable to
scroll. The builds come from npm through `.ci/npm-fixtures`; outside CI, without them, these tests
skip (with BFF_NPM_FIXTURES set, as .ci/run sets it, a missing build is a failure).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from e2e import frameworks
from e2e.pages.connect_modal import ConnectModal
from e2e.pages.connections_panel import ConnectionsPanel
from e2e.stack import Stack, locale_strings

EN = locale_strings()["en"]
FRAMEWORKS = ["react", "vue"]

if not frameworks.fixtures_present():
    reason = f"React/Vue builds not in {frameworks.fixtures_dir()}: run `bash .ci/npm-fixtures` (needs npm)"
    if "BFF_NPM_FIXTURES" in os.environ:
        raise RuntimeError(reason)  # .ci/run fetched them: their absence is a failure, not a skip
    pytestmark = pytest.mark.skip(reason=reason)


class HostApp:
    """A framework app hosting the widget: its trigger, the dialogs the loader added, the page's state."""

    def __init__(self, page: Page, stack: Stack, framework: str) -> None:
        self.page = page
        self.stack = stack
        self.framework = framework
        self.trigger = page.get_by_role("button", name="Add connection", exact=True)
        self.dialogs = page.locator("body > [role=dialog]")
        self.visible_dialog = page.get_by_role("dialog", name="Add connection", exact=True)
        self.modal = ConnectModal(page, EN)
        self.panel = ConnectionsPanel(page, EN)

    def goto(self, customer: str, *, naive: bool = False, route: str = "/connect") -> HostApp:
        query = f"customer={customer}" + ("&naive=1" if naive else "")
        self.page.goto(f"{self.stack.site_url}/host/{self.framework}?{query}#{route}")
        self.page.wait_for_function("() => window.appReady === true")
        return self

    def seen(self) -> dict[str, Any]:
        return self.page.evaluate("window.seen")  # type: ignore[no-any-return]

    def route(self, path: str) -> None:
        """Navigate inside the app, as a router does (a real click on its link)."""
        self.page.get_by_role(
            "link", name={"/connect": "Connect", "/panel": "Connections", "/other": "Other"}[path], exact=True
        ).click()

    def open_by_click(self) -> None:
        self.trigger.click()
        expect(self.visible_dialog).to_have_count(1)
        # (by the visible dialog: after naive remounts, leaked instances keep hidden dialogs)
        expect(self.visible_dialog.frame_locator("iframe").get_by_role("heading", level=1)).to_be_visible()

    def escape(self) -> None:
        """Escape closes the open dialog; then the page must be usable again."""
        self.page.keyboard.press("Escape")
        expect(self.visible_dialog).to_have_count(0)
        self.assert_usable()

    def assert_usable(self) -> None:
        """Nothing inert, nothing scroll-locked, and the page answers a real click."""
        state = self.page.evaluate(
            """() => ({
                inert: [...document.querySelectorAll('[inert]')].map((el) => el.tagName + (el.id ? '#' + el.id : '')),
                overflow: [document.body.style.overflow, document.documentElement.style.overflow],
                style: [document.body.getAttribute('style'), document.documentElement.getAttribute('style')],
            })"""
        )
        assert state == {"inert": [], "overflow": ["", ""], "style": [None, None]}, state
        self.page.get_by_role("link", name="Other", exact=True).click(timeout=3_000)
        expect(self.page.get_by_text("Another page")).to_be_visible()
        self.page.get_by_role("link", name="Connect", exact=True).click(timeout=3_000)
        expect(self.trigger).to_be_visible()


@pytest.fixture(params=FRAMEWORKS)
def app(request: pytest.FixtureRequest, page: Page, stack: Stack) -> HostApp:
    return HostApp(page, stack, request.param)


def test_a_double_mount_with_cleanup_gives_one_dialog_and_a_live_page(app: HostApp, customer: str) -> None:
    app.goto(customer)
    if app.framework == "react":
        # StrictMode: mounted, cleaned up (destroy), mounted again: one live instance remains
        app.page.wait_for_function("() => window.seen.instances === 2")
    app.open_by_click()
    expect(app.dialogs).to_have_count(1)
    app.escape()


def test_the_naive_effect_without_cleanup_still_gives_one_dialog(app: HostApp, customer: str) -> None:
    app.goto(customer, naive=True)
    if app.framework == "react":
        # initialize() ran twice on the same button: the second call got the live instance back
        app.page.wait_for_function("() => window.seen.instances === 2")
    app.open_by_click()
    expect(app.dialogs).to_have_count(1)
    app.escape()
    app.open_by_click()  # and again: still one dialog, still closes
    app.escape()


def test_a_route_change_with_the_modal_open_leaves_the_page_usable(app: HostApp, customer: str) -> None:
    app.goto(customer)
    app.open_by_click()
    # The router unmounts the button while the modal is open (e.g. the app navigates by itself).
    app.page.evaluate("() => { location.hash = '#/other'; }")
    expect(app.page.get_by_text("Another page")).to_be_visible()
    expect(app.dialogs).to_have_count(0)  # destroy() took its dialog away
    app.assert_usable()
    # Remount: a new button, a new instance, one dialog.
    app.open_by_click()
    expect(app.dialogs).to_have_count(1)
    app.escape()


def test_remounts_without_cleanup_never_leave_the_page_inert(app: HostApp, customer: str) -> None:
    app.goto(customer, naive=True)
    for _ in range(3):  # every remount leaks an instance (no destroy) on a button that is gone
        app.route("/other")
        app.route("/connect")
    app.open_by_click()
    app.escape()
    # Open, then leave the route without cleanup: the modal stays until closed, then the page is back.
    app.open_by_click()
    app.page.evaluate("() => { location.hash = '#/other'; }")
    app.escape()


def test_connect_from_the_app(app: HostApp, customer: str) -> None:
    app.goto(customer)
    app.open_by_click()
    app.modal.choose("Sandbox Bank")
    app.modal.fill({"Login": "sandbox", "Password": "sandbox"})
    app.modal.connect_button.click()
    expect(app.modal.connected_heading).to_be_visible()
    app.page.wait_for_function("() => window.seen.connected.length === 1")
    assert app.seen()["connected"][0]["connector"] == "sandbox_bank"
    app.modal.done_button.click()
    expect(app.visible_dialog).to_have_count(0)
    app.assert_usable()


def test_the_panel_mounts_once_and_follows_the_routes(app: HostApp, stack: Stack, customer: str) -> None:
    token = stack.integrate(customer)
    stack.api(
        "POST", "/api/servers", token, json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"}
    ).raise_for_status()
    app.goto(customer, route="/panel")
    item = app.panel.connection("Sandbox Bank")
    expect(item.sync_button).to_be_visible()
    expect(app.panel.iframe).to_have_count(1)  # StrictMode's second mount replaced the first panel
    app.route("/other")
    expect(app.panel.iframe).to_have_count(0)
    app.route("/panel")
    expect(item.sync_button).to_be_visible()
    expect(app.panel.iframe).to_have_count(1)
    item.sync_button.click()
    app.page.wait_for_function("() => window.seen.changes.includes('sync_finished')", timeout=20_000)
    app.route("/other")
    app.assert_usable()
