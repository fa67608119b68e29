"""The demo partner site, Acme Books (``demo_site/``): sign-in, Integrations and Data pages.

Everything is located by role and accessible name, as a customer (or a screen reader) finds it.
A QA team embedding the widget in its own product can copy these classes and change the names.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from playwright.sync_api import Locator, Page, expect

from e2e.pages.connect_modal import ConnectModal

COLUMNS = ("Connection", "Health", "Last run", "Sync progress", "Actions")


class SignInPage:
    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.heading = page.get_by_role("heading", name="Sign in to Acme Books", exact=True)
        self.sign_in_button = page.get_by_role("button", name="Sign in", exact=True)

    def goto(self) -> SignInPage:
        self.page.goto(self.base_url + "/")
        expect(self.heading).to_be_visible()
        return self

    def customer(self, external_id: str) -> Locator:
        """The radio button of one demo customer (its label ends with the external_id)."""
        return self.page.get_by_role("radio", name=re.compile(rf"\b{re.escape(external_id)}\)$"))

    def sign_in(self, external_id: str, strings: dict[str, Any]) -> IntegrationsPage:
        self.goto()
        self.customer(external_id).check()
        self.sign_in_button.click()
        integrations = IntegrationsPage(self.page, self.base_url, strings)
        integrations.wait_until_ready()
        return integrations


class IntegrationsPage:
    """``/integrations``: the "Add connection" button (the widget) and the customer's connections."""

    def __init__(self, page: Page, base_url: str, strings: dict[str, Any]) -> None:
        self.page = page
        self.base_url = base_url
        self.heading = page.get_by_role("heading", name="Integrations", level=1, exact=True)
        # A <div> until the loader makes it a button: locating it as one waits for the widget.
        self.add_button = page.get_by_role("button", name="Add connection", exact=True)
        self.dialog = page.get_by_role("dialog", name=strings["title"], exact=True)
        self.modal = ConnectModal(page, strings)
        self.messages = page.get_by_role("status", name="Messages", exact=True)
        self.table = page.get_by_role("table", name="Your connections", exact=True)
        self.no_connections = page.get_by_text("No connections yet.")
        self.nav_data = page.get_by_role("navigation", name="Main").get_by_role("link", name="Data", exact=True)
        self.nav_integrations = page.get_by_role("navigation", name="Main").get_by_role(
            "link", name="Integrations", exact=True
        )

    def goto(self, *, connectors: list[str] | None = None, connector: str | None = None) -> IntegrationsPage:
        """``connectors`` and ``connector`` become the widget's availableConnectors / selectedConnector."""
        params = {}
        if connectors:
            params["connectors"] = ",".join(connectors)
        if connector:
            params["connector"] = connector
        self.page.goto(f"{self.base_url}/integrations" + (f"?{urlencode(params)}" if params else ""))
        self.wait_until_ready()
        return self

    def wait_until_ready(self) -> None:
        expect(self.heading).to_be_visible()
        expect(self.add_button).to_have_attribute("aria-haspopup", "dialog")

    def open_modal(self) -> ConnectModal:
        self.add_button.click()
        expect(self.dialog).to_be_visible()
        expect(self.modal.heading).to_be_visible()
        return self.modal

    def finish(self) -> None:
        """ "Done" on the success screen: the page reloads with the new connection listed."""
        with self.page.expect_navigation():
            self.modal.done_button.click()
        self.wait_until_ready()

    def connection(self, name: str) -> ConnectionRow:
        return ConnectionRow(self, name)

    def data_page(self) -> DataPage:
        self.nav_data.click()
        data = DataPage(self.page, self.base_url)
        expect(data.heading).to_be_visible()
        return data

    def token(self) -> str:
        """The integrate token the partner's back-end put in the page (for API assertions)."""
        return str(self.page.evaluate("JSON.parse(document.getElementById('acme-config').textContent).token"))


class ConnectionRow:
    """One row of "Your connections", named by the connection's name."""

    def __init__(self, integrations: IntegrationsPage, name: str) -> None:
        self.page = integrations.page
        self.name = name
        self.row = integrations.table.get_by_role("row", name=name, exact=True)
        cells = self.row.get_by_role("cell")  # the connection's name is the row header, not a cell
        self.health = cells.nth(COLUMNS.index("Health") - 1)
        self.last_run = cells.nth(COLUMNS.index("Last run") - 1)
        self.progress = self.row.get_by_role("status")
        self.sync_button = self.row.get_by_role("button", name="Sync now", exact=True)
        self.finish_button = self.row.get_by_role("button", name="Finish setup", exact=True)
        self.reauthorise_button = self.row.get_by_role("button", name="Re-authorise", exact=True)
        self.refresh_button = self.row.get_by_role("button", name="Manual refresh", exact=True)
        self.delete_button = self.row.get_by_role("button", name="Delete", exact=True)

    def sync(self, *, records: int | None = None, timeout: float = 60_000) -> list[str]:
        """ "Sync now"; wait until the progress cell says the run finished and the health reads "Healthy".

        Returns every text the progress cell showed on the way (e.g. Starting…, Running…, Finished: …).
        """
        self.progress.evaluate(
            """(cell) => {
                cell.seen = [];
                new MutationObserver(() => cell.seen.push(cell.textContent)).observe(cell, {childList: true, characterData: true, subtree: true});
            }"""
        )
        self.sync_button.click()  # sets "Starting…" at once: an earlier run's "Finished" is gone
        count = f"{records:,}" if records is not None else r"[\d,]+"
        expect(self.progress).to_have_text(re.compile(rf"^Finished: {count} new records?$"), timeout=timeout)
        expect(self.health).to_have_text("Healthy")
        expect(self.sync_button).to_have_attribute("aria-disabled", "false")
        return list(self.progress.evaluate("(cell) => cell.seen"))

    def delete(self) -> None:
        """ "Delete", accepting the browser's confirmation."""
        self.page.once("dialog", lambda dialog: dialog.accept())
        self.delete_button.click()


class DataPage:
    """``/data``: what the partner's back-end reads server-side (sub-accounts → connections → tables → rows)."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.heading = page.get_by_role("heading", name="Data", level=1, exact=True)
        self.no_tables = page.get_by_text("No synced tables yet.")

    def goto(self) -> DataPage:
        self.page.goto(self.base_url + "/data")
        expect(self.heading).to_be_visible()
        return self

    def sub_account(self, external_id: str) -> Locator:
        return self.page.get_by_role("listitem").filter(has=self.page.get_by_text(external_id, exact=True))

    def connection(self, name: str) -> Locator:
        """The "name — Health" item in the customer's connections (the words of Peliqan.describeHealth)."""
        return self.page.get_by_role("listitem").filter(has_text=re.compile(rf"^{re.escape(name)} — "))

    def table(self, name: str) -> DataTable:
        return DataTable(self.page.get_by_role("region", name=name, exact=True))


class DataTable:
    def __init__(self, region: Locator) -> None:
        self.region = region
        self.summary = region.get_by_text(re.compile(r"rows; first \d+ shown"))
        self.rows = region.get_by_role("table").get_by_role("row")  # header row included
        self.columns = region.get_by_role("columnheader")

    def expect_rows(self, count: int) -> None:
        expect(self.summary).to_have_text(re.compile(rf"^{count:,} rows;"))
