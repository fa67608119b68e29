// The connect window of one initialize()d instance: its iframe (a modal overlay, or inline in a
// container) and the loader↔iframe protocol (docs/embed-protocol.md). Imported by
// peliqan-integration.js when initialize() runs; the loader has checked the options, found the
// elements and wired the trigger. `env` comes from the loader: {base, locale, inline, trigger,
// PeliqanError, call, fail, emit, tokens}.
const SRC = 'peliqan';
const TITLES = { en: 'Add connection', nl: 'Verbinding toevoegen', fr: 'Ajouter une connexion', de: 'Verbindung hinzufügen' };
// Open modals of every instance on this page, topmost last, and what the page had before the
// first one opened. On `window`, so that copies of the loader from two URLs share them.
const layers = (self[Symbol.for('peliqan.modals')] ||= { modals: [], saved: 0 });

// The page under the open modals: every body child but the topmost box is inert and the page does
// not scroll; when the last one closes, everything is put back as it was before the first opened.
// One shared stack, so instances opened and closed in any order never restore each other's state.
function layer() {
  const body = document.body, root = document.documentElement, top = layers.modals.at(-1);
  let saved = layers.saved;
  if (top) {
    saved = layers.saved ||= { inert: new Map(), scroll: [body.style.overflow, root.style.overflow] };
    for (const child of body.children) {
      saved.inert.has(child) || saved.inert.set(child, child.inert);
      child.inert = child != top || saved.inert.get(child);
    }
    body.style.overflow = root.style.overflow = 'hidden';
  } else if (saved) {
    for (const [child, was] of saved.inert) child.inert = was;
    [body, root].forEach((el, i) => {
      el.style.overflow = saved.scroll[i];
      el.getAttribute('style') || el.removeAttribute('style');
    });
    layers.saved = 0;
  }
}

export default function connectWindow(o, { base, locale, inline, trigger, PeliqanError, call, fail, emit, tokens }) {
  const doc = document, body = doc.body, origin = new URL(base).origin;
  const z = o.zIndex ?? 2147483000;
  let tokenJob, ready, isOpen, openOpts = {}, lastFocus;

  const frame = doc.createElement('iframe');
  frame.title = TITLES[locale];
  frame.src = `${base}/embed/v1/connect?parent=${encodeURIComponent(location.origin)}&locale=${locale}`;
  Object.assign(frame.style, { border: 0, display: 'block', width: '100%', height: inline ? '480px' : '100%', colorScheme: 'normal' });
  let box = frame;
  if (inline) inline.append(frame);
  else {
    box = doc.createElement('div');
    for (const [k, v] of [['role', 'dialog'], ['aria-modal', 'true'], ['aria-label', frame.title]]) box.setAttribute(k, v);
    Object.assign(box.style, { position: 'fixed', inset: 0, background: 'rgba(15,23,42,.6)', display: 'none' });
    box.append(frame);
    body.append(box);
  }

  const send = (msg) => frame.contentWindow?.postMessage({ source: SRC, ...msg }, origin); // exact origin, never '*'

  const onMessage = (e) => {
    const m = e.data, type = m?.type, err = m?.error;
    if (e.origin != origin || e.source != frame.contentWindow || m.source != SRC) return;
    if (type == 'ready') {
      ready = 1;
      send({ type: 'init', token: tokens.now(), options: { availableConnectors: o.availableConnectors, selectedConnector: o.selectedConnector, locale, theme: o.theme, mode: inline ? 'inline' : 'modal' } });
      if (isOpen) send({ type: 'open', options: openOpts });
      emit({ type });
    } else if (type == 'need_token') (tokenJob ||= tokens.fresh().finally(() => (tokenJob = 0))).then((t) => send({ type: 'token', token: t }));
    else if (type == 'event' && m.event?.type == 'connector_selected') emit(m.event);
    else if (type == 'connected') { call(o.onConnected, m.data); emit({ type, data: m.data }); }
    else if (type == 'error') fail(new PeliqanError(err.code, err.message, err.status));
    else if (type == 'close') close();
    else if (type == 'resize' && inline) frame.style.height = (m.height | 0) + 'px';
  };
  const onKey = (e) => e.key == 'Escape' && layers.modals.at(-1) == box && close(); // the topmost modal only

  function open(options) {
    openOpts = options;
    if (!inline && !isOpen) {
      lastFocus = doc.activeElement;
      box.style.display = '';
      box.style.zIndex = z + layers.modals.length; // above the modals already open
      layers.modals.push(box);
      layer();
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
      layers.modals.splice(layers.modals.indexOf(box), 1);
      layer();
      doc.removeEventListener('keydown', onKey, true);
      (lastFocus != body && lastFocus?.isConnected ? lastFocus : trigger)?.focus();
    }
    isOpen = 0;
    call(o.onClose);
    emit({ type: 'close' });
  }

  addEventListener('message', onMessage);
  return {
    open,
    close,
    destroy() {
      if (!inline) close();
      removeEventListener('message', onMessage);
      box.remove();
    },
  };
}
