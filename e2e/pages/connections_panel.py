"""The "Your connections" panel (Peliqan.mountConnections): an iframe on the BFF origin, located by role and name."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Frame, FrameLocator, Locator, Page, expect


class ConnectionsPanel:
    def __init__(self, page: Page, strings: dict[str, Any]) -> None:
        self.page = page
        self.t = strings
        self.iframe = page.locator("iframe[src*='/embed/v1/panel']")
        frame: FrameLocator = page.frame_locator("iframe[src*='/embed/v1/panel']")
        self.frame = frame
        self.heading = frame.get_by_role("heading", name=strings["panelTitle"], level=2, exact=True)
        self.announcer = frame.locator("#announcer")
        self.empty = frame.get_by_text(strings["panelEmpty"], exact=True)
        self.items = frame.get_by_role("listitem")

    def connection(self, name: str) -> PanelItem:
        return PanelItem(self, name)

    def fitted(self) -> None:
        """Waits until the iframe is as tall as its content (it follows the content by postMessage,
        e.g. after the viewport changed), so a screenshot shows every card whole."""
        height = self.document().evaluate("Math.ceil(document.documentElement.getBoundingClientRect().height)")
        expect(self.iframe).to_have_css("height", f"{max(80, height)}px")

    def document(self) -> Frame:
        for frame in self.page.frames:
            if "/embed/v1/panel" in frame.url:
                return frame
        raise AssertionError("the panel iframe is not loaded")


class PanelItem:
    def __init__(self, panel: ConnectionsPanel, name: str) -> None:
        t = panel.t
        self.item = panel.items.filter(has=panel.frame.get_by_role("heading", name=name, level=3, exact=True))
        self.badge = self.item.locator(".badge")
        self.progress = self.item.get_by_role("status")
        self.facts = self.item.locator("dl")
        self.sync_button = self.item.get_by_role("button", name=t["syncNow"], exact=True)
        self.reauthorise_button = self.item.get_by_role("button", name=t["reauthorise"], exact=True)
        self.finish_button = self.item.get_by_role("button", name=t["finishSetup"], exact=True)
        self.refresh_button = self.item.get_by_role("button", name=t["manualRefresh"], exact=True)
        self.delete_button = self.item.get_by_role("button", name=t["delete"], exact=True)
        self.pause_button = self.item.get_by_role("button", name=t["pause"], exact=True)
        self.resume_button = self.item.get_by_role("button", name=t["resume"], exact=True)
        self.confirm_delete_button = self.item.get_by_role(
            "button", name=t["confirmDeleteButton"].replace("{name}", name), exact=True
        )
        self.cancel_button = self.item.get_by_role("button", name=t["cancel"], exact=True)

    def fact(self, label: str) -> Locator:
        return self.facts.locator("div").filter(has=self.item.page.get_by_text(label, exact=True)).locator("dd")
