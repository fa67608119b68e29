// The Data page's states in the same words as the Integrations page (describeHealth from the widget).
const config = JSON.parse(document.getElementById('acme-config').textContent);
const { describeHealth } = await import(`${config.bffUrl}/embed/v1/peliqan-status.js`);
for (const item of document.querySelectorAll('[data-status]')) {
  const badge = item.querySelector('[data-health]');
  const { label, tone } = describeHealth(item.dataset.status, config.locale);
  badge.textContent = label;
  badge.dataset.tone = tone;
}
