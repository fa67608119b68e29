// Peliqan loader (≤ 4 KB gz, no static imports). API: peliqan-integration.d.ts; protocol: docs/embed-protocol.md
const LOCALES = ['en', 'nl', 'fr', 'de'];
const THEME = 'colorPrimary colorPrimaryText colorBackground colorText colorMuted colorBorder colorDanger borderRadius fontFamily'.split(' ');
const hasWindow = typeof document == 'object';
const HOME = new URL(import.meta.url).origin; // the BFF this module came from: the default apiBase
const owners = new WeakMap(); // trigger or container → its live instance
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
  locale: [(v) => LOCALES.includes(v), 'one of en, nl, fr, de'],
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
// The token of one initialize() or mountConnections(): `now()` the latest known, `fresh()` asks
// getToken (if given) for a new one; a failure is reported and the last token kept.
const tokenSource = (o, fail) => {
  let token = o.integrationToken || null;
  return {
    now: () => token,
    async fresh() {
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
    },
  };
};

export function initialize(options) {
  if (!hasWindow) throw new PeliqanError('no_window', 'initialize() needs a browser');
  const o = check(options, 'initialize', Object.keys(SPEC).filter((k) => !/Id$/.test(k)));
  if (!o.integrationToken && !o.getToken) throw new TypeError('Peliqan initialize: pass integrationToken or getToken');
  const doc = document;
  const inline = o.container && find(o.container, 'container');
  const trigger = o.button ? find(o.button, 'button') : doc.getElementById('peliqan-integration-button');
  // One instance per trigger (or container): initialize() again on it (a React effect without
  // cleanup, run twice by StrictMode) returns the live instance; its destroy() frees the element.
  const key = inline || trigger;
  if (owners.has(key)) return owners.get(key);
  let inner, dead;
  const queue = []; // calls made before the connect window's module has loaded
  const run = (f) => (inner ? f(inner) : queue.push(f));
  const emit = (ev) => call(o.onEvent, ev);
  const fail = (error) => { call(o.onError, error); emit({ type: 'error', error }); };
  const env = { base: (o.apiBase || HOME).replace(/\/+$/, ''), locale: o.locale || 'en', inline, trigger, PeliqanError, call, fail, emit, tokens: tokenSource(o, fail) };
  import('./peliqan-modal.js').then(
    (m) => dead || ((inner = m.default(o, env)), queue.splice(0).forEach(run)),
    () => fail(new PeliqanError('load_failed', 'could not load peliqan-modal.js')),
  );

  const onClick = (e) => { e.preventDefault(); instance.open(); };
  const onTriggerKey = (e) => { if (e.key == 'Enter' || e.key == ' ') onClick(e); };
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

  const instance = {
    open(opts = {}) {
      if (dead) throw new PeliqanError('destroyed', 'destroyed; call initialize() again');
      const checked = check(opts, 'open', ['availableConnectors', 'selectedConnector', 'reauthServerId', 'serverId']);
      run((i) => i.open(checked));
    },
    close: () => dead || run((i) => i.close()),
    destroy() {
      if (dead) return;
      inner?.destroy();
      dead = 1;
      if (trigger) {
        trigger.removeEventListener('click', onClick);
        trigger.removeEventListener('keydown', onTriggerKey);
        for (const k of added) trigger.removeAttribute(k);
      }
      owners.delete(key);
      if (latest == instance) latest = 0;
    },
  };
  key && owners.set(key, instance);
  return (latest = instance);
}

// SDK and panel load on first use.
const ctx = { PeliqanError, base: HOME, call, form: (id) => latest && !latest.open({ reauthServerId: id }) };
const load = () => (sdk ||= import('./peliqan-sdk.js').then((m) => m.default(ctx), () => {
  sdk = 0;
  throw new PeliqanError('load_failed', 'could not load peliqan-sdk.js');
}));
const args = (a, name) => {
  if (!isObj(a) || !isStr(a.identityToken) || !isId(a.serverId) || (a.apiBase != null && !SPEC.apiBase[0](a.apiBase)))
    throw new PeliqanError('invalid_argument', name + ' takes {identityToken: string, serverId: number | string, apiBase?: absolute http(s) URL}');
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
export const disableServer = lazy('disableServer');
export const enableServer = lazy('enableServer');
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
  let inner, dead, ready = import('./peliqan-panel.js').then((m) => dead || (inner = m.default({ initialize, latest: () => latest, base: HOME, PeliqanError, tokenSource }, el, o)));
  return { ready, refresh: () => ready.then(() => inner?.refresh()), destroy: () => { dead = 1; inner?.destroy(); } };
}

const Peliqan = { initialize, mountConnections, syncServer, getServerHealthStatus, getServerSyncRunStatus, reAuthoriseServer, manualRefreshSaltEdge, disableServer, enableServer, watchServer, PeliqanError };
if (hasWindow && !window.Peliqan) {
  window.Peliqan = Peliqan;
  dispatchEvent(new CustomEvent('peliqan:ready', { detail: Peliqan }));
}
export default Peliqan;
