// Human words for connection states and times, imported (and re-exported) by the loader, so that
// every partner page shows the same words as the widget. No DOM needed, safe without `window`.
const LABELS = {
  en: {
    OK: 'Connected', HEALTHY: 'Healthy', COMPLETED_WITH_ERRORS: 'Partly synced', ERROR: 'Needs your attention',
    AUTHORIZING: 'Finish setup', CONFIG_SELECT: 'Finish setup', CHECKING: 'Checking…', RE_AUTHORISING: 'Signing in again…',
    RE_AUTHORISED: 'Reconnected', DISABLED: 'Paused', RE_ENABLED: 'Resumed', SYNCING: 'Syncing…', UNKNOWN: 'Unknown',
  },
  nl: {
    OK: 'Gekoppeld', HEALTHY: 'In orde', COMPLETED_WITH_ERRORS: 'Deels gesynchroniseerd', ERROR: 'Vraagt je aandacht',
    AUTHORIZING: 'Koppeling afronden', CONFIG_SELECT: 'Koppeling afronden', CHECKING: 'Controleren…', RE_AUTHORISING: 'Opnieuw aanmelden…',
    RE_AUTHORISED: 'Opnieuw gekoppeld', DISABLED: 'Gepauzeerd', RE_ENABLED: 'Hervat', SYNCING: 'Synchroniseren…', UNKNOWN: 'Onbekend',
  },
  fr: {
    OK: 'Connecté', HEALTHY: 'Opérationnel', COMPLETED_WITH_ERRORS: 'Synchronisé en partie', ERROR: 'Requiert votre attention',
    AUTHORIZING: 'Terminer la configuration', CONFIG_SELECT: 'Terminer la configuration', CHECKING: 'Vérification…',
    RE_AUTHORISING: 'Nouvelle connexion…', RE_AUTHORISED: 'Reconnecté', DISABLED: 'En pause', RE_ENABLED: 'Reprise',
    SYNCING: 'Synchronisation…', UNKNOWN: 'Inconnu',
  },
  de: {
    OK: 'Verbunden', HEALTHY: 'In Ordnung', COMPLETED_WITH_ERRORS: 'Teilweise synchronisiert', ERROR: 'Braucht Ihre Aufmerksamkeit',
    AUTHORIZING: 'Einrichtung abschließen', CONFIG_SELECT: 'Einrichtung abschließen', CHECKING: 'Wird geprüft…',
    RE_AUTHORISING: 'Erneute Anmeldung…', RE_AUTHORISED: 'Erneut verbunden', DISABLED: 'Pausiert', RE_ENABLED: 'Fortgesetzt',
    SYNCING: 'Wird synchronisiert…', UNKNOWN: 'Unbekannt',
  },
};
const TONES = {
  OK: 'success', HEALTHY: 'success', RE_AUTHORISED: 'success', RE_ENABLED: 'success',
  COMPLETED_WITH_ERRORS: 'warning', AUTHORIZING: 'warning', CONFIG_SELECT: 'warning', RE_AUTHORISING: 'warning',
  ERROR: 'danger', CHECKING: 'info', SYNCING: 'info', DISABLED: 'neutral',
};
// Connections in these states cannot sync yet: offer "Finish setup" (instance.open({serverId})).
export const PENDING_SETUP = ['AUTHORIZING', 'CONFIG_SELECT'];

const pick = (locale) => LABELS[String(locale || 'en').slice(0, 2).toLowerCase()] || LABELS.en;

// `status` is a health_status string, or a health object ({health_status, running?}): a running
// sync reads "Syncing…" whatever the health. Unknown states keep their code, in a neutral tone.
export function describeHealth(status, locale = 'en') {
  const code = typeof status == 'object' && status ? (status.running ? 'SYNCING' : status.health_status) : status;
  const words = pick(locale);
  if (!(code in TONES)) return { label: code ? String(code) : words.UNKNOWN, tone: 'neutral', status: code ?? null };
  return { label: words[code], tone: TONES[code], status: code };
}

const STEPS = [[60, 'second'], [60, 'minute'], [24, 'hour'], [7, 'day'], [4.35, 'week'], [12, 'month'], [Infinity, 'year']];

// "2 minutes ago" / "in 5 hours" in `locale`, for a Date, an ISO string or epoch milliseconds.
export function formatRelativeTime(when, locale = 'en', now = Date.now()) {
  const date = when instanceof Date ? when : new Date(when);
  if (isNaN(date)) return '';
  let value = (date.getTime() - now) / 1000;
  const format = new Intl.RelativeTimeFormat(locale, { numeric: 'auto' });
  for (const [size, unit] of STEPS) {
    if (Math.abs(value) < size) return format.format(Math.round(value), unit);
    value /= size;
  }
  return '';
}

// A <time datetime> element: relative text, the full localised time as its tooltip.
export function timeElement(when, locale = 'en', now = Date.now()) {
  const el = document.createElement('time');
  if (when == null || when === '') return el; // not yet (new Date(null) would say 1970)
  const date = when instanceof Date ? when : new Date(when);
  if (isNaN(date)) return el;
  el.dateTime = date.toISOString();
  el.title = date.toLocaleString(locale, { dateStyle: 'full', timeStyle: 'short' });
  el.textContent = formatRelativeTime(date, locale, now);
  return el;
}
