// Type definitions for peliqan-status.js (the widget's words for connection states and times),
// written by hand. A module of its own, so the loader stays small:
//
//   import { describeHealth, timeElement } from "https://BFF/embed/v1/peliqan-status.js";
//
// No DOM needed except for timeElement(); safe to import where `window` is missing.

import type { HealthStatus, Locale } from "./peliqan-integration";

/** How a partner page shows a state: the same words and colours as the widget. */
export type HealthTone = "success" | "warning" | "danger" | "info" | "neutral";

export interface HealthDescription {
  /** e.g. "Healthy", "Needs your attention", "Finish setup", "Syncing…" (in the locale). */
  label: string;
  tone: HealthTone;
  /** The code described (`"SYNCING"` for a running sync), or `null`. */
  status: HealthStatus | "SYNCING" | string | null;
}

/**
 * Human words for a connection's state. `status` is a `health_status`, or a health object
 * (`{health_status, running?}`: a running sync reads "Syncing…"). Unknown codes keep their code
 * with a `"neutral"` tone. `AUTHORIZING` and `CONFIG_SELECT` read "Finish setup": offer
 * `instance.open({serverId})` (peliqan-integration.js) for them instead of "Sync now".
 */
export function describeHealth(
  status: HealthStatus | string | { health_status: HealthStatus | string; running?: boolean } | null | undefined,
  locale?: Locale,
): HealthDescription;

/** "2 minutes ago", "in 3 hours" (`Intl.RelativeTimeFormat`); `""` for an invalid date. */
export function formatRelativeTime(when: Date | string | number, locale?: Locale, now?: number): string;

/** A `<time datetime>` element with the relative text and the full localised time as its `title`. */
/** An empty `<time>` for `null`/`undefined` (a run that has not finished: `run.finished_at`). */
export function timeElement(when: Date | string | number | null | undefined, locale?: Locale, now?: number): HTMLTimeElement;

/** The states that cannot sync yet ("Finish setup"). */
export const PENDING_SETUP: readonly HealthStatus[];
