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
  onConnected: (data) => { connected = true; say(`Connected ${data.name}.`); },
  onClose: () => { if (connected) location.reload(); },
  onError: (error) => say(`Error: ${error.message}`),
});

// SDK calls use the integrate token (accepted as identityToken); on expiry, mint a new one once.
async function withToken(fn) {
  try {
    return await fn(token);
  } catch (error) {
    if (error.code === 'token_expired' || error.code === 'token_revoked') return fn(await getToken());
    throw error;
  }
}

const watchers = new Map();
function watch(row) {
  const serverId = Number(row.dataset.serverId);
  watchers.get(serverId)?.();
  const health = row.querySelector('[data-health]');
  const progress = row.querySelector('[data-progress]');
  const lastRun = row.querySelector('[data-last-run]');
  const stop = Peliqan.watchServer({
    identityToken: token,
    serverId,
    onChange: (status) => { health.textContent = status.health_status; },
    onRunFinished: (run) => {
      const records = run ? Object.values(run.records || {}).reduce((a, b) => a + b, 0) : 0;
      progress.textContent = run ? `Finished: ${run.status}, ${records} records` : 'Finished';
      if (run) lastRun.textContent = `${run.status}, ${run.finished_at}`;
      stop();
      watchers.delete(serverId);
    },
  });
  watchers.set(serverId, stop);
}

async function act(row, action) {
  const serverId = Number(row.dataset.serverId);
  const progress = row.querySelector('[data-progress]');
  try {
    if (action === 'sync') {
      const result = await withToken((t) => Peliqan.syncServer({ identityToken: t, serverId }));
      progress.textContent = 'Syncing…';
      row.querySelector('[data-health]').textContent = result.health_status;
      watch(row);
    } else if (action === 'reauthorise') {
      await withToken((t) => Peliqan.reAuthoriseServer({ identityToken: t, serverId }));
      say('Re-authorisation opened.');
    } else if (action === 'refresh') {
      await withToken((t) => Peliqan.manualRefreshSaltEdge({ identityToken: t, serverId }));
      say('The bank refresh page opened in a new tab.');
    } else if (action === 'delete') {
      const response = await fetch(`/integrations/${serverId}/delete`, { method: 'POST', headers: { 'X-CSRF-Token': config.csrf } });
      if (!response.ok) throw new Error((await response.json()).detail);
      say(`Deleted ${row.getAttribute('aria-label')}.`);
      row.remove();
    }
  } catch (error) {
    progress.textContent = '';
    say(`Error: ${error.message}`);
  }
}

document.querySelector('table.connections')?.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (button) act(button.closest('tr'), button.dataset.action);
});
