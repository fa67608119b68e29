"""Which Chromium the browser tests and `bench/widget.py` launch, and with which flags.

``BFF_CHROMIUM=/path/to/chrome`` wins; otherwise Debian's ``/usr/bin/chromium`` (what
``.ci/run`` installs); otherwise Playwright's own browser (``playwright install chromium``).
"""

from __future__ import annotations

import os
import shutil

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
