"""Widget open latency in real Chromium: click → dialog visible, warm and cold; and the
"Your connections" panel: mountConnections() → first connection's actions usable, warm and cold.

Usage: python3 bench/widget.py [--opens 20]
Warm: the iframe was pre-loaded by `initialize()` (the normal case). Cold: `initialize()`
runs right before the click, so the iframe loads on open. For each it prints the median
time to the dialog being visible and to the catalogue being usable (its search box
visible inside the iframe), and a baseline measured in the same run: a click on a plain
button of the same page that reveals an element, which is what Playwright's own round
trips cost. Targets: ≤ 100 ms warm, ≤ 400 ms cold (dialog visible).
First pick: in each cold document, a click on a connector → its form usable (the click imports
connect-steps.js, the steps after a pick).
Panel, cold: a fresh page load, so the panel's code and iframe are fetched on mount (no HTTP
cache); warm: mounted again on the same page (code and iframe assets cached).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import widget_sizes  # noqa: E402  (bench/widget_sizes.py: the bytes behind these timings)
from playwright.sync_api import sync_playwright  # noqa: E402

from e2e.browser import CHROMIUM_ARGS, chromium_path  # noqa: E402
from e2e.pages.connect_modal import ConnectModal  # noqa: E402
from e2e.pages.connections_panel import ConnectionsPanel  # noqa: E402
from e2e.pages.partner_page import PartnerPage  # noqa: E402
from e2e.stack import locale_strings, running_stack  # noqa: E402

NEXT_FRAME = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=20)
    args = parser.parse_args()
    strings = locale_strings()["en"]
    results: dict[str, list[float]] = {
        k: [] for k in ("baseline", "warm", "warm_ready", "cold", "cold_ready", "cold_pick", "panel_cold", "panel_warm")
    }

    with running_stack(Path(tempfile.mkdtemp(prefix="bff-bench-widget-"))) as stack, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        partner = PartnerPage(page, stack.site_url)
        modal = ConnectModal(page, strings)

        partner.goto(customer="bench-warm")
        page.evaluate(
            "() => { const b = document.createElement('button'); b.id = 'bench-b'; b.textContent = 'Baseline';"
            " const d = document.createElement('p'); d.id = 'bench-d'; d.textContent = 'shown';"
            " b.addEventListener('click', () => { d.hidden = !d.hidden; }); document.body.append(b, d); }"
        )
        for i in range(args.opens):
            # Baseline: a plain button toggling a plain element, same page, same Playwright calls.
            started = time.perf_counter()
            page.locator("#bench-b").click()
            page.locator("#bench-d").wait_for(state="visible" if i % 2 else "hidden")
            results["baseline"].append(time.perf_counter() - started)
        page.evaluate(
            "() => { document.getElementById('bench-b').remove(); document.getElementById('bench-d').remove(); }"
        )

        for _ in range(args.opens):
            started = time.perf_counter()
            partner.trigger.click()
            partner.dialog.wait_for(state="visible")
            results["warm"].append(time.perf_counter() - started)
            modal.search.wait_for(state="visible")
            results["warm_ready"].append(time.perf_counter() - started)
            page.keyboard.press("Escape")
            partner.dialog.wait_for(state="hidden")
            # Let the compositor draw the closed state (untimed): a click in the same frame as the
            # close is hit-tested against the overlay that was just hidden and lands in the iframe.
            page.evaluate(NEXT_FRAME)

        for i in range(args.opens):
            partner.goto(customer=f"bench-cold-{i}", initialize=False)
            page.wait_for_function("() => window.Peliqan !== undefined")
            started = time.perf_counter()
            page.evaluate("() => { window.peliqan = Peliqan.initialize(window.makeOptions({})); }")
            partner.trigger.click()
            partner.dialog.wait_for(state="visible")
            results["cold"].append(time.perf_counter() - started)
            modal.search.wait_for(state="visible")
            results["cold_ready"].append(time.perf_counter() - started)
            # The first pick in this document imports connect-steps.js (the form, sign-in, choice).
            picked = time.perf_counter()
            modal.connector("Sandbox Bank").click()
            modal.field("Login").wait_for(state="visible")
            results["cold_pick"].append(time.perf_counter() - picked)

        # The panel: one connection, so "usable" is its Sync now button.
        panel = ConnectionsPanel(page, strings)
        token = stack.integrate("bench-panel")
        stack.api(
            "POST",
            "/api/servers",
            token,
            json={"servertype_id": "sandbox_bank", "login": "sandbox", "password": "sandbox"},
        ).raise_for_status()
        mount = (
            "() => { window.panel = Peliqan.mountConnections('#inline-slot', {integrationToken: window.cfg.token}); }"
        )
        sync_now = panel.connection("Sandbox Bank").sync_button
        for _ in range(args.opens):
            context = browser.new_context()  # an empty HTTP cache
            fresh = context.new_page()
            PartnerPage(fresh, stack.site_url).goto(customer="bench-panel", initialize=False)
            fresh.wait_for_function("() => window.Peliqan !== undefined")
            started = time.perf_counter()
            fresh.evaluate(mount)
            ConnectionsPanel(fresh, strings).connection("Sandbox Bank").sync_button.wait_for(state="visible")
            results["panel_cold"].append(time.perf_counter() - started)
            context.close()
        partner.goto(customer="bench-panel", initialize=False)
        page.wait_for_function("() => window.Peliqan !== undefined")
        for _ in range(args.opens):
            started = time.perf_counter()
            page.evaluate(mount)
            sync_now.wait_for(state="visible")
            results["panel_warm"].append(time.perf_counter() - started)
            page.evaluate("() => window.panel.destroy()")
            panel.iframe.wait_for(state="detached")
        browser.close()

    base = median_ms(results["baseline"])
    browser_name = chromium_path() or "Playwright's bundled Chromium"
    print(f"{args.opens} opens each, medians, headless {browser_name}")
    print(f"baseline click → element visible:     {base:7.1f} ms")
    for kind, target in (("warm", 100), ("cold", 400)):
        visible, ready = median_ms(results[kind]), median_ms(results[f"{kind}_ready"])
        print(
            f"{kind:>8} click → dialog visible:          {visible:7.1f} ms  ({visible / base:4.1f}× baseline; target ≤ {target} ms)"
        )
        print(f"{kind:>8} click → catalogue usable:        {ready:7.1f} ms  ({ready / base:4.1f}× baseline)")
    pick = median_ms(results["cold_pick"])
    print(
        f"    first pick → its form usable:        {pick:7.1f} ms  ({pick / base:4.1f}× baseline; loads connect-steps.js)"
    )
    for kind in ("warm", "cold"):
        usable = median_ms(results[f"panel_{kind}"])
        print(f"{kind:>8} mountConnections → panel usable: {usable:7.1f} ms  ({usable / base:4.1f}× baseline)")
    print("bytes on the wire (each file gzipped apart, static imports counted):")
    print(widget_sizes.report())


if __name__ == "__main__":
    main()
