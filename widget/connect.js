// The connect window: runs in the iframe, on the BFF origin (docs/embed-protocol.md).
// It takes messages only from the window that embeds it, and only if that window has the origin
// named in `?parent=`; it posts only to that origin. The server checks the same origin against the
// token's partner (POST /api/embed/session) before anything is shown.
// This module boots and shows the catalogue; what follows a pick (the form, the sign-in, the choice,
// Finish setup, re-authorise) is in connect-steps.js, loaded once a connector is pointed at or picked.
import { $, BASE, LOCALE, fail, fmt, frameSession, h, parentOk, t, theme } from './frame-session.js';

const root = document.documentElement;
export const { post, api, begin, tokenArrived, session, fromParent } = frameSession('peliqan');

// This view's state.
export const view = {
  mode: 'modal',
  lastInit: null, // the parent's latest `init`
  booting: null, // the session and catalogue load of that `init`
  turn: 0, // only the latest refresh() renders
  wanted: {}, // the options of the latest `open`
  catalogue: null,
  list: [], // the catalogue, limited to availableConnectors
  pending: null, // the OAuth (or CHECKING) connection being waited for
  autofocus: false, // move focus only once the user can see us
  steps: null, // connect-steps.js, once asked for
};

export const report = (e) => post({ type: 'error', error: { code: e.code || 'error', status: e.status || 0, message: e.message } });
export const serverPath = (id, rest = '') => `/api/server/${encodeURIComponent(id)}${rest}`;
export const alertBox = () => h('div', { role: 'alert', class: 'alert', hidden: true });
export const say = (box, text) => {
  box.textContent = text || '';
  box.hidden = !text;
};
export const actions = (...buttons) => h('div', { class: 'actions' }, buttons);
export const spinner = (text) => h('p', { class: 'status', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), ' ', text);

// ---- catalogue ----

async function loadCatalogue() {
  const all = [];
  let path = `/api/servertypes?page_size=500&locale=${LOCALE}`; // connector text in the customer's language
  for (let page = 0; path && page < 20; page++) {
    const data = await api('GET', path);
    all.push(...(Array.isArray(data) ? data : data?.results || []));
    const next = !Array.isArray(data) && data?.next && new URL(data.next, location.href);
    path = next && next.origin === location.origin ? next.pathname.slice(BASE.length) + next.search : null;
  }
  return all;
}

// ---- views ----

export function show(title, nodes, { back = null, focus = null } = {}) {
  $('title').textContent = title;
  $('back').hidden = !back;
  $('back').onclick = back;
  $('view').replaceChildren(...nodes.filter(Boolean));
  if (view.autofocus) (focus || $('title')).focus();
}

export function fatal(e) {
  if (!e.reported) report(e);
  e.reported = true;
  const close = view.mode === 'modal' && h('button', { type: 'button', class: 'secondary', onclick: () => post({ type: 'close' }) }, t.close);
  show(t.title, [h('div', { role: 'alert', class: 'alert' }, e.message), close && actions(close)], { focus: close });
}

// The steps module, imported once (again after a failed load).
const steps = () => (view.steps ||= import('./connect-steps.js').catch(() => {
  view.steps = null;
  throw fail('network_error', t.errNetwork);
}));
const prefetch = () => steps().catch(() => {});

export function start(options) {
  const o = { ...view.lastInit?.options, ...options };
  const names = o.availableConnectors;
  view.list = view.catalogue.filter((s) => !names || names.includes(s.name));
  const chosen = o.selectedConnector && view.list.find((s) => s.name === o.selectedConnector);
  const step = o.reauthServerId != null ? (m) => m.reauthorise(o.reauthServerId)
    : o.serverId != null ? (m) => m.finishSetup(o.serverId)
    : chosen && ((m) => m.connectForm(chosen));
  if (!step) return showCatalogue(o.selectedConnector ? t.errNotAvailable : null);
  if (!view.steps) show(t.title, [spinner(t.loading)]);
  steps().then(step, fatal);
}

export function showCatalogue(notice) {
  const list = view.list;
  const input = h('input', { id: 'search', type: 'search', autocomplete: 'off', spellcheck: 'false' });
  const count = h('p', { class: 'count', role: 'status' });
  const items = list.map((s, i) => {
    const category = t.categories[s.category] || s.category || '';
    // Named exactly by display_name; the category is its description.
    const tile = h('button', { type: 'button', class: 'tile', 'aria-label': s.display_name, 'aria-describedby': `cat-${i}`, onclick: () => steps().then((m) => m.connectForm(s), fatal) },
      s.logo_url && h('img', { src: s.logo_url, alt: '', width: 32, height: 32 }),
      h('span', { class: 'name' }, s.display_name),
      h('span', { class: 'cat', id: `cat-${i}` }, category));
    return [h('li', null, tile), `${s.display_name} ${s.name} ${category}`.toLowerCase()];
  });
  const filter = () => {
    const q = input.value.trim().toLowerCase();
    let n = 0;
    for (const [item, text] of items) n += !(item.hidden = !!q && !text.includes(q));
    count.textContent = n === 1 ? t.countOne : n ? fmt(t.countOther, { n }) : list.length ? t.noResults : t.noConnectors;
  };
  input.addEventListener('input', filter);
  filter();
  show(t.title, [
    notice && h('div', { role: 'alert', class: 'alert' }, notice),
    h('label', { for: 'search', class: 'search-label' }, t.search),
    input,
    count,
    h('ul', { class: 'grid', onpointerover: prefetch, onfocusin: prefetch }, items.map(([item]) => item)),
  ], { focus: input });
}

// The start page in the pop-up (our origin only) takes the sign-in's nonce (DESIGN §2.3).
export function handOver(p, n = 300) {
  if (p.handedOver || p.stopped || !n) return;
  p.popup?.postMessage({ source: 'peliqan', type: 'oauth_nonce', nonce: p.nonce, keepOpener: true }, location.origin);
  setTimeout(() => handOver(p, n - 1), 200);
}

export function stop(p) {
  p.stopped = true;
  p.kick?.();
  if (view.pending === p) view.pending = null;
  try {
    p.popup?.close();
  } catch {}
}
// The user gave up on the connection being waited for (Cancel, Back, a new attempt): forget it.
export function abandon() {
  const p = view.pending;
  if (!p) return;
  stop(p);
  if (!p.existing) api('DELETE', serverPath(p.id)).catch(() => {});
}

// ---- boot and messages ----

async function refresh() {
  if (!view.lastInit) return;
  const boot = (view.booting ||= (async () => {
    await begin(view.lastInit.token);
    view.catalogue = await loadCatalogue();
  })());
  // `init` (preload) and `open` (click) both land here and await the same boot: only the latest
  // may render, or a late first render replaces the form the customer is already typing into.
  const turn = ++view.turn;
  try {
    await boot;
    if (turn !== view.turn) return;
    start(view.wanted);
  } catch (e) {
    if (view.booting === boot) view.booting = null; // the next `open` tries again
    fatal(e);
  }
}

function configure(options) {
  view.mode = options.mode === 'inline' ? 'inline' : 'modal';
  root.classList.toggle('inline', view.mode === 'inline');
  $('close').hidden = view.mode !== 'modal';
  theme(options.theme);
}

addEventListener('message', (e) => {
  const m = e.data;
  if (fromParent(e)) {
    if (m.type === 'init') {
      view.lastInit = m;
      view.booting = null;
      configure(m.options || {});
      refresh();
    } else if (m.type === 'open') {
      view.wanted = m.options || {};
      view.autofocus = true;
      refresh();
    } else if (m.type === 'token') tokenArrived(m.token);
  } else if (e.origin === location.origin && view.pending && m?.source === 'peliqan-oauth') {
    if (m.type === 'oauth_ready' && view.pending.nonce && !view.pending.handedOver && (!view.pending.popup || e.source === view.pending.popup)) {
      view.pending.popup = e.source; // a tab opened from our link asks for the nonce
      handOver(view.pending);
    } else if (view.pending.popup && e.source === view.pending.popup) {
      if (m.type === 'oauth_nonce_received') view.pending.handedOver = true;
      else if (String(m.connection_id) === String(view.pending.id)) view.pending.kick?.(); // the callback page reported: confirm by polling now
    }
  }
});
if (self.BroadcastChannel) {
  new BroadcastChannel('peliqan-oauth').onmessage = (e) => {
    if (view.pending && String(e.data?.connection_id) === String(view.pending.id)) view.pending.kick?.();
  };
}

addEventListener('pointerdown', () => (view.autofocus = true), true);
addEventListener('keydown', (e) => {
  view.autofocus = true;
  if (view.mode !== 'modal') return;
  if (e.key === 'Escape') {
    e.preventDefault();
    post({ type: 'close' });
  } else if (e.key === 'Tab') {
    // Focus trap: Tab past the last control (or Shift+Tab before the first) wraps around.
    const active = document.activeElement;
    const all = [...document.querySelectorAll('a[href], button, input, select, textarea')].filter((el) => !el.disabled && el.tabIndex >= 0 && el.getClientRects().length);
    const after = (el) => active.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING;
    const ahead = e.shiftKey ? all.filter((el) => el !== active && !after(el) && !el.contains(active)) : all.filter(after);
    if (!ahead.length && all.length) {
      e.preventDefault();
      (e.shiftKey ? all.at(-1) : all[0]).focus();
    }
  }
}, true);

new ResizeObserver(() => {
  if (view.mode === 'inline') post({ type: 'resize', height: Math.ceil(root.getBoundingClientRect().height) });
}).observe(document.body);

root.lang = LOCALE;
document.title = t.title;
$('title').textContent = t.title;
$('back-text').textContent = t.back;
$('loading').textContent = t.loading;
$('close').setAttribute('aria-label', t.close);
$('close').onclick = () => post({ type: 'close' });
if (parentOk) post({ type: 'ready' });
else fatal(fail('parent_not_allowed', t.errOrigin));
