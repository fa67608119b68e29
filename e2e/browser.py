"""Which Chromium the browser tests and `bench/widget.py` launch, and with which flags.

``BFF_CHROMIUM=/path/to/chrome`` wins; otherwise Debian's ``/usr/bin/chromium`` (what
``.ci/run`` installs); otherwise Playwright's own browser (``playwright install chromium``).
"""

from __future__ import annotations

import os
import shutil

from playwright.sync_api import Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The executable to launch, or None for Playwright's bundled Chromium."""
    if configured := os.environ.get("BFF_CHROMIUM"):
        return configured
    return shutil.which("chromium") or (shutil.which("chromium-browser"))


def close_settled(page: Page) -> None:
    """Close a pop-up or tab once it is on its page and loaded. Chromium can drop a close that
    races a navigation commit (an ``about:blank`` pop-up being sent on, a redirect), and
    ``page.close()`` then waits forever (microsoft/playwright#41900, crbug.com/536385539)."""
    page.wait_for_url(lambda url: url != "about:blank")
    page.wait_for_load_state("load")
    page.close()
