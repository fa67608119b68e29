"""Static checks of the widget files: size budgets, CSP-safe markup, strings, types.

The widget's behaviour is tested in a real browser (e2e/test_widget.py); these checks are the
ones a browser cannot make better: bytes on the wire and contracts between files.
"""

from __future__ import annotations

import gzip
import html.parser
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BFF

WIDGET = Path(__file__).resolve().parents[1] / "widget"
LOADER = WIDGET / "peliqan-integration.js"
SDK = WIDGET / "peliqan-sdk.js"
STATUS = WIDGET / "peliqan-status.js"
CONNECT_JS = WIDGET / "connect.js"
STEPS_JS = WIDGET / "connect-steps.js"
CONNECT_CSS = WIDGET / "connect.css"
CONNECT_HTML = WIDGET / "connect.html"
MODAL = WIDGET / "peliqan-modal.js"
SESSION = WIDGET / "frame-session.js"
PANEL_JS = WIDGET / "panel.js"
DTS = WIDGET / "peliqan-integration.d.ts"
SIZES = Path(__file__).resolve().parents[1] / "bench" / "widget_sizes.py"
SDK_FUNCTIONS = {
    "syncServer",
    "getServerHealthStatus",
    "getServerSyncRunStatus",
    "reAuthoriseServer",
    "manualRefreshSaltEdge",
    "disableServer",
    "enableServer",
    "watchServer",
}


def gzipped_size(path: Path) -> int:
    # Same as `gzip -9c file | wc -c` (mtime 0 keeps it reproducible).
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def widget_sizes() -> Any:
    """bench/widget_sizes.py: what a page downloads (each file gzipped apart, static imports counted)."""
    spec = importlib.util.spec_from_file_location("widget_sizes", SIZES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_eager_loader_fits_its_gzip_budget() -> None:
    ws = widget_sizes()
    files = ws.eager_files()
    size = sum(ws.sizes(files).values())
    assert size <= ws.EAGER_BUDGET, f"{ws.sizes(files)} = {size} bytes gzipped (budget {ws.EAGER_BUDGET})"


def test_the_size_count_follows_static_imports_and_the_documents_assets() -> None:
    ws = widget_sizes()
    assert ws.static_graph("panel.js") == ["panel.js", "peliqan-status.js", "frame-session.js"]
    assert ws.document_files("connect.html") == ["connect.html", "connect.css", "connect.js", "frame-session.js"]
    assert {"peliqan-modal.js", "peliqan-sdk.js", "connect.js", "frame-session.js"} <= set(ws.modal_files())
    assert ws.largest_locale() in ws.modal_files()
    # The steps after a pick are imported lazily by connect.js: not in the modal path, in the connect flow.
    assert "connect-steps.js" not in ws.modal_files() and "connect-steps.js" in ws.connect_files()
    assert "import('./connect-steps.js')" in CONNECT_JS.read_text()


PANEL_BUDGET = (
    9216  # peliqan-panel.js + the panel iframe's files, loaded only when a panel is mounted (Pause/Resume included)
)


def test_the_panel_fits_its_budget_and_the_loader_only_imports_it_lazily() -> None:
    files = [WIDGET / "peliqan-panel.js", WIDGET / "panel.js", WIDGET / "panel.css"]
    sizes = {f.name: gzipped_size(f) for f in files}
    assert sum(sizes.values()) <= PANEL_BUDGET, sizes
    loader = LOADER.read_text()
    assert "import('./peliqan-panel.js')" in loader and not re.search(r"^import .*peliqan-panel", loader, re.M)


async def test_the_panel_document_is_served_with_the_connect_csp(bff: BFF) -> None:
    from bff.embed import CONNECT_CSP

    response = await bff.client.get("/embed/v1/panel")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONNECT_CSP.format(ancestors="'none'")  # no registered parent
    await bff.partner("panel", origins=("http://localhost:8001",))
    framed = await bff.client.get("/embed/v1/panel?parent=http%3A%2F%2Flocalhost%3A8001")
    assert "frame-ancestors http://localhost:8001;" in framed.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    for name in ("panel.js", "panel.css", "peliqan-panel.js"):
        assert (await bff.client.get(f"/embed/v1/{name}")).status_code == 200, name


@pytest.mark.parametrize("path", ["modal", "connect"])
def test_the_modal_path_and_the_whole_connect_flow_fit_their_budgets(path: str) -> None:
    ws = widget_sizes()
    sizes = ws.sizes(getattr(ws, f"{path}_files")())
    budget = getattr(ws, f"{path.upper()}_BUDGET")
    assert sum(sizes.values()) <= budget, f"{sizes} = {sum(sizes.values())} bytes gzipped (budget {budget})"


@pytest.mark.parametrize("path", [LOADER, MODAL, SDK, CONNECT_JS, STEPS_JS, SESSION, PANEL_JS], ids=lambda p: p.name)
def test_no_message_is_posted_to_any_origin(path: Path) -> None:
    source = path.read_text()
    assert not re.search(r"""postMessage\([^;]*,\s*['"`]\*['"`]\s*\)""", source)


@pytest.mark.parametrize("path", [MODAL, CONNECT_JS], ids=lambda p: p.name)
def test_message_listeners_check_origin_and_source(path: Path) -> None:
    source = path.read_text()
    assert source.count("addEventListener('message'") == 1
    assert re.search(r"e\.origin\s*[!=]==?\s*[\w.]+", source)
    assert re.search(r"e\.source\s*[!=]==?\s*[\w.]+", source)


def test_iframe_url_carries_only_parent_and_locale() -> None:
    source = MODAL.read_text()
    urls = re.findall(r"/embed/v1/connect\?([^`]*)`", source)
    assert urls, "the loader builds the iframe URL"
    for query in urls:
        assert re.findall(r"(\w+)=", query) == ["parent", "locale"]


class _MarkupAudit(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.lang: str | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("inline <script>")
        if "style" in names:
            self.problems.append(f"style attribute on <{tag}>")
        self.problems += [f"inline handler {n} on <{tag}>" for n in names if n.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("script content")


def test_connect_document_runs_under_a_strict_csp() -> None:
    audit = _MarkupAudit()
    audit.feed(CONNECT_HTML.read_text())
    assert audit.problems == []
    assert audit.lang  # replaced by the locale at runtime, but never missing


def test_connect_ui_sets_no_style_attributes() -> None:
    # style-src 'self' blocks style attributes; CSSOM (element.style.x = …, setProperty) is fine.
    for path in (CONNECT_JS, STEPS_JS, LOADER):
        source = path.read_text()
        assert "setAttribute('style'" not in source and 'setAttribute("style"' not in source
        assert ".innerHTML" not in source and "insertAdjacentHTML" not in source


def read_table(path: Path) -> dict[str, object]:
    source = path.read_text()
    table: dict[str, object] = json.loads(source[source.index("\nexport default ") + 16 :].strip().rstrip(";"))
    return table


def load_locales(only_shared: bool = False) -> dict[str, dict[str, object]]:
    """The UI strings by locale: widget/locales.<xx>.js (the shared table, all the connect window
    loads) with the panel's own widget/panel-locales.<xx>.js, which never repeats a shared key."""
    tables = {}
    for path in sorted(WIDGET.glob("locales.*.js")):
        locale = path.name.split(".")[1]
        shared = read_table(path)
        panel = {} if only_shared else read_table(WIDGET / f"panel-locales.{locale}.js")
        assert not set(shared) & set(panel), f"{locale}: in both tables: {set(shared) & set(panel)}"
        tables[locale] = {**shared, **panel}
    return tables


def flatten(table: dict[str, object], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            assert isinstance(value, str) and value.strip(), f"{prefix}{key} is empty"
            out[f"{prefix}{key}"] = value
    return out


def test_every_locale_has_every_string_with_the_same_placeholders() -> None:
    tables = {locale: flatten(strings) for locale, strings in load_locales().items()}
    assert set(tables) == {"en", "nl", "fr", "de"}
    english = tables["en"]
    for locale, strings in tables.items():
        assert set(strings) == set(english), f"{locale}: {set(strings) ^ set(english)}"
        for key, text in strings.items():
            assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", english[key])), f"{locale}.{key}"


def test_the_contract_names_are_the_english_strings() -> None:
    english = load_locales()["en"]
    assert english["title"] == "Add connection"
    assert english["search"] == "Search connectors"
    assert english["connect"] == "Connect"


@pytest.mark.parametrize("path", [CONNECT_JS, STEPS_JS, PANEL_JS, SESSION], ids=lambda p: p.name)
def test_the_frames_use_only_strings_that_exist(path: Path) -> None:
    source = path.read_text()
    english = load_locales(only_shared=path != PANEL_JS)["en"]  # the connect window has the shared table only
    used = set(re.findall(r"\bt\.(\w+)", source))
    used |= set(re.findall(r"'(err[A-Z]\w*)'", source))  # the MESSAGES table names keys as strings
    assert used, f"{path.name} reads its strings from the locale table"
    assert used <= set(english), used - set(english)


@pytest.mark.parametrize(
    ("path", "key"), [(MODAL, "title"), (WIDGET / "peliqan-panel.js", "panelTitle")], ids=["modal", "panel"]
)
def test_the_iframe_titles_inlined_on_the_partner_page_match_the_locale_tables(path: Path, key: str) -> None:
    titles = dict(re.findall(r"(\w\w): '([^']+)'", re.search(r"const TITLES = \{([^}]*)\}", path.read_text()).group(1)))
    assert titles == {locale: strings[key] for locale, strings in load_locales().items()}


def test_connect_and_panel_share_one_session_module() -> None:
    for path in (CONNECT_JS, PANEL_JS):
        source = path.read_text()
        assert "from './frame-session.js'" in source, path.name
        # the token and session code lives in frame-session.js only
        for twin in (
            "async function http(",
            "function askToken(",
            "'/api/embed/session'",
            "function h(",
            "parentOk = (",
        ):
            assert twin not in source, (path.name, twin)
        assert not re.search(r"^let ", source, re.M), f"{path.name}: state belongs in its view object"
        assert "if (!fromParent(e)) return;" in source or "if (fromParent(e)) {" in source, path.name
    session = SESSION.read_text()
    assert "e.origin === PARENT && e.source === parent && parentOk" in session
    # one translation rule for every token_* code (connect.js once knew four, panel.js all)
    assert "/^token_/.test(code) ? 'errExpired'" in session


def dts_interface(name: str) -> set[str]:
    body = re.search(rf"interface {name}\b[^{{]*\{{(.*?)\n\}}", DTS.read_text(), re.S)
    assert body, f"interface {name} in the .d.ts"
    return set(re.findall(r"^\s*(\w+)\??:", body.group(1), re.M))


def test_types_cover_every_export_option_and_theme_key() -> None:
    loader = LOADER.read_text()
    dts = DTS.read_text()
    exports = set(re.findall(r"export (?:const|function|class|async function) (\w+)", loader))
    exports |= set(re.findall(r"export const \[([^\]]+)\]", loader))
    exports |= {n.strip() for group in re.findall(r"export \{([^}]+)\}", loader) for n in group.split(",")}
    assert exports >= SDK_FUNCTIONS | {"initialize", "PeliqanError", "mountConnections"}
    for name in exports:
        assert re.search(rf"export (?:declare )?(?:function|class|const) {name}\b", dts), name
    spec = re.search(r"const SPEC = \{(.*?)\n\};", loader, re.S).group(1)
    options = set(re.findall(r"^\s*(\w+):", spec, re.M)) | set(re.findall(r"(\w+): fn", spec))
    assert options - {"reauthServerId", "serverId"} == dts_interface("InitializeOptions")
    assert {"reauthServerId", "serverId"} <= dts_interface("OpenOptions")
    theme = set(re.search(r"const THEME = '([^']+)'", loader).group(1).split())
    assert theme == dts_interface("Theme")


def test_every_theme_key_is_a_custom_property_of_the_connect_css() -> None:
    theme = re.search(r"const THEME = '([^']+)'", LOADER.read_text()).group(1).split()
    css = CONNECT_CSS.read_text()
    for key in theme:
        prop = "--pq-" + re.sub(r"[A-Z]", lambda m: "-" + m.group(0).lower(), key)
        assert re.search(rf"{prop}\s*:", css), f"{key} → {prop} is not defined in connect.css"
        assert f"var({prop})" in css, f"{prop} is never used"


NODE = shutil.which("node")


def run_module_script(script: str, module: Path) -> Any:
    """Run ``script`` in node with ``module``'s URL as its argument; what it printed, as JSON."""
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", script, module.as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


SSR_SCRIPT = """
const m = await import(process.argv[1]);
const out = {exports: Object.keys(m).sort(), hasWindow: typeof window !== 'undefined'};
try { m.initialize({integrationToken: 'x'}); } catch (e) { out.initialize = [e.name, e.code]; }
out.sync = await m.syncServer({serverId: 1}).then(() => 'resolved', (e) => [e.name, e.code, e.status]);
try { m.watchServer({identityToken: 't', serverId: 1, onChange: 5}); } catch (e) { out.watch = [e.name, e.code]; }
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="needs node to import the module without a window")
def test_loader_imports_where_there_is_no_window() -> None:
    out = run_module_script(SSR_SCRIPT, LOADER)
    assert out["hasWindow"] is False
    assert set(out["exports"]) == SDK_FUNCTIONS | {"initialize", "PeliqanError", "default", "mountConnections"}
    assert out["initialize"] == ["PeliqanError", "no_window"]
    assert out["sync"] == ["PeliqanError", "invalid_argument", 0]
    assert out["watch"] == ["PeliqanError", "invalid_argument"]


async def test_the_bff_serves_the_widget_files_and_nothing_else_from_embed(bff: BFF) -> None:
    served = {
        "peliqan-integration.js": "text/javascript",
        "peliqan-sdk.js": "text/javascript",
        "connect.js": "text/javascript",
        "connect.css": "text/css",
        "peliqan-integration.d.ts": "application/typescript",
    }
    for name, content_type in served.items():
        response = await bff.client.get(f"/embed/v1/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(content_type), name
        assert response.content == (WIDGET / name).read_bytes(), name
        assert response.headers["x-content-type-options"] == "nosniff"
    for name in ("../pyproject.toml", "..%2Fpyproject.toml", "locales.json", "connect.html.bak", "x.ts", ".d.ts"):
        response = await bff.client.get(f"/embed/v1/{name}")
        assert response.status_code == 404, name
        assert response.json()["code"] == "not_found"


async def test_the_source_documents_script_path_v1_3_serves_the_same_loader(bff: BFF) -> None:
    _, partner_token = await bff.partner("v13", origins=("http://localhost:8001",))
    for name in ("peliqan-integration.js", "peliqan-sdk.js", "peliqan-status.js"):
        old, new = (
            await bff.client.get(f"/embed/v1/{name}"),
            await bff.client.get(f"/embed/v1.3/{name}", headers={"Origin": "http://localhost:8001"}),
        )
        assert new.status_code == 200 and new.content == old.content, name
        assert new.headers["content-type"].startswith("text/javascript")
        assert new.headers.get_list("access-control-allow-origin") == ["*"], name  # once: "*, *" breaks the module
    missing = await bff.client.get("/embed/v1.3/nope.js")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_the_bff_has_a_favicon(bff: BFF) -> None:
    response = await bff.client.get("/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/x-icon"
    assert response.content[:4] == b"\0\0\1\0"  # an ICO header


DESCRIBE_SCRIPT = """
const m = await import(process.argv[1]);
const d = (s, l) => { const r = m.describeHealth(s, l); return [r.label, r.tone]; };
console.log(JSON.stringify({
  healthy: d('HEALTHY'), error: d('ERROR'), config: d('CONFIG_SELECT'), authorizing: d('AUTHORIZING', 'en'),
  syncing: d({health_status: 'HEALTHY', running: true}), nlError: d('ERROR', 'nl'), deOk: d('OK', 'de-AT'),
  frUnknown: d('WHATEVER', 'fr'), missing: d(undefined), fallback: d('HEALTHY', 'es'),
  ago: m.formatRelativeTime(Date.UTC(2026, 0, 1, 11, 58), 'en', Date.UTC(2026, 0, 1, 12, 0)),
  nlAgo: m.formatRelativeTime(new Date(Date.UTC(2026, 0, 1, 9)).toISOString(), 'nl', Date.UTC(2026, 0, 1, 12)),
  later: m.formatRelativeTime(Date.UTC(2026, 0, 3), 'de', Date.UTC(2026, 0, 1)),
  bad: m.formatRelativeTime('not a date'),
}));
"""


@pytest.mark.skipif(NODE is None, reason="needs node to import the module without a window")
def test_describe_health_and_relative_times() -> None:
    out = run_module_script(DESCRIBE_SCRIPT, STATUS)
    assert out["healthy"] == ["Healthy", "success"]
    assert out["error"] == ["Needs your attention", "danger"]
    assert out["config"] == out["authorizing"] == ["Finish setup", "warning"]
    assert out["syncing"] == ["Syncing…", "info"]
    assert out["nlError"] == ["Vraagt je aandacht", "danger"]
    assert out["deOk"] == ["Verbunden", "success"]
    assert out["frUnknown"] == ["WHATEVER", "neutral"]
    assert out["missing"] == ["Unknown", "neutral"]
    assert out["fallback"] == ["Healthy", "success"]
    assert out["ago"] == "2 minutes ago"
    assert out["nlAgo"] == "3 uur geleden"
    assert out["later"] == "übermorgen"
    assert out["bad"] == ""


def test_every_locale_describes_every_state() -> None:
    source = (WIDGET / "peliqan-status.js").read_text()
    tables = re.findall(r"^  (\w\w): \{(.*?)^  \},", source, re.S | re.M)
    assert [locale for locale, _ in tables] == ["en", "nl", "fr", "de"]
    keys = [set(re.findall(r"(\w+): '", body)) for _, body in tables]
    tones = set(re.findall(r"(\w+): '", re.search(r"const TONES = \{(.*?)\};", source, re.S).group(1)))
    assert all(k == keys[0] for k in keys) and keys[0] == tones | {"UNKNOWN"}


TIME_SCRIPT = """
globalThis.document = { createElement: (tag) => ({ tag, dateTime: '', title: '', textContent: '' }) };
const m = await import(process.argv[1]);
const shown = (w) => { const el = m.timeElement(w, 'en', Date.UTC(2026, 0, 1, 12, 0)); return [el.tag, el.dateTime, el.textContent]; };
console.log(JSON.stringify({ none: shown(null), undef: shown(undefined), empty: shown(''),
  done: shown('2026-01-01T11:58:00Z') }));
"""


@pytest.mark.skipif(NODE is None, reason="needs node to import the module without a window")
def test_time_element_of_a_run_not_finished_is_empty() -> None:
    """``timeElement(run.finished_at)`` with ``null`` (still running): no "56 years ago" (1970)."""
    out = run_module_script(TIME_SCRIPT, STATUS)
    assert out["none"] == out["undef"] == out["empty"] == ["time", "", ""]
    assert out["done"] == ["time", "2026-01-01T11:58:00.000Z", "2 minutes ago"]
