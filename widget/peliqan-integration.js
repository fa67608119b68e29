// Peliqan loader (≤ 4 KB gz). API: peliqan-integration.d.ts; protocol: docs/embed-protocol.md
import { describeHealth, formatRelativeTime, timeElement } from './peliqan-status.js';
export { describeHealth, formatRelativeTime, timeElement };
const SRC = 'peliqan';
const TITLES = { en: 'Add connection', nl: 'Verbinding toevoegen', fr: 'Ajouter une connexion', de: 'Verbindung hinzufügen' };
const THEME = 'colorPrimary colorPrimaryText colorBackground colorText colorMuted colorBorder colorDanger borderRadius fontFamily'.split(' ');
const hasWindow = typeof document == 'object';
let apiBase = new URL(import.meta.url).origin;
let latest;
let sdk;

export class PeliqanError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    Object.assign(this, { name: 'PeliqanError', code, status });
  }
}

const isStr = (v) => typeof v == 'string' && v != '';
const isFn = (v) => typeof v == 'function';
const isObj = (v) => v && typeof v == 'object' && !Array.isArray(v);
const isId = (v) => isStr(v) || (Number.isInteger(v) && v > 0);
const isEl = (v) => isStr(v) || v instanceof Element;
const fn = [isFn, 'a function'];
const id = [isId, 'a connection id'];
const el = [isEl, 'a CSS selector or an Element'];
const SPEC = {
  integrationToken: [isStr, 'a token string'],
  getToken: [isFn, 'an async function returning a token'],
  availableConnectors: [(v) => Array.isArray(v) && v.every(isStr), 'an array of connector names'],
  selectedConnector: [isStr, 'a connector name'],
  reauthServerId: id,
  serverId: id,
  onConnected: fn, onClose: fn, onError: fn, onEvent: fn,
  locale: [(v) => v in TITLES, 'one of en, nl, fr, de'],
  theme: [(v) => isObj(v) && Object.keys(v).every((k) => THEME.includes(k) && typeof v[k] == 'string'), 'an object of CSS values for ' + THEME],
  zIndex: [Number.isInteger, 'an integer'],
  nonce: [isStr, 'a CSP nonce string'],
  button: el,
  container: el,
  apiBase: [(v) => /^https?:\/\/[^/]/.test(v), 'an absolute http(s) URL'],
};
function check(o, where, allowed = Object.keys(SPEC)) {
  const fail = (m) => { throw new TypeError(`Peliqan ${where}: ${m}`); };
  if (!isObj(o)) fail('pass an options object');
  for (const k in o) {
    if (!allowed.includes(k)) fail(`unknown option "${k}"; use one of ${allowed}`);
    if (o[k] != null && !SPEC[k][0](o[k])) fail(`${k} must be ${SPEC[k][1]}`);
  }
  if (o.selectedConnector && !(o.availableConnectors || [o.selectedConnector]).includes(o.selectedConnector)) fail('selectedConnector must be in availableConnectors');
  return { ...o };
}
const find = (v, what) => {
  const found = typeof v == 'string' ? document.querySelector(v) : v;
  if (!found) throw new TypeError(`Peliqan initialize: ${what} "${v}" matches no element`);
  return found;
};
const call = (f, arg) => { try { f?.(arg); } catch (e) { setTimeout(() => { throw e; }); } };

export function initialize(options) {
  if (!hasWindow) throw new PeliqanError('no_window', 'initialize() needs a browser');
  const o = check(options, 'initialize', Object.keys(SPEC).filter((k) => !/Id$/.test(k)));
  if (!o.integrationToken && !o.getToken) throw new TypeError('Peliqan initialize: pass integrationToken or getToken');
  const base = (o.apiBase || apiBase).replace(/\/+$/, '');
  if (o.apiBase) apiBase = base;
  const origin = new URL(base).origin;
  const locale = o.locale || 'en';
  const doc = document, body = doc.body, root = doc.documentElement;
  const inline = o.container && find(o.container, 'container');
  const trigger = o.button ? find(o.button, 'button') : doc.getElementById('peliqan-integration-button');
  let token = o.integrationToken, tokenJob, ready, isOpen, dead, openOpts = {}, inerted = [], scroll, lastFocus;

  const frame = doc.createElement('iframe');
  frame.title = TITLES[locale];
  frame.src = `${base}/embed/v1/connect?parent=${encodeURIComponent(location.origin)}&locale=${locale}`;
  Object.assign(frame.style, { border: 0, display: 'block', width: '100%', height: inline ? '480px' : '100%', colorScheme: 'normal' });
  let box = frame;
  if (inline) inline.append(frame);
  else {
    box = doc.createElement('div');
    for (const [k, v] of [['role', 'dialog'], ['aria-modal', 'true'], ['aria-label', frame.title]]) box.setAttribute(k, v);
    Object.assign(box.style, { position: 'fixed', inset: 0, zIndex: o.zIndex ?? 2147483000, background: 'rgba(15,23,42,.6)', display: 'none' });
    box.append(frame);
    body.append(box);
  }

  const send = (msg) => frame.contentWindow?.postMessage({ source: SRC, ...msg }, origin); // exact origin, never '*'
  const emit = (ev) => call(o.onEvent, ev);
  const fail = (error) => { call(o.onError, error); emit({ type: 'error', error }); };
  const freshToken = async () => {
    try {
      if (o.getToken) {
        const t = await o.getToken();
        if (!isStr(t)) throw Error('it returned ' + typeof t);
        token = t;
      }
    } catch (e) {
      fail(new PeliqanError('token_unavailable', 'getToken failed: ' + e?.message));
    }
    return token;
  };

  const onMessage = (e) => {
    const m = e.data, type = m?.type, err = m?.error;
    if (e.origin != origin || e.source != frame.contentWindow || m.source != SRC) return;
    if (type == 'ready') {
      ready = 1;
      send({ type: 'init', token, options: { availableConnectors: o.availableConnectors, selectedConnector: o.selectedConnector, locale, theme: o.theme, mode: inline ? 'inline' : 'modal' } });
      if (isOpen) send({ type: 'open', options: openOpts });
      emit({ type });
    } else if (type == 'need_token') (tokenJob ||= freshToken().finally(() => (tokenJob = 0))).then((t) => send({ type: 'token', token: t }));
    else if (type == 'event' && m.event?.type == 'connector_selected') emit(m.event);
    else if (type == 'connected') { call(o.onConnected, m.data); emit({ type, data: m.data }); }
    else if (type == 'error') fail(new PeliqanError(err.code, err.message, err.status));
    else if (type == 'close') close();
    else if (type == 'resize' && inline) frame.style.height = (m.height | 0) + 'px';
  };
  const onKey = (e) => e.key == 'Escape' && close();
  const onClick = (e) => { e.preventDefault(); open(); };
  const onTriggerKey = (e) => { if (e.key == 'Enter' || e.key == ' ') onClick(e); };

  function open(opts = {}) {
    if (dead) throw new PeliqanError('destroyed', 'destroyed; call initialize() again');
    openOpts = check(opts, 'open', ['availableConnectors', 'selectedConnector', 'reauthServerId', 'serverId']);
    if (!inline && !isOpen) {
      lastFocus = doc.activeElement;
      for (const child of body.children) if (child != box) inerted.push([child, child.inert]), (child.inert = true);
      scroll = [body.style.overflow, root.style.overflow];
      body.style.overflow = root.style.overflow = 'hidden';
      box.style.display = '';
      doc.addEventListener('keydown', onKey, true);
    }
    isOpen = 1;
    frame.focus();
    if (ready) send({ type: 'open', options: openOpts });
    emit({ type: 'open' });
  }

  function close() {
    if (!inline) {
      if (!isOpen) return;
      box.style.display = 'none';
      for (const [child, was] of inerted) child.inert = was;
      inerted = [];
      [body, root].forEach((el, i) => {
        el.style.overflow = scroll[i];
        el.getAttribute('style') || el.removeAttribute('style');
      });
      doc.removeEventListener('keydown', onKey, true);
      (lastFocus != body && lastFocus?.isConnected ? lastFocus : trigger)?.focus();
    }
    isOpen = 0;
    call(o.onClose);
    emit({ type: 'close' });
  }

  const added = []; // trigger attributes we add, removed by destroy()
  const attr = (k, v) => trigger.hasAttribute(k) || (trigger.setAttribute(k, v), added.push(k));
  if (trigger) {
    trigger.addEventListener('click', onClick);
    inline || attr('aria-haspopup', 'dialog');
    if (!/^(BUTTON|INPUT)$/.test(trigger.tagName)) {
      attr('role', 'button');
      attr('tabindex', 0);
      trigger.addEventListener('keydown', onTriggerKey);
    }
  }
  addEventListener('message', onMessage);

  const instance = {
    open,
    close: () => dead || close(),
    destroy() {
      if (dead) return;
      if (!inline) close();
      dead = 1;
      removeEventListener('message', onMessage);
      if (trigger) {
        trigger.removeEventListener('click', onClick);
        trigger.removeEventListener('keydown', onTriggerKey);
        for (const k of added) trigger.removeAttribute(k);
      }
      box.remove();
      if (latest == instance) latest = 0;
    },
  };
  return (latest = instance);
}

// SDK (peliqan-sdk.js) and panel (peliqan-panel.js) load on first use.
const ctx = { PeliqanError, base: () => apiBase, form: (id) => latest && !latest.open({ reauthServerId: id }) };
const load = () => (sdk ||= import('./peliqan-sdk.js').then((m) => m.default(ctx), () => {
  sdk = 0;
  throw new PeliqanError('load_failed', 'could not load peliqan-sdk.js');
}));
const args = (a, name) => {
  if (!isObj(a) || !isStr(a.identityToken) || !isId(a.serverId)) throw new PeliqanError('invalid_argument', name + ' takes {identityToken: string, serverId: number | string}');
};
const lazy = (name, tab) => async (a) => {
  args(a, name);
  const w = tab && open('', '_blank'); // before any await: still inside the user's click
  try {
    return await (await load())[name](a, w);
  } catch (e) {
    w?.close();
    throw e;
  }
};
export const syncServer = lazy('syncServer');
export const getServerHealthStatus = lazy('getServerHealthStatus');
export const getServerSyncRunStatus = lazy('getServerSyncRunStatus');
export const reAuthoriseServer = lazy('reAuthoriseServer', 1);
export const manualRefreshSaltEdge = lazy('manualRefreshSaltEdge', 1);
export function watchServer(a) {
  args(a, 'watchServer');
  if (!(a.interval == null || a.interval >= 250) || ['onChange', 'onRunFinished', 'onError'].some((k) => a[k] != null && !isFn(a[k])))
    throw new PeliqanError('invalid_argument', 'watchServer: callbacks must be functions, interval ≥ 250');
  let stopped, inner;
  load().then((s) => stopped || (inner = s.watchServer(a)), a.onError);
  const stop = () => { stopped = 1; inner?.(); };
  return (stop.stop = stop);
}

export function mountConnections(el, o) {
  let inner, dead, ready = import('./peliqan-panel.js').then((m) => dead || (inner = m.default({ initialize, latest: () => latest, base: () => apiBase, PeliqanError }, el, o)));
  return { ready, refresh: () => ready.then(() => inner?.refresh()), destroy: () => { dead = 1; inner?.destroy(); } };
}

const Peliqan = { initialize, mountConnections, syncServer, getServerHealthStatus, getServerSyncRunStatus, reAuthoriseServer, manualRefreshSaltEdge, watchServer, PeliqanError, describeHealth, formatRelativeTime, timeElement };
if (hasWindow && !window.Peliqan) {
  window.Peliqan = Peliqan;
  dispatchEvent(new CustomEvent('peliqan:ready', { detail: Peliqan }));
}
export default Peliqan;
