// Acme Books' own code on its Integrations page: the embed exactly as DESIGN §5 shows it,
// plus buttons wired to the SDK functions. Nothing here ever sees a customer's credentials.
const config = JSON.parse(document.getElementById('acme-config').textContent);
const Peliqan = await import(`${config.bffUrl}/embed/v1/peliqan-integration.js`);
const { describeHealth, timeElement } = await import(`${config.bffUrl}/embed/v1/peliqan-status.js`); // the widget's words
const announcer = document.getElementById('announcer');
const PAGE_LOCALE = document.documentElement.lang || 'en'; // the page's words; the widget speaks the customer's
const PENDING_SETUP = ['AUTHORIZING', 'CONFIG_SELECT'];
let token = config.token;
let changed = false; // a connection was made, or started (it may be waiting at "Finish setup")
let modalOpen = false;

// One message at a time. A message about a row goes stale, and is cleared, when that row's health
// moves on (`until(health)`, any change by default) or one of its runs finishes: "Sign in again…"
// never outlives the sign-in.
let message = null;
function say(text, row = null, until = () => true) {
  announcer.textContent = text;
  message = text ? { row, until } : null;
}
function stale(row, health = null) {
  if (message?.row === row && (health == null || message.until(health))) say('');
}

// Called by the widget when the integrate token is missing or about to expire.
async function getToken() {
  const response = await fetch('/integrations/token', { method: 'POST', headers: { 'X-CSRF-Token': config.csrf } });
  if (!response.ok) throw new Error('Could not refresh the integration token');
  token = (await response.json()).token;
  return token;
}

const widget = Peliqan.initialize({
  integrationToken: token,
  getToken,
  locale: config.locale,
  nonce: config.nonce,
  ...config.choice, // availableConnectors / selectedConnector, from ?connectors=…&connector=…
  // The modal shows its own progress and errors; the page repeats none of them. A new or finished
  // connection appears in the table once the modal is closed.
  onConnected: () => { changed = true; },
  onEvent: (event) => {
    if (event.type === 'connector_selected') changed = true;
    if (event.type === 'open' || event.type === 'close') modalOpen = event.type === 'open';
  },
  onClose: () => (changed ? location.reload() : undefined),
});

// SDK calls use the integrate token (accepted as identityToken); on expiry, mint a new one once.
// `fn` runs before any await, so SDK calls that open a tab are still inside the user's click.
async function withToken(fn) {
  try {
    return await fn(token);
  } catch (error) {
    if (error.code === 'token_expired' || error.code === 'token_revoked') return fn(await getToken());
    throw error;
  }
}

const part = (row, name) => row.querySelector(`[data-${name}]`);
const total = (run) => Object.values(run?.records || {}).reduce((a, b) => a + b, 0);
const plural = (n, one, other) => `${n.toLocaleString(PAGE_LOCALE)} ${n === 1 ? one : other}`;

function showHealth(row) {
  const badge = part(row, 'health');
  const { label, tone } = describeHealth({ health_status: row.dataset.status, running: row.hasAttribute('data-syncing') }, PAGE_LOCALE);
  badge.textContent = label;
  badge.dataset.tone = tone;
  // Paused: "Resume syncing" instead of "Sync now" (which the BFF would refuse).
  const paused = row.dataset.status === 'DISABLED';
  const sync = row.querySelector('[data-action="sync"]');
  const resume = row.querySelector('[data-action="resume"]');
  if (sync && resume && sync.hidden !== paused) {
    const moveFocus = document.activeElement === (paused ? sync : resume);
    sync.hidden = paused;
    resume.hidden = !paused;
    if (moveFocus) (paused ? resume : sync).focus();
  }
}

// "Last run": when (relative, full time on hover), what it brought, and what the tables hold now.
function showLastRun(row) {
  const run = JSON.parse(row.dataset.run || '{}');
  const cell = part(row, 'last-run');
  if (!run.status || ['queued', 'running'].includes(run.status) && !run.finished_at) {
    if (!run.status) cell.textContent = 'Never synced';
    return;
  }
  const when = run.finished_at || run.started_at;
  const outcome = run.status === 'succeeded' ? 'Synced' : run.status === 'completed_with_errors' ? 'Partly synced' : 'Failed';
  const detail = run.status === 'failed'
    ? [run.error || 'the sync failed']
    : [total(run) ? plural(total(run), 'new record', 'new records') : 'no new records', `${plural(Number(row.dataset.rows || 0), 'row', 'rows')} in total`];
  const first = document.createElement('span');
  first.className = 'when';
  first.append(`${outcome} `, when ? timeElement(when, PAGE_LOCALE) : '');
  const second = document.createElement('span');
  second.className = 'muted detail';
  second.textContent = detail.join(' · ');
  cell.replaceChildren(first, second);
}

function syncing(row, on) {
  row.toggleAttribute('data-syncing', on);
  // aria-disabled, not disabled: a disabled button would drop the keyboard user's focus.
  row.querySelector('[data-action="sync"]')?.setAttribute('aria-disabled', String(on));
  showHealth(row);
}

async function finished(row, run) {
  if (row.dataset.startedRun && Number(run.id) < Number(row.dataset.startedRun)) return; // an older run's late news
  syncing(row, false);
  // A failure's reason is under "Last run": said once, not twice side by side.
  part(row, 'progress').textContent = run.status === 'failed'
    ? 'Failed: see Last run'
    : `Finished: ${plural(total(run), 'new record', 'new records')}`;
  row.dataset.run = JSON.stringify(run);
  try {
    const response = await fetch(`/integrations/${row.dataset.serverId}/summary`, { headers: { 'X-CSRF-Token': config.csrf } });
    if (response.ok) row.dataset.rows = (await response.json()).rows;
  } catch {
    // the total stays as it was; the run's own numbers are shown either way
  }
  showLastRun(row);
  stale(row);
}

// Every row watches its connection while the page is open: health stays live, and a run that
// finishes (started here, in another tab, or by a schedule) shows its outcome.
const watchers = new Map();
function watch(row) {
  const serverId = Number(row.dataset.serverId);
  watchers.get(serverId)?.();
  let ready;
  // "Sync now" waits for the watcher's first answer, so the run it starts is seen as new.
  row.primed = new Promise((resolve) => { ready = resolve; setTimeout(resolve, 3000); });
  const stop = Peliqan.watchServer({
    identityToken: token,
    serverId,
    onChange: (status) => {
      const changed = row.dataset.status !== status.health_status;
      row.dataset.status = status.health_status;
      showHealth(row);
      if (changed) {
        stale(row, status.health_status);
        // The setup was finished elsewhere (another tab, the API): offer what a set-up row offers.
        // (Not while the modal is open: it reloads the page itself when it closes.)
        if (!modalOpen && row.querySelector('[data-action="finish"]') && !PENDING_SETUP.includes(status.health_status)) location.reload();
      }
      ready();
    },
    onRunFinished: (run) => run && finished(row, run),
    onError: async (error) => {
      ready();
      if (watchers.get(serverId) !== stop) return;
      if (error.code === 'token_expired' || error.code === 'token_revoked') {
        try {
          await getToken();
          watch(row); // the watcher stopped on the 401: start again with the fresh token
        } catch {
          say('Your session has expired: reload the page.');
        }
      }
    },
  });
  watchers.set(serverId, stop);
}

async function act(row, action) {
  const serverId = Number(row.dataset.serverId);
  const name = row.getAttribute('aria-label');
  const progress = part(row, 'progress');
  if (message && action !== 'delete') say(''); // a new action: the last message is done with
  try {
    if (action === 'sync') {
      if (row.hasAttribute('data-syncing')) return;
      syncing(row, true);
      progress.textContent = 'Starting…';
      await row.primed;
      let runId = null;
      try {
        const result = await withToken((t) => Peliqan.syncServer({ identityToken: t, serverId }));
        runId = result.run_data?.[0]?.pipeline_run_id ?? null;
      } catch (error) {
        if (error.code !== 'sync_already_running') throw error; // already running: follow that run
      }
      row.dataset.startedRun = runId ?? '';
      // A run that failed at once may already be reported by the watcher: never go back to "Running…".
      if (row.hasAttribute('data-syncing')) progress.textContent = 'Running…';
    } else if (action === 'resume') {
      syncing(row, true);
      progress.textContent = 'Starting…';
      row.dataset.startedRun = '';
      await row.primed;
      await withToken((t) => Peliqan.enableServer({ identityToken: t, serverId }));
      row.dataset.status = 'RE_ENABLED';
      showHealth(row);
      // The sync a resumed connection owes, now (or the one its schedule just started): the row
      // follows it like "Sync now".
      try {
        const result = await withToken((t) => Peliqan.syncServer({ identityToken: t, serverId }));
        row.dataset.startedRun = result.run_data?.[0]?.pipeline_run_id ?? '';
      } catch (error) {
        if (error.code !== 'sync_already_running') throw error;
      }
      if (row.hasAttribute('data-syncing')) progress.textContent = 'Running…';
      say(`${name} resumed: it syncs now.`); // (showHealth moved the focus from Resume to Sync now)
    } else if (action === 'finish') {
      widget.open({ serverId }); // the modal resumes at the pending step (sign-in or choice)
    } else if (action === 'reauthorise') {
      const result = await withToken((t) => Peliqan.reAuthoriseServer({ identityToken: t, serverId }));
      if (result.auth_uri) say(`Sign in to ${name} again in the new tab.`, row, (health) => health !== 'RE_AUTHORISING');
      watch(row); // poll at a short interval again: the new health shows soon
    } else if (action === 'refresh') {
      await withToken((t) => Peliqan.manualRefreshSaltEdge({ identityToken: t, serverId }));
      say('The bank’s refresh page opened in a new tab. Confirm there, then choose “Sync now” to fetch the new transactions.', row, () => false);
    } else if (action === 'delete') {
      if (!confirm(`Delete the connection “${name}”? Its synced data is deleted too.`)) return;
      const response = await fetch(`/integrations/${serverId}/delete`, { method: 'POST', headers: { 'X-CSRF-Token': config.csrf } });
      if (!response.ok) throw new Error((await response.json()).detail);
      watchers.get(serverId)?.();
      watchers.delete(serverId);
      row.remove();
      if (!document.querySelector('tr[data-server-id]')) {
        document.querySelector('table.connections').hidden = true;
        document.getElementById('no-connections').hidden = false;
      }
      say(`Deleted ${name}.`);
      document.getElementById('connections-heading').focus(); // the focused button is gone
    }
  } catch (error) {
    if (action === 'sync' || action === 'resume') {
      progress.textContent = '';
      syncing(row, false);
    }
    say(`${name}: ${error.message}`, row);
  }
}

for (const row of document.querySelectorAll('tr[data-server-id]')) {
  if (part(row, 'progress').textContent) syncing(row, true); // a run was going on when the page loaded
  showHealth(row);
  showLastRun(row);
  watch(row);
}
// Relative times move on while the page is open.
setInterval(() => document.querySelectorAll('tr[data-server-id]').forEach(showLastRun), 30e3);
document.querySelector('table.connections')?.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (button) act(button.closest('tr'), button.dataset.action);
});

// Activity: events the BFF sent to Acme Books' back-end by webhook, polled from our own server.
const activityList = document.getElementById('activity');
const shownEvents = new Set();
async function pollActivity() {
  try {
    const response = await fetch('/integrations/activity', { cache: 'no-store' });
    if (response.ok) {
      const { events } = await response.json();
      for (const event of [...events].reverse()) {
        if (shownEvents.has(event.id)) continue;
        shownEvents.add(event.id);
        const item = document.createElement('li');
        item.textContent = event.text;
        if (event.at) item.append(' ', timeElement(event.at, PAGE_LOCALE));
        activityList.prepend(item);
      }
      document.getElementById('no-activity').hidden = shownEvents.size > 0;
    }
  } finally {
    setTimeout(pollActivity, document.hidden ? 10000 : 2000);
  }
}
pollActivity();
