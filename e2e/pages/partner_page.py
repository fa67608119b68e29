"""The partner's page: the trigger, the dialog the loader mounts, and what its callbacks received."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from playwright.sync_api import Page


class PartnerPage:
    def __init__(self, page: Page, base_url: str, *, locale: str = "en", title: str = "Add connection") -> None:
        self.page = page
        self.base_url = base_url
        self.locale = locale
        self.trigger = page.get_by_role("button", name="Add connection", exact=True)
        self.dialog = page.get_by_role("dialog", name=title, exact=True)
        self.iframe = page.locator("iframe[src*='/embed/v1/connect']")
        self.sdk_button = page.get_by_role("button", name="Run SDK call")

    def goto(
        self,
        *,
        customer: str | None = None,
        auth: str = "token",
        options: dict[str, Any] | None = None,
        inline: bool = False,
        initialize: bool = True,
        wait_ready: bool = True,
    ) -> PartnerPage:
        """Open the page; `auth` is "token", "getToken" or "both" (how the widget gets its token)."""
        params: dict[str, str] = {"auth": auth, "options": json.dumps({"locale": self.locale, **(options or {})})}
        if customer:
            params["customer"] = customer
        if inline:
            params["inline"] = "1"
        if not initialize:
            params["manual"] = "1"
        self.page.goto(f"{self.base_url}/?{urlencode(params)}")
        if initialize and wait_ready:
            self.wait_for_event("ready")
        return self

    def seen(self) -> dict[str, Any]:
        """Everything the partner's callbacks received so far."""
        return self.page.evaluate("window.seen")  # type: ignore[no-any-return]

    def config(self) -> dict[str, Any]:
        return self.page.evaluate("window.cfg")  # type: ignore[no-any-return]

    def wait_for_event(self, event_type: str) -> None:
        self.page.wait_for_function("(type) => window.seen.events.some((e) => e.type === type)", arg=event_type)

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.seen()["events"]]

    def initialize(self, **extra: Any) -> None:
        """`Peliqan.initialize(...)` with the page's token and callbacks, plus `extra` options (JS literals)."""
        self.page.evaluate("(extra) => { window.peliqan = Peliqan.initialize(window.makeOptions(extra)); }", extra)

    def run_sdk(self, expression: str) -> dict[str, Any]:
        """Run an SDK call from a click on the partner's own button (so the browser allows new tabs)."""
        before = len(self.seen()["sdk"])
        self.page.evaluate(f"() => {{ window.nextSdkCall = () => {expression}; }}")
        self.sdk_button.click()
        self.page.wait_for_function("(n) => window.seen.sdk.length > n", arg=before)
        return self.seen()["sdk"][-1]  # type: ignore[no-any-return]

    def wait_for_api(self, path: str, predicate: str, timeout: float = 10_000) -> None:
        """Poll the BFF from the page (CORS, the page's token) until `predicate(json)` holds."""
        self.page.wait_for_function(
            f"""async (path) => {{
                const response = await fetch(window.cfg.bff + path, {{headers: {{Authorization: 'Bearer ' + window.cfg.token}}}});
                return ({predicate})(await response.json());
            }}""",
            arg=path,
            polling=200,
            timeout=timeout,
        )

    def body_children_inert(self) -> list[bool]:
        return self.page.evaluate(  # type: ignore[no-any-return]
            "[...document.body.children].filter((c) => !c.querySelector('iframe[src*=\"/embed/v1/connect\"]')).map((c) => c.inert)"
        )

    def scroll_locked(self) -> bool:
        return self.page.evaluate(  # type: ignore[no-any-return]
            "getComputedStyle(document.body).overflow === 'hidden' && getComputedStyle(document.documentElement).overflow === 'hidden'"
        )

    def iframe_has_focus(self) -> bool:
        return self.page.evaluate(
            "document.activeElement === document.querySelector('iframe[src*=\"/embed/v1/connect\"]')"
        )  # type: ignore[no-any-return]
