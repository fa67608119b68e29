// "Your connections" panel: runs in an iframe on the BFF origin, mounted by Peliqan.mountConnections()
// (peliqan-panel.js on the partner page). Same rules as the connect window (docs/embed-protocol.md):
// messages only from the embedding window with the origin named in `?parent=`, posts only to that
// origin, the token arrives by postMessage and is checked against the parent origin server-side.
import { $, LOCALE, fail, fmt, frameSession, h, parentOk, t, theme } from './frame-session.js';
import { describeHealth, timeElement, PENDING_SETUP } from './peliqan-status.js';

// The panel's own strings join the shared table (the connect window never downloads them).
Object.assign(t, (await import(`./panel-locales.${LOCALE}.js`)).default);

const root = document.documentElement;
const enc = encodeURIComponent;
const { post, api, begin, tokenArrived, fromParent } = frameSession('peliqan-panel');

// This view's state.
const view = {
  started: false,
  catalogue: new Map(), // servertype id → capabilities
  timer: 0,
  syncing: new Set(), // connection ids with a sync followed here
  confirming: new Set(), // connection ids showing the delete confirmation
};

const say = (text) => { $('announcer').textContent = text || ''; };

// ---- the list ----

const total = (run) => Object.values(run?.records || {}).reduce((a, b) => a + b, 0);

function facts(c) {
  const run = c.last_run;
  const when = run?.finished_at || run?.started_at;
  const fact = (label, value) => h('div', null, h('dt', null, label), h('dd', null, value));
  // A run that failed (or partly) says so: never "48 seconds ago" alone for a failure.
  const outcome = { failed: ['failedAt', 'danger'], completed_with_errors: ['partlyAt', 'warning'] }[run?.status];
  const last = when ? [outcome && h('span', { class: 'outcome', 'data-tone': outcome[1] }, t[outcome[0]]), outcome && ' ', timeElement(when, LOCALE)] : t.never;
  return h('dl', { class: 'facts' },
    fact(t.lastSync, last),
    fact(t.records, (c.live_count || 0).toLocaleString(LOCALE)), // rows held now (a run's new ones: its progress line)
    fact(t.nextSync, c.next_sync_at ? timeElement(c.next_sync_at, LOCALE) : t.notScheduled));
}

function item(c) {
  const id = String(c.id);
  const pending = PENDING_SETUP.includes(c.health_status);
  const { label, tone } = describeHealth({ health_status: c.health_status, running: view.syncing.has(id) }, LOCALE);
  const caps = view.catalogue.get(String(c.servertype_id)) || [];
  const button = (key, action, cls) => h('button', { type: 'button', class: cls, 'data-action': action, 'data-key': `${action}-${id}` }, t[key]);
  const progress = h('p', { class: 'progress', role: 'status', id: `progress-${id}` });
  const buttons = pending
    ? [button('finishSetup', 'finish', 'primary')]
    : c.health_status === 'DISABLED'
      ? [button('resume', 'enable', 'primary')]
      : [button('syncNow', 'sync'), button('reauthorise', 'reauthorise'), caps.includes('manual_refresh') && button('manualRefresh', 'refresh'), button('pause', 'disable')];
  buttons.push(button('delete', 'delete', 'danger'));
  const sync = buttons.find((b) => b?.dataset?.action === 'sync');
  if (sync && view.syncing.has(id)) sync.setAttribute('aria-disabled', 'true');
  // Why it needs attention, in the BFF's words (c.detail), for the states that have a reason.
  const why = ['ERROR', 'COMPLETED_WITH_ERRORS'].includes(c.health_status) && c.detail;
  // The id tells apart two connections with the same name (e.g. two Sandbox CRM accounts).
  const li = h('li', { class: 'item', 'data-id': id, 'aria-labelledby': `name-${id} cid-${id}` },
    h('div', { class: 'head' }, h('h3', { id: `name-${id}` }, c.name), h('span', { class: 'muted cid', id: `cid-${id}` }, `#${id}`), h('span', { class: 'badge', 'data-tone': tone }, label)),
    why && h('p', { class: 'why' }, fmt(t.why, { detail: why })),
    facts(c),
    progress,
    h('div', { class: 'actions', role: 'group', 'aria-label': fmt(t.actionsFor, { name: `${c.name} #${id}` }) }, buttons));
  if (view.confirming.has(id)) li.append(confirmBox(c));
  li.connection = c;
  return li;
}

function confirmBox(c) {
  const id = String(c.id);
  const close = (focus) => {
    view.confirming.delete(id);
    box.remove();
    document.querySelector(`[data-key="${focus}-${id}"]`)?.focus();
  };
  const box = h('div', { class: 'confirm', role: 'group', 'aria-labelledby': `confirm-${id}` },
    h('p', { id: `confirm-${id}` }, fmt(t.confirmDelete, { name: c.name })),
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'danger', 'data-action': 'delete-confirmed', 'data-key': `delete-confirmed-${id}` }, fmt(t.confirmDeleteButton, { name: c.name })),
      h('button', { type: 'button', 'data-key': `delete-cancel-${id}`, onclick: () => close('delete') }, t.cancel)));
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      close('delete');
    }
  });
  return box;
}

function render(list) {
  // Re-rendered on every refresh: the focused control is found again by its key.
  const focused = document.activeElement?.dataset?.key;
  const progress = new Map([...document.querySelectorAll('.progress')].map((p) => [p.id, p.textContent]));
  const box = $('view');
  if (!list.length) box.replaceChildren(h('p', { class: 'muted' }, t.panelEmpty));
  else box.replaceChildren(h('ul', { class: 'list' }, list.map(item)));
  for (const [id, text] of progress) if ($(id)) $(id).textContent = text;
  if (focused) document.querySelector(`[data-key="${focused}"]`)?.focus();
}

async function load() {
  clearTimeout(view.timer);
  try {
    const data = await api('GET', '/api/servers?page_size=500');
    const list = data?.results || [];
    render(list);
    // Poll while something is on its way (a sync, a sign-in in another tab); rarely otherwise.
    const busy = view.syncing.size || list.some((c) => ['AUTHORIZING', 'RE_AUTHORISING', 'CHECKING'].includes(c.health_status));
    if (!document.hidden) view.timer = setTimeout(load, busy ? 2e3 : 30e3);
  } catch (e) {
    say(e.message);
    post({ type: 'error', error: { code: e.code, status: e.status, message: e.message } });
  }
}

// ---- actions ----

// Opened inside the click (allowed by pop-up blockers). `keepOpener` for the OAuth start page, which
// takes the sign-in's nonce from us by postMessage and then drops its opener itself.
function openTab(keepOpener = false) {
  const tab = window.open('', '_blank');
  try {
    if (tab && !keepOpener) tab.opener = null;
  } catch {}
  return tab;
}

// Hands the OAuth start page its one-time nonce (never in a URL), until it says it has it.
function handOverNonce(tab, nonce) {
  let received = false;
  const onAck = (e) => {
    if (e.source === tab && e.origin === location.origin && e.data?.type === 'oauth_nonce_received') received = true;
  };
  addEventListener('message', onAck);
  for (let i = 0; i < 120; i++) {
    setTimeout(() => {
      if (!received) tab.postMessage({ source: 'peliqan', type: 'oauth_nonce', nonce }, location.origin);
      if (i === 119 || received) removeEventListener('message', onAck);
    }, i * 250);
  }
}

async function followSync(c) {
  const id = String(c.id);
  const progress = () => $(`progress-${id}`);
  view.syncing.add(id);
  load();
  try {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const status = await api('GET', `/api/server/${enc(id)}/sync-status`);
      if (!status?.running) break;
      if (progress()) progress().textContent = t.syncRunning;
    }
    const runs = await api('GET', `/api/server/${enc(id)}/runs?page_size=1`);
    const run = runs?.results?.[0];
    view.syncing.delete(id);
    await load();
    const text = run?.status === 'failed' ? fmt(t.syncFailed, { error: run.error || '' }) : fmt(t.syncDone, { n: total(run).toLocaleString(LOCALE) });
    if (progress()) progress().textContent = text;
    post({ type: 'change', change: { type: 'sync_finished', server_id: c.id, run } });
  } catch (e) {
    view.syncing.delete(id);
    say(e.message);
  }
}

// Starts a sync (or joins the one running) and follows it.
async function startSync(c) {
  try {
    await api('POST', `/api/server/${enc(String(c.id))}/sync`, {});
  } catch (e) {
    if (e.code !== 'sync_already_running') throw e;
  }
  post({ type: 'change', change: { type: 'sync_started', server_id: c.id } });
  followSync(c);
}

async function act(button) {
  const li = button.closest('li');
  const c = li.connection;
  const id = String(c.id);
  const action = button.dataset.action;
  if (button.getAttribute('aria-disabled') === 'true') return;
  say('');
  const tab = action === 'reauthorise' || action === 'refresh' ? openTab(action === 'reauthorise') : null;
  try {
    if (action === 'sync') {
      $(`progress-${id}`).textContent = t.syncStarting;
      await startSync(c);
    } else if (action === 'finish') {
      post({ type: 'open', options: { serverId: c.id } });
    } else if (action === 'reauthorise') {
      const r = await api('POST', `/api/server/${enc(id)}/reauthorise`, { oauth_strict: true }); // nonce hand-over only
      if (r?.auth_uri) {
        if (!tab) throw fail('popup_blocked', t.popupBlockedShort);
        tab.location.href = r.auth_uri;
        if (r.oauth_nonce) handOverNonce(tab, r.oauth_nonce);
        else tab.opener = null;
        say(fmt(t.reauthOpened, { name: c.name }));
        load();
      } else {
        tab?.close();
        post({ type: 'open', options: { reauthServerId: c.id } });
      }
    } else if (action === 'refresh') {
      const r = await api('POST', `/api/server/${enc(id)}/manual-refresh`);
      if (!tab) throw fail('popup_blocked', t.popupBlockedShort);
      tab.location.href = r.refresh_url;
      say(t.refreshOpened);
    } else if (action === 'disable' || action === 'enable') {
      await api('POST', `/api/server/${enc(id)}/${action}`);
      say(fmt(action === 'disable' ? t.paused : t.resumed, { name: c.name }));
      post({ type: 'change', change: { type: action === 'disable' ? 'disabled' : 'enabled', server_id: c.id } });
      // Resume = the sync a resumed connection owes, now (or the one the schedule just started),
      // followed like "Sync now": its result shows when it ends, not at the next poll.
      if (action === 'enable') await startSync(c);
      else load();
    } else if (action === 'delete') {
      view.confirming.add(id);
      li.append(confirmBox(c));
      document.querySelector(`[data-key="delete-cancel-${id}"]`).focus();
    } else if (action === 'delete-confirmed') {
      await api('DELETE', `/api/server/${enc(id)}`);
      view.confirming.delete(id);
      li.remove();
      say(fmt(t.deleted, { name: c.name }));
      $('title').focus(); // the focused button is gone
      post({ type: 'change', change: { type: 'deleted', server_id: c.id } });
      load();
    }
  } catch (e) {
    tab?.close();
    if ($(`progress-${id}`) && action === 'sync') $(`progress-${id}`).textContent = '';
    say(e.message);
    post({ type: 'error', error: { code: e.code, status: e.status, message: e.message } });
  }
}

// ---- boot and messages ----

async function start(first) {
  if (view.started) return load();
  view.started = true;
  try {
    await begin(first);
    const types = await api('GET', `/api/servertypes?page_size=500&locale=${LOCALE}`);
    view.catalogue = new Map((types?.results || []).map((s) => [String(s.id), s.capabilities || []]));
    await load();
  } catch (e) {
    view.started = false;
    say(e.message);
    post({ type: 'error', error: { code: e.code, status: e.status, message: e.message } });
  }
}

addEventListener('message', (e) => {
  const m = e.data;
  if (!fromParent(e)) return;
  if (m.type === 'init') {
    theme(m.options?.theme);
    start(m.token);
  } else if (m.type === 'token') tokenArrived(m.token);
  else if (m.type === 'refresh') load();
});
document.addEventListener('click', (e) => {
  const button = e.target.closest('button[data-action]');
  if (button) act(button);
});
document.addEventListener('visibilitychange', () => { if (!document.hidden && view.started) load(); });
new ResizeObserver(() => post({ type: 'resize', height: Math.ceil(root.getBoundingClientRect().height) })).observe(document.body);

root.lang = LOCALE;
document.title = t.panelTitle;
$('title').textContent = t.panelTitle;
$('loading').textContent = t.loading;
if (parentOk) post({ type: 'ready' });
else say(t.errOrigin);
