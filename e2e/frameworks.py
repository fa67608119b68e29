"""React 18 and Vue 3 host pages for the widget, served by the partner site (e2e/stack.py).

The frameworks' own builds come from the npm registry (`.ci/npm-fixtures`, never committed): React's
development UMD builds (StrictMode mounts, unmounts and mounts every effect again) and Vue's global
build. The pages use the widget exactly as the README's React and Vue sections show it, plus the
naive variant (`?naive=1`: an effect without cleanup), and a hash router with three routes:
`#/connect` (the trigger), `#/panel` (mountConnections) and `#/other`.
"""

from __future__ import annotations

import os
from pathlib import Path

FILES = ("react.development.js", "react-dom.development.js", "vue.global.js")


def fixtures_dir() -> Path:
    """Where `.ci/npm-fixtures` put the builds (`BFF_NPM_FIXTURES`, else its default cache)."""
    configured = os.environ.get("BFF_NPM_FIXTURES")
    if configured is not None:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bff-npm-fixtures"


def fixtures_present() -> bool:
    return all((fixtures_dir() / name).is_file() for name in FILES)


# Shared by both pages: what the host app's callbacks saw, and the options the README passes.
COMMON = """
  window.seen = {connected: [], errors: [], instances: 0, panels: 0, changes: []};
  const cfg = JSON.parse(document.getElementById('cfg').textContent);
  window.cfg = cfg;
  const Peliqan = await import(cfg.bff + '/embed/v1/peliqan-integration.js');
  window.PeliqanModule = Peliqan;
  const options = () => ({
    integrationToken: cfg.token,
    onConnected: (data) => window.seen.connected.push(data),
    onError: (e) => window.seen.errors.push(e.code),
  });
  const route = () => location.hash.slice(1) || '/connect';
"""

REACT_APP = """
  const { createElement: e, useEffect, useRef, useState, StrictMode } = React;
  function ConnectButton() {
    const button = useRef(null);
    useEffect(() => {
      const widget = Peliqan.initialize({ ...options(), button: button.current });
      window.seen.instances++;
      if (cfg.naive) return; // the README snippet pasted into an effect, without its cleanup
      return () => widget.destroy();
    }, []);
    return e('button', { ref: button, type: 'button' }, 'Add connection');
  }
  function Connections() {
    const slot = useRef(null);
    useEffect(() => {
      const panel = Peliqan.mountConnections(slot.current, { integrationToken: cfg.token, onChange: (c) => window.seen.changes.push(c.type) });
      window.seen.panels++;
      return () => panel.destroy();
    }, []);
    return e('div', { ref: slot, id: 'panel-slot' });
  }
  function App() {
    const [path, setPath] = useState(route());
    useEffect(() => {
      const onHash = () => setPath(route());
      addEventListener('hashchange', onHash);
      return () => removeEventListener('hashchange', onHash);
    }, []);
    const page = path === '/connect' ? e(ConnectButton) : path === '/panel' ? e(Connections) : e('p', null, 'Another page');
    return e('div', null,
      e('nav', null, e('a', { href: '#/connect' }, 'Connect'), ' ', e('a', { href: '#/panel' }, 'Connections'), ' ', e('a', { href: '#/other' }, 'Other')),
      e('main', null, page));
  }
  ReactDOM.createRoot(document.getElementById('app')).render(e(StrictMode, null, e(App)));
"""

VUE_APP = """
  const { createApp, h, ref, onMounted, onBeforeUnmount, defineComponent } = Vue;
  const ConnectButton = defineComponent({
    setup() {
      const button = ref(null);
      let widget;
      onMounted(() => {
        widget = Peliqan.initialize({ ...options(), button: button.value });
        window.seen.instances++;
      });
      onBeforeUnmount(() => { if (!cfg.naive) widget.destroy(); });
      return () => h('button', { ref: button, type: 'button' }, 'Add connection');
    },
  });
  const Connections = defineComponent({
    setup() {
      const slot = ref(null);
      let panel;
      onMounted(() => {
        panel = Peliqan.mountConnections(slot.value, { integrationToken: cfg.token, onChange: (c) => window.seen.changes.push(c.type) });
        window.seen.panels++;
      });
      onBeforeUnmount(() => panel.destroy());
      return () => h('div', { ref: slot, id: 'panel-slot' });
    },
  });
  const App = defineComponent({
    setup() {
      const path = ref(route());
      const onHash = () => { path.value = route(); };
      onMounted(() => addEventListener('hashchange', onHash));
      onBeforeUnmount(() => removeEventListener('hashchange', onHash));
      return () => h('div', null, [
        h('nav', null, [h('a', { href: '#/connect' }, 'Connect'), ' ', h('a', { href: '#/panel' }, 'Connections'), ' ', h('a', { href: '#/other' }, 'Other')]),
        h('main', null, [path.value === '/connect' ? h(ConnectButton) : path.value === '/panel' ? h(Connections) : h('p', null, 'Another page')]),
      ]);
    },
  });
  createApp(App).mount('#app');
"""

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
{scripts}
</head>
<body>
<header><h1>{title}</h1></header>
<div id="app"></div>
<footer><p>Footer of the host page</p></footer>
<script type="application/json" id="cfg">{config}</script>
<script type="module" nonce="{nonce}">
{common}
{app}
  window.appReady = true;
</script>
</body>
</html>
"""


def host_page(framework: str, *, nonce: str, config: str) -> str:
    if framework == "react":
        names, title, app = ("react.development.js", "react-dom.development.js"), "React host", REACT_APP
    else:
        names, title, app = ("vue.global.js",), "Vue host", VUE_APP
    scripts = "\n".join(f'<script src="/npm/{name}" nonce="{nonce}"></script>' for name in names)
    return PAGE.format(title=title, scripts=scripts, nonce=nonce, config=config, common=COMMON, app=app)
