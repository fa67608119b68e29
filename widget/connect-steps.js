// The connect window's steps after a connector is picked (docs/embed-protocol.md): its form, the
// sign-in in a pop-up or a tab, the choice (CONFIG_SELECT), and Finish setup or re-authorise of an
// existing connection. Imported by connect.js when a connector is pointed at or picked; it shares
// connect.js's state and session.
import { LOCALE, fail, fmt, h, t } from './frame-session.js';
import { abandon, actions, alertBox, api, fatal, handOver, post, report, say, serverPath, session, show, showCatalogue, spinner, start, stop, view } from './connect.js';

const WAITING = new Set(['AUTHORIZING', 'RE_AUTHORISING', 'CHECKING']);
const FAILED = new Set(['ERROR', 'DISABLED']);
const POPUP_GRACE_MS = 5e3; // popup.closed lies under COOP: keep polling this long before believing it
const OAUTH_GIVE_UP_MS = 15 * 60e3;
const INPUT_TYPES = new Set(['text', 'email', 'url', 'number', 'password']);

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
export function connectForm(st, existing = null, finishing = false) {
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
  // "Advanced": the tables to sync (seed 003), all of them unless the customer leaves some out.
  const streams = ctx.st.streams || [];
  const kept = conn.tables ? new Set(conn.tables) : null;
  const tableInputs = streams.map((name, i) => h('input', { type: 'checkbox', id: `table-${i}`, value: name, checked: !kept || kept.has(name) }));
  let busy = false;
  const onSubmit = async (e) => {
    e.preventDefault();
    if (busy) return;
    const chosen = inputs.filter((i) => i.checked).map((i) => options[Number(i.value)].value);
    if (!chosen.length) {
      say(alert, t.errChoose);
      return inputs[0]?.focus();
    }
    const tables = tableInputs.filter((i) => i.checked).map((i) => i.value);
    if (streams.length && !tables.length) {
      say(alert, t.errTables);
      return tableInputs[0].focus();
    }
    busy = true;
    submit.setAttribute('aria-disabled', 'true');
    say(alert, '');
    try {
      // Before the choice: choosing makes the connection ready, and its first sync reads the selection.
      const all = tables.length === streams.length;
      if (!all || kept) await api('PATCH', serverPath(conn.id), { tables: all ? null : tables });
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
    streams.length > 1 && h('details', { open: !!kept },
      h('summary', null, t.tablesAdvanced),
      h('fieldset', { 'aria-describedby': 'tables-help' },
        h('legend', null, t.tablesLegend),
        h('p', { class: 'help', id: 'tables-help' }, fmt(t.tablesHelp, { name: ctx.st.display_name })),
        streams.map((name, i) => h('div', { class: 'choice' }, tableInputs[i], h('label', { for: `table-${i}` }, name))))),
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

export async function reauthorise(id) {
  try {
    const [conn, st] = await connection(id);
    connectForm(st, conn);
  } catch (e) {
    fatal(e);
  }
}

// "Finish setup": a connection left half-way (sign-in window or modal closed) resumes at its
// pending step: the sign-in (AUTHORIZING) or the choice (CONFIG_SELECT). Anything else is set up.
export async function finishSetup(id) {
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
