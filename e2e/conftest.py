"""Fixtures for the browser tests (see e2e/stack.py for the servers).

Chromium is chosen by e2e/browser.py (``BFF_CHROMIUM`` overrides the path). A failing test keeps
its Playwright trace and a screenshot of each open page under ``test-results/`` (open the trace
with ``playwright show-trace``).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from e2e.browser import CHROMIUM_ARGS, chromium_path
from e2e.stack import Stack, running_stack

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-results"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("bff")) as value:
        yield value


@pytest.fixture(scope="session")
def coop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second BFF whose sandbox authorize page sends Cross-Origin-Opener-Policy: same-origin."""
    with running_stack(tmp_path_factory.mktemp("bff-coop"), BFF_SANDBOX_COOP="1") as value:
        yield value


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as value:
        yield value


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    value = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    yield value
    value.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def context(browser: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserContext]:
    value = browser.new_context(viewport={"width": 1100, "height": 800})
    value.set_default_timeout(10_000)
    value.tracing.start(screenshots=True, snapshots=True, sources=False)
    yield value
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        stem = re.sub(r"[^\w.-]+", "_", request.node.nodeid)
        for index, open_page in enumerate(value.pages):
            with contextlib.suppress(Exception):  # a page that crashed cannot be pictured
                open_page.screenshot(path=str(ARTIFACTS / f"{stem}-{index}.png"), full_page=True, timeout=5_000)
            # What each frame showed, in the log: the CI's artefacts are not always at hand, and an
            # accessibility snapshot of the page does not reach into the widget's cross-origin iframe.
            for frame in open_page.frames:
                with contextlib.suppress(Exception):
                    text = " ".join(frame.locator("body").inner_text(timeout=2_000).split())
                    print(f"page {index} frame {frame.url[:120]}: {text[:800]}")
        path = ARTIFACTS / f"{stem}.zip"
        value.tracing.stop(path=str(path))
        print(f"trace: {path}; screenshots: {ARTIFACTS / stem}-*.png")
    else:
        value.tracing.stop()
    value.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def customer() -> str:
    """A fresh end-customer per test: its connections are its own."""
    return f"cust-{uuid.uuid4().hex[:10]}"
