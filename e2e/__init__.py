"""Browser tests (Playwright, real Chromium) of the widget against the real BFF."""
