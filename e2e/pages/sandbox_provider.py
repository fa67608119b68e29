"""Pages of the built-in sandbox providers that open in pop-ups and tabs."""

from __future__ import annotations

from playwright.sync_api import Page


class ConsentPage:
    """The sandbox CRM's OAuth consent page ("Allow" / "Deny")."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.allow_button = page.get_by_role("button", name="Allow", exact=True)
        self.deny_button = page.get_by_role("button", name="Deny", exact=True)

    def wait_until_shown(self) -> ConsentPage:
        self.page.wait_for_url("**/sandbox/crm/oauth/authorize**")
        return self

    def allow(self) -> None:
        self.wait_until_shown().allow_button.click()

    def deny(self) -> None:
        self.wait_until_shown().deny_button.click()


class BankRefreshPage:
    """The sandbox bank's manual-refresh page (SaltEdge-style)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.refresh_button = page.get_by_role("button", name="Refresh", exact=True)
