// What the connect window (connect.js) and the "Your connections" panel (panel.js) share: both run
// in an iframe on the BFF origin (docs/embed-protocol.md). Messages are taken only from the
// embedding window with the origin named in `?parent=`, and posted only to that origin; the token
// arrives by postMessage and is checked against that origin server-side (POST /api/embed/session).
// The UI strings: one table per locale (locales.<xx>.js), only the page's own locale is loaded.
const query = new URLSearchParams(location.search);
export const PARENT = query.get('parent') || '';
export const LOCALE = ['en', 'nl', 'fr', 'de'].includes(query.get('locale')) ? query.get('locale') : 'en';
export const t = (await import(`./locales.${LOCALE}.js`)).default;
export const BASE = location.pathname.split('/embed/')[0]; // the BFF may be mounted under a path prefix
const TOKEN_MARGIN_MS = 120e3; // ask for a fresh token this long before expiry
// Error codes whose server `detail` is replaced by a translated sentence (every token_* code).
const MESSAGES = { origin_not_allowed: 'errOrigin', credentials_rejected: 'errRejected', network_error: 'errNetwork' };
export const message = (code) => t[/^token_/.test(code) ? 'errExpired' : MESSAGES[code]];

export const parentOk = (() => {
  try {
    const ancestor = location.ancestorOrigins?.[0];
    return parent !== window && new URL(PARENT).origin === PARENT && (!ancestor || ancestor === PARENT);
  } catch {
    return false;
  }
})();

export const fmt = (s, vars) => s.replace(/\{(\w+)\}/g, (_, k) => vars[k] ?? '');
export const fail = (code, message, status = 0, errors = null) => Object.assign(new Error(message), { code, status, errors });
export const $ = (id) => document.getElementById(id);

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat(Infinity).filter((c) => c != null && c !== false));
  return el;
}

// The partner's theme: CSSOM custom properties (allowed by the documents' CSP, unlike style attributes).
export function theme(values) {
  for (const [k, v] of Object.entries(values || {})) {
    if (/^[a-zA-Z]+$/.test(k) && typeof v === 'string') document.documentElement.style.setProperty('--pq-' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), v);
  }
}

// One session per document: the token, its deadline on this browser's clock (a user's wrong clock
// does not matter), and the token request waiting for the parent's answer.
export function frameSession(source) {
  const s = { token: null, deadline: 0, session: null, waiting: null, answer: null };
  const post = (msg) => parentOk && parent.postMessage({ source, ...msg }, PARENT);

  async function http(method, path, body, bearer) {
    let res;
    try {
      res = await fetch(BASE + path, {
        method,
        cache: 'no-store',
        credentials: 'omit',
        headers: { Authorization: 'Bearer ' + bearer, ...(body && { 'Content-Type': 'application/json' }) },
        body: body && JSON.stringify(body),
      });
    } catch {
      throw fail('network_error', t.errNetwork);
    }
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) {
      const code = data?.code || `http_${res.status}`;
      throw fail(code, message(code) || data?.detail || t.errGeneric, res.status, data?.errors);
    }
    return [data, res];
  }

  async function start(candidate) {
    const [data, res] = await http('POST', '/api/embed/session', { parent_origin: PARENT }, candidate);
    const serverNow = Date.parse(res.headers.get('Date')) || Date.now();
    const exp = data?.expires_at;
    const expMs = typeof exp === 'number' ? (exp < 1e12 ? exp * 1000 : exp) : Date.parse(exp);
    s.deadline = expMs ? Date.now() + (expMs - serverNow) : Infinity;
    s.token = candidate;
    s.session = data;
  }

  function askToken() {
    s.waiting ||= new Promise((resolve) => {
      const timer = setTimeout(resolve, 30e3, null);
      s.answer = (value) => {
        clearTimeout(timer);
        resolve(value);
      };
      post({ type: 'need_token' });
    }).finally(() => {
      s.waiting = s.answer = null;
    });
    return s.waiting;
  }

  // A token missing or about to expire is replaced before the request, so a user who sat on a
  // form keeps what they typed.
  async function api(method, path, body, retried = false) {
    if (!s.token || s.deadline - Date.now() < TOKEN_MARGIN_MS) {
      const next = await askToken();
      if (typeof next === 'string' && next && next !== s.token) await start(next);
      else if (!s.token || s.deadline <= Date.now()) throw fail('token_expired', t.errExpired, 401);
    }
    try {
      return (await http(method, path, body, s.token))[0];
    } catch (e) {
      if (e.code !== 'token_expired' || retried) throw e;
      s.deadline = 0;
      return api(method, path, body, true);
    }
  }

  return {
    post,
    api,
    // The token of the parent's `init`: an expired one is not fatal, api() asks the parent for a new one.
    begin: (first) => (typeof first === 'string' && first && first !== s.token ? start(first).catch((e) => { if (e.status !== 401) throw e; }) : null),
    tokenArrived: (value) => s.answer?.(value),
    session: () => s.session,
    // From the embedding window only (exact origin and window), and only this view's messages.
    fromParent: (e) => e.origin === PARENT && e.source === parent && parentOk && e.data?.source === source,
  };
}
