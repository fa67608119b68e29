// Acme Books' own code on its Integrations page: the embed exactly as DESIGN §5 shows it,
// plus buttons wired to the SDK functions. Nothing here ever sees a customer's credentials.
const config = JSON.parse(document.getElementById('acme-config').textContent);
const Peliqan = await import(`${config.bffUrl}/embed/v1/peliqan-integration.js`);
const announcer = document.getElementById('announcer');
let token = config.token;
let connected = false;

const say = (text) => { announcer.textContent = text; };

// Called by the widget when the integrate token is missing or about to expire.
async function getToken() {
  const response = await fetch('/integrations/token', { method: 'POST', headers: { 'X-CSRF-Token': config.csrf } });
  if (!response.ok) throw new Error('Could not refresh the integration token');
  token = (await response.json()).token;
  return token;
}

Peliqan.initialize({
  integrationToken: token,
  getToken,
  locale: config.locale,
  nonce: config.nonce,
  ...config.choice, // availableConnectors / selectedConnector, from ?connectors=…&connector=…
  onConnected: (data) => { connected = true; say(`Connected ${data.name}.`); },
  // The modal shows its own errors; the page keeps no stale message once it is closed.
  onClose: () => (connected ? location.reload() : say('')),
  onError: (error) => say(`Error: ${error.message}`),
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
const total = (run) => Object.values(run.records || {}).reduce((a, b) => a + b, 0);

function syncing(row, on) {
  row.toggleAttribute('data-syncing', on);
  // aria-disabled, not disabled: a disabled button would drop the keyboard user's focus.
  row.querySelector('[data-action="sync"]').setAttribute('aria-disabled', String(on));
}

function finished(row, run) {
  part(row, 'last-run').textContent = `${run.status}, ${total(run)} records${run.finished_at ? `, ${run.finished_at}` : ''}`;
  part(row, 'progress').textContent = `Finished: ${run.status}, ${total(run)} records`;
  syncing(row, false);
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
    onChange: (status) => { part(row, 'health').textContent = status.health_status; ready(); },
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
  try {
    if (action === 'sync') {
      if (row.hasAttribute('data-syncing')) return;
      syncing(row, true);
      progress.textContent = 'Starting…';
      await row.primed;
      try {
        const result = await withToken((t) => Peliqan.syncServer({ identityToken: t, serverId }));
        part(row, 'health').textContent = result.health_status;
      } catch (error) {
        if (error.code !== 'sync_already_running') throw error; // already running: follow that run
      }
      progress.textContent = 'Running…';
    } else if (action === 'reauthorise') {
      const result = await withToken((t) => Peliqan.reAuthoriseServer({ identityToken: t, serverId }));
      if (result.auth_uri) say(`Sign in to ${name} again in the new tab.`);
      watch(row); // poll at a short interval again: the new health shows soon
    } else if (action === 'refresh') {
      await withToken((t) => Peliqan.manualRefreshSaltEdge({ identityToken: t, serverId }));
      say('The bank’s refresh page opened in a new tab. Confirm there, then choose “Sync now” to fetch the new transactions.');
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
    if (action === 'sync') {
      progress.textContent = '';
      syncing(row, false);
    }
    say(`Error: ${error.message}`);
  }
}

for (const row of document.querySelectorAll('tr[data-server-id]')) {
  if (part(row, 'progress').textContent) syncing(row, true); // a run was going on when the page loaded
  watch(row);
}
document.querySelector('table.connections')?.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (button) act(button.closest('tr'), button.dataset.action);
});
