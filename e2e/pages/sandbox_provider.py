"""Pages of the built-in sandbox providers that open in pop-ups and tabs."""

from __future__ import annotations

from playwright.sync_api import Page

from e2e.browser import close_settled


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

    def close(self) -> None:
        """The person closes the pop-up (once its consent page is there: see close_settled)."""
        self.wait_until_shown()
        close_settled(self.page)


class BankRefreshPage:
    """The sandbox bank's manual-refresh page (SaltEdge-style)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.refresh_button = page.get_by_role("button", name="Refresh", exact=True)
