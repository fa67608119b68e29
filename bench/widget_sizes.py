"""What a partner page downloads for the widget, in gzipped bytes: each file gzipped on its own
(as a server sends it), a module's static imports counted with it.

Usage: python3 bench/widget_sizes.py
  eager: the loader and everything it imports statically (every page with the script tag pays it);
  modal: the eager part + peliqan-modal.js (imported by initialize()) + peliqan-sdk.js + the
         connect document (connect.html, its CSS, connect.js and its static imports) + the
         largest locale table (the iframe loads the one of its locale): the modal open at the
         catalogue;
  connect: the modal + connect-steps.js (the form, sign-in and choice steps), which connect.js
         imports when a connector is pointed at or picked: what a customer who connects downloads.
tests/test_widget_assets.py holds each to its budget (connect's is the modal's old one, so that
splitting the connect window cannot hide bytes).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

WIDGET = Path(__file__).resolve().parents[1] / "widget"
EAGER_BUDGET = 4096
MODAL_BUDGET = 20480
CONNECT_BUDGET = 24576
STATIC_IMPORT = re.compile(
    r"""^\s*(?:import|export)\b[^'"`;]*?\bfrom\s+['"]\./([\w.-]+)['"]|^\s*import\s+['"]\./([\w.-]+)['"]""", re.M
)
DOCUMENT_ASSET = re.compile(r"""<(?:script[^>]*\ssrc|link[^>]*\shref)="([\w.-]+)\"""")


def gzipped(path: Path) -> int:
    # Same as `gzip -9c file | wc -c` (mtime 0 keeps it reproducible).
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def static_graph(name: str) -> list[str]:
    """`name` and every module it imports statically, transitively (dynamic import() not followed)."""
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        source = (WIDGET / current).read_text()
        todo += [a or b for a, b in STATIC_IMPORT.findall(source)]
    return seen


def document_files(name: str) -> list[str]:
    """An iframe document, its stylesheets and scripts, and their static imports."""
    files = [name]
    for asset in DOCUMENT_ASSET.findall((WIDGET / name).read_text()):
        files += static_graph(asset) if asset.endswith(".js") else [asset]
    return files


def largest_locale() -> str:
    return max((p.name for p in WIDGET.glob("locales.*.js")), key=lambda n: gzipped(WIDGET / n))


def eager_files() -> list[str]:
    return static_graph("peliqan-integration.js")


def modal_files() -> list[str]:
    files = [*eager_files(), *static_graph("peliqan-modal.js"), *static_graph("peliqan-sdk.js")]
    files += [*document_files("connect.html"), largest_locale()]
    return list(dict.fromkeys(files))


def connect_files() -> list[str]:
    return list(dict.fromkeys([*modal_files(), *static_graph("connect-steps.js")]))


def sizes(files: list[str]) -> dict[str, int]:
    return {name: gzipped(WIDGET / name) for name in files}


def report() -> str:
    lines = []
    for label, files, budget in (
        ("eager", eager_files(), EAGER_BUDGET),
        ("modal", modal_files(), MODAL_BUDGET),
        ("connect", connect_files(), CONNECT_BUDGET),
    ):
        each = sizes(files)
        detail = ", ".join(f"{name} {size:,}" for name, size in each.items())
        lines.append(f"{label:>7}: {sum(each.values()):6,} B gz (budget {budget:,}) = {detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
