// The SDK functions' work, imported by peliqan-integration.js on the first SDK call (the loader
// has already checked {identityToken, serverId} and the watchServer callbacks). Partner page → BFF
// with fetch + CORS; every failure is a PeliqanError {code, status, message}.
// `ctx` comes from the loader, so both share one PeliqanError class whatever URL loaded them, and
// its `call` (a partner callback's bug is rethrown apart and never stops a loop).
export default function sdk({ PeliqanError, base, form, call }) {
  // Each call goes to its own `apiBase`, else to the BFF the loader came from (never to another
  // instance's apiBase).
  const at = (a) => (a.apiBase || base).replace(/\/+$/, '') + '/api/server/' + encodeURIComponent(a.serverId);
  const watchers = new Set(); // running watchServer loops; syncServer nudges them

  async function request(method, url, token, body, headers) {
    let res;
    try {
      res = await fetch(url, {
        method,
        mode: 'cors',
        credentials: 'omit',
        cache: 'no-store', // our own If-None-Match must reach the server, and 304 reach us
        headers: { Authorization: 'Bearer ' + token, ...(body && { 'Content-Type': 'application/json' }), ...headers },
        body: body && JSON.stringify(body),
      });
    } catch {
      throw new PeliqanError('network_error', `could not reach ${new URL(url).origin}: check the network, apiBase, and that this page's origin is registered for the partner`);
    }
    const data = res.status == 204 || res.status == 304 ? null : await res.json().catch(() => null);
    if (!res.ok && res.status != 304) throw new PeliqanError(data?.code || 'http_' + res.status, data?.detail || `HTTP ${res.status} from ${new URL(url).pathname}`, res.status);
    return [data, res];
  }
  const json = async (...args) => (await request(...args))[0];

  // `tab` was opened blank by the loader inside the user's click; navigate it, or close it.
  async function viaTab(a, tab, url, key, otherwise) {
    const r = await json('POST', at(a) + url, a.identityToken);
    const target = r?.[key];
    if (!target) {
      tab?.close();
      return otherwise(r);
    }
    if (!/^https?:\/\//i.test(target)) throw new PeliqanError('bad_response', `the server's ${key} is not an http(s) URL`);
    if (!tab) {
      const error = new PeliqanError('popup_blocked', 'the browser blocked the new tab: allow pop-ups for this site, or open error.url from your own click handler');
      throw Object.assign(error, { url: target });
    }
    const nonce = r?.oauth_nonce;
    if (!nonce) tab.opener = null; // the provider page gets no handle on the partner page
    tab.location.href = target;
    // OAuth: the start page (BFF origin only) takes its nonce from us, then drops its opener
    const origin = new URL(at(a)).origin;
    for (let i = 0; nonce && i < 120; i++) setTimeout(() => tab.postMessage({ source: 'peliqan', type: 'oauth_nonce', nonce }, origin), i * 250);
    return r;
  }
  const bad = (what) => new PeliqanError('bad_response', what);
  async function lifecycle(a, action) {
    const r = await json('POST', at(a) + action, a.identityToken, {});
    for (const kick of watchers) kick(a.serverId);
    return r;
  }

  return {
    async syncServer(a) {
      if (a.tables != null && !(Array.isArray(a.tables) && a.tables.every((t) => typeof t == 'string')))
        throw new PeliqanError('invalid_argument', 'syncServer: tables must be an array of table names');
      const r = await json('POST', at(a) + '/sync', a.identityToken, { ...(a.tables && { tables: a.tables }), ...(a.full && { full: true }) });
      for (const kick of watchers) kick(a.serverId);
      return r;
    },

    // DISABLED: no scheduled runs, syncs refused (connection_disabled) · RE_ENABLED: syncs again.
    disableServer: (a) => lifecycle(a, '/disable'),
    enableServer: (a) => lifecycle(a, '/enable'),

    getServerHealthStatus: (a) => json('GET', at(a) + '/health', a.identityToken),
    getServerSyncRunStatus: (a) => json('GET', at(a) + '/sync-status', a.identityToken),

    reAuthoriseServer: (a, tab) =>
      viaTab(a, tab, '/reauthorise', 'auth_uri', (r) => {
        if (!r?.form) throw bad('reAuthoriseServer: the server answered with neither auth_uri nor form');
        if (!form(a.serverId))
          throw new PeliqanError('not_initialized', 'reAuthoriseServer: this connection is re-authorised in its credentials form, which opens in the modal: call Peliqan.initialize() first');
        return r;
      }),

    manualRefreshSaltEdge: (a, tab) =>
      viaTab(a, tab, '/manual-refresh', 'refresh_url', () => {
        throw bad('manualRefreshSaltEdge: the server answered without refresh_url');
      }),

    // Polls health (conditional: ETag → 304) and sync status. Backs off while nothing changes,
    // schedules nothing while the tab is hidden, and polls at once when it shows again.
    watchServer(a) {
      const first = a.interval ?? 1000;
      const max = Math.max(15000, first);
      const get = (url, headers) => request('GET', at(a) + url, a.identityToken, null, headers);
      let delay = first;
      let timer = 0;
      let busy = false;
      let stopped = false;
      let etag = null;
      let last = null;
      let running = null;
      let runId; // undefined until the first answer

      const schedule = (ms) => {
        clearTimeout(timer);
        if (!stopped && !document.hidden) timer = setTimeout(tick, ms);
      };
      async function tick() {
        if (busy || stopped || document.hidden) return;
        busy = true;
        let changed = false;
        try {
          // Sync status first, health second: a run ends together with its health (one
          // transaction), so a run seen finished here is always reported after its health.
          const [sync] = await get('/sync-status');
          const [health, res] = await get('/health', etag ? { 'If-None-Match': etag } : {});
          if (health) {
            etag = res.headers.get('ETag');
            const seen = JSON.stringify(health);
            if (seen != last) {
              last = seen;
              changed = true;
              call(a.onChange, health);
            }
          }
          const now = !!sync?.running;
          const id = sync?.pipeline_run_id ?? null;
          const newRun = runId !== undefined && id !== runId;
          // Ended since the last poll: seen running, or a new run that already finished
          // (shorter than the poll interval).
          if (!now && (running || (newRun && id != null))) {
            const [runs] = await get('/runs?page_size=1');
            call(a.onRunFinished, runs?.results?.[0] ?? null);
          }
          if ((running != null && running != now) || newRun) changed = true;
          running = now;
          runId = id;
        } catch (e) {
          if (!stopped) call(a.onError, e);
          if ([401, 403, 404].includes(e.status)) stop(); // waiting will not fix these
        }
        busy = false;
        delay = changed ? first : Math.min(delay * 1.5, max);
        schedule(delay);
      }
      const kick = (id) => {
        if (id == null || String(id) == String(a.serverId)) {
          delay = first;
          schedule(0);
        }
      };
      const onVisibility = () => kick();
      function stop() {
        stopped = true;
        clearTimeout(timer);
        watchers.delete(kick);
        document.removeEventListener('visibilitychange', onVisibility);
      }
      watchers.add(kick);
      document.addEventListener('visibilitychange', onVisibility);
      schedule(0);
      return stop;
    },
  };
}
