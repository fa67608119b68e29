// Peliqan.mountConnections(element, options): the "Your connections" panel, an iframe on the BFF
// origin (panel.html). Imported by the loader only when a panel is mounted. Flows that need the
// connect window (Finish setup, a key/login re-authorisation) open the ordinary modal, created on
// first use with the same token and locale.
const TITLES = { en: 'Your connections', nl: 'Je koppelingen', fr: 'Vos connexions', de: 'Ihre Verbindungen' };
const SRC = 'peliqan-panel';
const ALLOWED = ['integrationToken', 'getToken', 'locale', 'theme', 'onChange', 'onError', 'apiBase'];

export default function mount({ initialize, latest, base, PeliqanError, tokenSource }, element, options) {
  const fail = (m) => { throw new TypeError(`Peliqan mountConnections: ${m}`); };
  const host = typeof element == 'string' ? document.querySelector(element) : element;
  if (!(host instanceof Element)) fail(`element "${element}" matches no element; pass a CSS selector or an Element`);
  if (!options || typeof options != 'object') fail('pass an options object');
  for (const k in options) if (!ALLOWED.includes(k)) fail(`unknown option "${k}"; use one of ${ALLOWED}`);
  const o = { ...options };
  if (!(typeof o.integrationToken == 'string' && o.integrationToken) && typeof o.getToken != 'function') fail('pass integrationToken or getToken');
  for (const k of ['getToken', 'onChange', 'onError']) if (o[k] != null && typeof o[k] != 'function') fail(`${k} must be a function`);
  if (o.locale != null && !(o.locale in TITLES)) fail('locale must be one of en, nl, fr, de');
  if (o.theme != null && (typeof o.theme != 'object' || Object.values(o.theme).some((v) => typeof v != 'string'))) fail('theme must be an object of CSS values');

  const locale = o.locale || 'en';
  const apiBase = (o.apiBase || base).replace(/\/+$/, '');
  const origin = new URL(apiBase).origin;
  let modal = null;
  let dead = false;

  const frame = document.createElement('iframe');
  frame.title = TITLES[locale];
  frame.loading = 'lazy';
  frame.src = `${apiBase}/embed/v1/panel?parent=${encodeURIComponent(location.origin)}&locale=${locale}`;
  Object.assign(frame.style, { border: 0, display: 'block', width: '100%', height: '160px', colorScheme: 'normal' });
  host.append(frame);

  const call = (fn, arg) => { try { fn?.(arg); } catch (e) { setTimeout(() => { throw e; }); } };
  const send = (msg) => frame.contentWindow?.postMessage({ source: SRC, ...msg }, origin); // exact origin, never '*'
  const tokens = tokenSource(o, (error) => call(o.onError, error));
  // The connect window for Finish setup and key/login re-authorisation: the page's own (its
  // `initialize()` instance: one modal per page), else one created when first needed.
  const openModal = (opts) => {
    const own = latest();
    if (own && own !== modal) return own.open(opts);
    modal ||= initialize({
      ...(tokens.now() && { integrationToken: tokens.now() }),
      ...(o.getToken && { getToken: o.getToken }),
      locale,
      ...(o.theme && { theme: o.theme }),
      ...(o.apiBase && { apiBase: o.apiBase }),
      button: document.createElement('span'), // no trigger on the page: the panel's buttons open it
      onConnected: (data) => call(o.onChange, { type: 'connected', server_id: data.id, connection: data }),
      onClose: () => send({ type: 'refresh' }),
    });
    modal.open(opts);
  };

  const onMessage = (e) => {
    const m = e.data;
    if (e.origin != origin || e.source != frame.contentWindow || m?.source != SRC) return;
    if (m.type == 'ready') send({ type: 'init', token: tokens.now(), options: { locale, theme: o.theme } });
    else if (m.type == 'need_token') tokens.fresh().then((value) => send({ type: 'token', token: value }));
    else if (m.type == 'resize') frame.style.height = Math.max(80, m.height | 0) + 'px';
    else if (m.type == 'change') call(o.onChange, m.change);
    else if (m.type == 'open') openModal(m.options || {});
    else if (m.type == 'error') call(o.onError, new PeliqanError(m.error?.code || 'error', m.error?.message || '', m.error?.status || 0));
  };
  addEventListener('message', onMessage);

  return {
    /** Reload the list (e.g. after the page's own "Add connection" finished). */
    refresh: () => dead || send({ type: 'refresh' }),
    destroy() {
      if (dead) return;
      dead = true;
      removeEventListener('message', onMessage);
      frame.remove();
      modal?.destroy();
    },
  };
}
