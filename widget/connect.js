// The connect window: runs in the iframe, on the BFF origin (docs/embed-protocol.md).
// It takes messages only from the window that embeds it, and only if that window has the origin
// named in `?parent=`; it posts only to that origin. The server checks the same origin against the
// token's partner (POST /api/embed/session) before anything is shown.
import { $, LOCALE, fail, fmt, frameSession, h, parentOk, t, theme } from './frame-session.js';

const WAITING = new Set(['AUTHORIZING', 'RE_AUTHORISING', 'CHECKING']);
const FAILED = new Set(['ERROR', 'DISABLED']);
const POPUP_GRACE_MS = 5e3; // popup.closed lies under COOP: keep polling this long before believing it
const OAUTH_GIVE_UP_MS = 15 * 60e3;
const INPUT_TYPES = new Set(['text', 'email', 'url', 'number', 'password']);
const root = document.documentElement;
const enc = encodeURIComponent;
const { post, api, begin, tokenArrived, session, fromParent } = frameSession('peliqan');

// This view's state.
const view = {
  mode: 'modal',
  lastInit: null, // the parent's latest `init`
  booting: null, // the session and catalogue load of that `init`
  turn: 0, // only the latest refresh() renders
  wanted: {}, // the options of the latest `open`
  catalogue: null,
  list: [], // the catalogue, limited to availableConnectors
  pending: null, // the OAuth (or CHECKING) connection being waited for
  autofocus: false, // move focus only once the user can see us
};

const report = (e) => post({ type: 'error', error: { code: e.code || 'error', status: e.status || 0, message: e.message } });
const serverPath = (id, rest = '') => `/api/server/${enc(id)}${rest}`;
const alertBox = () => h('div', { role: 'alert', class: 'alert', hidden: true });
const say = (box, text) => {
  box.textContent = text || '';
  box.hidden = !text;
};
const actions = (...buttons) => h('div', { class: 'actions' }, buttons);
const spinner = (text) => h('p', { class: 'status', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), ' ', text);

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

function show(title, nodes, { back = null, focus = null } = {}) {
  $('title').textContent = title;
  $('back').hidden = !back;
  $('back').onclick = back;
  $('view').replaceChildren(...nodes.filter(Boolean));
  if (view.autofocus) (focus || $('title')).focus();
}

function fatal(e) {
  if (!e.reported) report(e);
  e.reported = true;
  const close = view.mode === 'modal' && h('button', { type: 'button', class: 'secondary', onclick: () => post({ type: 'close' }) }, t.close);
  show(t.title, [h('div', { role: 'alert', class: 'alert' }, e.message), close && actions(close)], { focus: close });
}

function start(options) {
  const o = { ...view.lastInit?.options, ...options };
  const names = o.availableConnectors;
  view.list = view.catalogue.filter((s) => !names || names.includes(s.name));
  if (o.reauthServerId != null) return reauthorise(o.reauthServerId);
  if (o.serverId != null) return finishSetup(o.serverId);
  const chosen = o.selectedConnector && view.list.find((s) => s.name === o.selectedConnector);
  if (chosen) return connectForm(chosen);
  showCatalogue(o.selectedConnector ? t.errNotAvailable : null);
}

function showCatalogue(notice) {
  const list = view.list;
  const input = h('input', { id: 'search', type: 'search', autocomplete: 'off', spellcheck: 'false' });
  const count = h('p', { class: 'count', role: 'status' });
  const items = list.map((s, i) => {
    const category = t.categories[s.category] || s.category || '';
    // Named exactly by display_name; the category is its description.
    const tile = h('button', { type: 'button', class: 'tile', 'aria-label': s.display_name, 'aria-describedby': `cat-${i}`, onclick: () => connectForm(s) },
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
    h('ul', { class: 'grid' }, items.map(([item]) => item)),
  ], { focus: input });
}

function fieldRow(f) {
  const id = `f-${f.name}`;
  const helpId = f.help ? `${id}-help` : null;
  const errorId = `${id}-error`;
  const common = { id, name: f.name, required: !!f.required, 'aria-describedby': helpId };
  const options = f.options || [];
  let input;
  if (f.type === 'select' || options.length) {
    input = h('select', common, !f.required && h('option', { value: '' }, ''),
      options.map((o) => h('option', { value: String(o.value ?? o) }, String(o.label ?? o))));
  } else if (f.type === 'textarea') input = h('textarea', common);
  else {
    const type = f.secret ? 'password' : INPUT_TYPES.has(f.type) ? f.type : 'text';
    input = h('input', { ...common, type, autocomplete: 'off', spellcheck: 'false' });
  }
  const error = h('p', { class: 'field-error', id: errorId, hidden: true });
  const row = h('div', { class: 'field' },
    h('label', { for: id }, f.label),
    f.required && h('span', { class: 'req', 'aria-hidden': 'true' }, '*'),
    input,
    f.help && h('p', { class: 'help', id: helpId }, f.help),
    error);
  const setError = (message) => {
    say(error, message);
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
    const ids = [helpId, message && errorId].filter(Boolean).join(' ');
    if (ids) input.setAttribute('aria-describedby', ids);
    else input.removeAttribute('aria-describedby');
  };
  const value = () => {
    const v = f.secret ? input.value : input.value.trim();
    return f.type === 'number' && v ? Number(v) : v;
  };
  return { f, input, row, setError, value };
}

// The connect form of `st`; with `existing` (a connection), its re-authorisation form, or with
// `finishing`, the sign-in that completes a connection left in AUTHORIZING.
function connectForm(st, existing = null, finishing = false) {
  const oauth = st.auth_type === 'oauth2';
  if (!existing) post({ type: 'event', event: { type: 'connector_selected', connector: st.name, servertype_id: st.id } });
  const rows = (st.connect_form?.fields || []).map(fieldRow);
  const alert = alertBox();
  const wait = h('div', { class: 'wait', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary' }, t.connect);
  const intro = finishing ? t.finishOauth : existing ? (oauth ? t.reauthOauth : t.reauthForm) : oauth ? t.oauthIntro : null;
  const form = h('form', { novalidate: true, onsubmit: (e) => { e.preventDefault(); onSubmit(); } },
    alert,
    intro && h('p', { class: 'intro' }, fmt(intro, { name: st.display_name })),
    rows.some((r) => r.f.required) && h('p', { class: 'note' }, t.requiredNote),
    rows.map((r) => r.row),
    wait,
    actions(submit));
  const title = fmt(finishing ? t.finishTitle : existing ? t.reauthTitle : t.connectTitle, { name: st.display_name });
  const back = !existing && view.list.length > 1 ? () => { abandon(); showCatalogue(); } : null;
  const render = () => show(title, [form], { back, focus: rows[0]?.input || submit });
  let busy = false;

  const setBusy = (on) => {
    busy = on;
    submit.setAttribute('aria-disabled', String(on));
    submit.textContent = on ? t.connecting : t.connect;
    form.setAttribute('aria-busy', String(on));
    if (!on) wait.hidden = true;
  };
  const showErrors = (e, fromServer = true) => {
    const errors = e.errors || {};
    let first = null;
    for (const r of rows) {
      r.setError(errors[r.f.name]);
      first ||= errors[r.f.name] ? r.input : null;
    }
    const stray = Object.keys(errors).filter((k) => !rows.some((r) => r.f.name === k)).map((k) => errors[k]);
    say(alert, [first ? t.errFix : e.message, ...stray].join(' '));
    if (fromServer) report(e);
    first?.focus();
  };
  // Flows that end badly come back here, with the form as the user left it.
  const ctx = {
    st,
    existing,
    finishing,
    fail(e) {
      if (!form.isConnected) render();
      setBusy(false);
      showErrors(e);
    },
    closedEarly() {
      setBusy(false);
      say(alert, t.popupClosed);
    },
  };

  function onSubmit() {
    if (busy) return;
    say(alert, '');
    const values = {};
    const missing = {};
    for (const r of rows) {
      const v = r.value();
      r.setError(null);
      if (v !== '') values[r.f.name] = v;
      else if (r.f.required) missing[r.f.name] = t.errRequired;
    }
    if (Object.keys(missing).length) return showErrors({ errors: missing }, false);
    abandon(); // an earlier attempt still waiting in the background (its pop-up is reused below)
    // Opened now, inside the click: after an await the pop-up blocker would refuse it.
    const popup = oauth ? openPopup() : null;
    setBusy(true);
    // oauth_strict: the start page goes on only with the nonce this window hands over (handOver).
    const body = existing ? values : { servertype_id: st.id, ...values, ...(oauth && { oauth_strict: true }) };
    const path = existing ? serverPath(existing.id, '/reauthorise') : '/api/servers';
    (async () => {
      const r = await api('POST', path, oauth && existing ? { oauth_strict: true } : body);
      if (!oauth) return track(r, ctx);
      const url = existing ? r?.auth_uri : r?.oauth_url;
      const id = existing ? existing.id : r?.id;
      const nonce = r?.oauth_nonce;
      if (!/^https?:\/\//i.test(url || '') || id == null || !nonce) throw fail('bad_response', t.errGeneric);
      let opened = false;
      try {
        popup.location.href = url;
        opened = true;
      } catch {
        // blocked (null) or unusable: offer a link instead, and keep polling
      }
      const p = { ...ctx, id, nonce, popup: opened ? popup : null };
      waitFor(url, !opened);
      follow(p);
      if (opened) handOver(p);
    })().catch((e) => {
      try {
        popup?.close();
      } catch {}
      ctx.fail(e);
    });
  }

  function waitFor(url, blocked) {
    const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => { abandon(); setBusy(false); submit.focus(); } }, t.cancel);
    // rel=opener: the start page in that tab asks this window for the flow's one-time nonce.
    const link = blocked && h('a', { href: url, target: '_blank', rel: 'opener' }, t.continueTab);
    // replaceChildren() prints `false` as text: leave the optional parts out instead.
    wait.replaceChildren(...[
      blocked && h('p', { role: 'alert' }, t.popupBlocked),
      link && h('p', null, link),
      spinner(fmt(t.oauthWaiting, { name: st.display_name })),
      h('p', null, cancel),
    ].filter(Boolean));
    wait.hidden = false;
    if (link) link.focus();
  }

  render();
}

function openPopup() {
  const w = 520;
  const hgt = 680;
  const left = Math.max(0, screenX + (outerWidth - w) / 2);
  const top = Math.max(0, screenY + (outerHeight - hgt) / 2);
  const popup = window.open('', 'peliqan-oauth', `popup,width=${w},height=${hgt},left=${left | 0},top=${top | 0}`);
  try {
    popup.document.title = t.loading;
    popup.document.body.textContent = t.loading;
  } catch {
    // null (blocked) or a window left on another origin by an earlier attempt
  }
  return popup;
}

// The start page in the pop-up (our origin only) takes the sign-in's nonce (DESIGN §2.3).
function handOver(p, n = 300) {
  if (p.handedOver || p.stopped || !n) return;
  p.popup?.postMessage({ source: 'peliqan', type: 'oauth_nonce', nonce: p.nonce, keepOpener: true }, location.origin);
  setTimeout(() => handOver(p, n - 1), 200);
}

// Follows a connection until it needs the user (CONFIG_SELECT), is usable, or has failed.
function track(conn, ctx) {
  const status = conn?.health_status;
  if (WAITING.has(status)) return follow({ ...ctx, id: conn.id, popup: null });
  if (status === 'CONFIG_SELECT') return configStep(conn, ctx);
  if (!conn || FAILED.has(status)) {
    if (conn && !ctx.existing) api('DELETE', serverPath(conn.id)).catch(() => {});
    return ctx.fail(fail('connection_failed', conn?.detail || t.errGeneric));
  }
  success(conn);
}

// Polls GET /api/server/{id}, the source of truth; the callback's message or broadcast only
// makes it poll sooner.
async function follow(p) {
  view.pending = p;
  const giveUp = Date.now() + OAUTH_GIVE_UP_MS;
  let closedAt = 0;
  let background = false;
  while (!p.stopped) {
    let conn = null;
    try {
      conn = await api('GET', serverPath(p.id));
    } catch (e) {
      if ([401, 403, 404].includes(e.status)) return stop(p), p.fail(e);
    }
    if (p.stopped) return;
    if (conn && !WAITING.has(conn.health_status)) return stop(p), track(conn, p);
    if (Date.now() > giveUp) return abandon(), p.fail(fail('timeout', t.errTimeout));
    let closed = false;
    try {
      closed = !!p.popup?.closed;
    } catch {}
    if (!closed) closedAt = 0;
    else if (!closedAt) closedAt = Date.now();
    else if (!background && Date.now() - closedAt >= POPUP_GRACE_MS) {
      background = true; // back to the form, but a late completion still wins
      p.closedEarly();
    }
    await new Promise((resolve) => {
      p.kick = resolve;
      setTimeout(resolve, background ? 3e3 : 1e3);
    });
  }
}
function stop(p) {
  p.stopped = true;
  p.kick?.();
  if (view.pending === p) view.pending = null;
  try {
    p.popup?.close();
  } catch {}
}
// The user gave up on the connection being waited for (Cancel, Back, a new attempt): forget it.
function abandon() {
  const p = view.pending;
  if (!p) return;
  stop(p);
  if (!p.existing) api('DELETE', serverPath(p.id)).catch(() => {});
}

async function configStep(conn, ctx) {
  const retry = () => configStep(conn, ctx);
  let step;
  try {
    step = await api('GET', serverPath(conn.id, `/config-options?locale=${LOCALE}`));
  } catch (e) {
    report(e);
    const again = h('button', { type: 'button', class: 'primary', onclick: retry }, t.retry);
    return show(stepTitle(ctx), [h('div', { role: 'alert', class: 'alert' }, e.message), actions(again)], { focus: again });
  }
  const options = step.options || [];
  const type = step.multiple ? 'checkbox' : 'radio';
  const saved = new Set((step.selected || []).map(String)); // a saved choice is kept, never asked again from scratch
  const inputs = options.map((o, i) => h('input', { type, id: `choice-${i}`, name: 'choice', value: String(i), checked: saved.has(String(o.value)) }));
  const alert = alertBox();
  const submit = h('button', { type: 'submit', class: 'primary' }, t.continue);
  let busy = false;
  const onSubmit = async (e) => {
    e.preventDefault();
    if (busy) return;
    const chosen = inputs.filter((i) => i.checked).map((i) => options[Number(i.value)].value);
    if (!chosen.length) {
      say(alert, t.errChoose);
      return inputs[0]?.focus();
    }
    busy = true;
    submit.setAttribute('aria-disabled', 'true');
    say(alert, '');
    try {
      const r = await api('POST', serverPath(conn.id, '/config'), { [step.field]: chosen });
      track(r?.health_status ? r : await api('GET', serverPath(conn.id)), ctx);
    } catch (err) {
      say(alert, err.message);
      report(err);
    } finally {
      busy = false;
      submit.removeAttribute('aria-disabled');
    }
  };
  const help = [step.help, step.multiple ? t.chooseSome : t.chooseOne].filter(Boolean).join(' ');
  const form = h('form', { novalidate: true, onsubmit: onSubmit },
    alert,
    h('fieldset', { 'aria-describedby': 'choice-help' },
      h('legend', null, step.label),
      h('p', { class: 'help', id: 'choice-help' }, help),
      options.map((o, i) => h('div', { class: 'choice' }, inputs[i], h('label', { for: `choice-${i}` }, String(o.label))))),
    actions(submit));
  show(stepTitle(ctx), [form], { focus: inputs[0] || submit });
}

const stepTitle = (ctx) => fmt(ctx.finishing ? t.finishTitle : ctx.existing ? t.reauthTitle : t.connectTitle, { name: ctx.st.display_name });

function success(conn, announce = true) {
  const data = {};
  for (const k of ['id', 'name', 'servertype_id', 'connector', 'health_status']) data[k] = conn[k] ?? null;
  for (const k of ['account_id', 'external_id']) data[k] = conn[k] ?? session()?.[k] ?? null;
  if (announce) post({ type: 'connected', data });
  const done = h('button', {
    type: 'button',
    class: 'primary',
    onclick: () => {
      post({ type: 'close' });
      if (view.mode === 'inline') start(view.wanted);
    },
  }, t.done);
  show(t.connectedTitle, [h('p', { class: 'success' }, fmt(t.connectedText, { name: conn.name || '' })), actions(done)]);
}

async function connection(id) {
  show(t.title, [spinner(t.loading)]);
  const conn = await api('GET', serverPath(id));
  const st = view.catalogue.find((s) => String(s.id) === String(conn.servertype_id) || s.name === conn.connector);
  if (!st) throw fail('unknown_connector', t.errNotAvailable);
  return [conn, st];
}

async function reauthorise(id) {
  try {
    const [conn, st] = await connection(id);
    connectForm(st, conn);
  } catch (e) {
    fatal(e);
  }
}

// "Finish setup": a connection left half-way (sign-in window or modal closed) resumes at its
// pending step: the sign-in (AUTHORIZING) or the choice (CONFIG_SELECT). Anything else is set up.
async function finishSetup(id) {
  try {
    const [conn, st] = await connection(id);
    const status = conn.health_status;
    if (status === 'AUTHORIZING' || status === 'RE_AUTHORISING') return connectForm(st, conn, status === 'AUTHORIZING');
    if (status === 'CONFIG_SELECT') return configStep(conn, { st, existing: conn, finishing: true, fail: fatal });
    success(conn, false);
  } catch (e) {
    fatal(e);
  }
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
