// Acme Books' /integrations/embedded: the widget's "Your connections" panel instead of our own table.
const config = JSON.parse(document.getElementById('acme-config').textContent);
const Peliqan = await import(`${config.bffUrl}/embed/v1/peliqan-integration.js`);

async function getToken() {
  const response = await fetch('/integrations/token', { method: 'POST', headers: { 'X-CSRF-Token': config.csrf } });
  if (!response.ok) throw new Error('Could not refresh the integration token');
  return (await response.json()).token;
}

const panel = Peliqan.mountConnections('#connections-panel', { integrationToken: config.token, getToken, locale: config.locale });
Peliqan.initialize({ integrationToken: config.token, getToken, locale: config.locale, onClose: () => panel.refresh() });
