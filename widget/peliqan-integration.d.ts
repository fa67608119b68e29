// Type definitions for peliqan-integration.js (the embed loader and SDK), written by hand.
// Served next to the module: https://BFF/embed/v1/peliqan-integration.d.ts
//
//   <script type="module" src="https://BFF/embed/v1/peliqan-integration.js"></script>
//   import { initialize, syncServer } from "https://BFF/embed/v1/peliqan-integration.js";

/** A connection's health, as `GET /api/server/{id}/health` and the connection objects report it. */
export type HealthStatus =
  | "AUTHORIZING"
  | "CONFIG_SELECT"
  | "CHECKING"
  | "OK"
  | "HEALTHY"
  | "COMPLETED_WITH_ERRORS"
  | "ERROR"
  | "RE_AUTHORISING"
  | "RE_AUTHORISED"
  | "DISABLED"
  | "RE_ENABLED";

export type Locale = "en" | "nl" | "fr" | "de";

/** A connection id as the API returns it. */
export type ServerId = number | string;

/**
 * Every failure of this module: rejected SDK promises, `onError`, and `{type: "error"}` events.
 * `code` is the API's snake_case `code` (e.g. `token_expired`, `credentials_rejected`,
 * `sync_already_running`) or one of the client-side codes listed in {@link PeliqanErrorCode}.
 * `status` is the HTTP status, or 0 when no response was involved.
 */
export class PeliqanError extends Error {
  constructor(code: string, message: string, status?: number);
  readonly name: "PeliqanError";
  readonly code: PeliqanErrorCode | (string & {});
  readonly status: number;
  /** Only with `code: "popup_blocked"`: the URL the blocked tab should have opened. */
  readonly url?: string;
}

export type PeliqanErrorCode =
  /** Bad arguments to an SDK function (the message says what to pass). */
  | "invalid_argument"
  /** fetch failed: network down, wrong `apiBase`, or this page's origin is not registered (CORS). */
  | "network_error"
  /** `initialize()` was called where there is no `window` (server-side rendering). */
  | "no_window"
  /** `open()` on an instance after `destroy()`. */
  | "destroyed"
  /** The SDK module (or the connect window's, `peliqan-modal.js`) could not be loaded from the BFF. */
  | "load_failed"
  /** `getToken` threw, rejected, or resolved to something other than a non-empty string. */
  | "token_unavailable"
  /** `reAuthoriseServer` needs the credentials form, but no live instance exists: call `initialize()` first. */
  | "not_initialized"
  /** `reAuthoriseServer` / `manualRefreshSaltEdge`: the browser blocked the new tab (see `error.url`). */
  | "popup_blocked"
  /** The server answered with something this module does not understand. */
  | "bad_response"
  /** The embedding page's origin is not registered for the token's partner. */
  | "origin_not_allowed"
  /** A connection ended in `ERROR` (e.g. OAuth consent denied); the message is the server's `detail`. */
  | "connection_failed"
  /** The OAuth sign-in was not completed within 15 minutes. */
  | "timeout"
  /** The connect window was opened outside an iframe or with a malformed `parent` origin. */
  | "parent_not_allowed"
  | "token_expired"
  | "token_invalid"
  | "token_revoked"
  | "credentials_rejected"
  | "validation_error";

/** `onConnected(responseData)` and the `connected` event's `data`. */
export interface ConnectedData {
  id: ServerId;
  name: string;
  servertype_id: ServerId;
  /** The connector's `name`, e.g. "hubspot". */
  connector: string;
  health_status: HealthStatus;
  account_id: ServerId;
  external_id: string;
}

/**
 * CSS values for the connect window's look. Each key sets a custom property inside the iframe
 * (`colorPrimary` → `--pq-color-primary`, …) through CSSOM, so a strict CSP is not an issue.
 * Keep text contrast ≥ 4.5:1 when you change colours.
 */
export interface Theme {
  /** Buttons, links, focus ring. Default `#1d4ed8`. */
  colorPrimary?: string;
  /** Text on primary buttons. Default `#fff`. */
  colorPrimaryText?: string;
  /** The card. Default `#fff`. */
  colorBackground?: string;
  /** Default `#111827`. */
  colorText?: string;
  /** Help text, counts. Default `#4b5563`. */
  colorMuted?: string;
  /** Input and tile borders. Default `#6b7280`. */
  colorBorder?: string;
  /** Errors and required marks. Default `#b91c1c`. */
  colorDanger?: string;
  /** The card's corner radius, e.g. `"12px"`. */
  borderRadius?: string;
  /** A CSS font-family list. Fonts must be installed or `data:`: the iframe loads nothing else. */
  fontFamily?: string;
}

/** Events passed to `onEvent`: a union discriminated on `type`. */
export type PeliqanEvent =
  /** The connect window has loaded (it is created by `initialize()`, before any click). */
  | { type: "ready" }
  | { type: "open" }
  | { type: "close" }
  /** The user picked a connector (or `selectedConnector` skipped the catalogue). */
  | { type: "connector_selected"; connector: string; servertype_id: ServerId }
  | { type: "connected"; data: ConnectedData }
  | { type: "error"; error: PeliqanError };

export type PeliqanEventType = PeliqanEvent["type"];

/** Options of a single `open()`; they override the `initialize()` ones for that opening. */
export interface OpenOptions {
  /** Connector `name`s to offer; others are hidden. */
  availableConnectors?: string[];
  /** Skip the catalogue and show this connector's form. Must be in `availableConnectors` if both are given. */
  selectedConnector?: string;
  /** Open the credentials form (or the OAuth sign-in) of this existing connection. */
  reauthServerId?: ServerId;
  /**
   * "Finish setup": resume this connection at its pending step — the sign-in of a connection left
   * in `AUTHORIZING`, the choice (e.g. divisions) of one left in `CONFIG_SELECT`. A connection that
   * is already set up shows "Connected".
   */
  serverId?: ServerId;
}

/**
 * `initialize()` options. Unknown keys and wrong types throw a `TypeError` that says what to pass.
 * Pass `integrationToken`, `getToken`, or both.
 */
export interface InitializeOptions {
  /** The integrate token your back-end minted (`POST /api/partner/sub-account/integrate/`). Never put it in a URL. */
  integrationToken?: string;
  /**
   * Called when the token is missing or within 2 minutes of expiry (the iframe knows `expires_at`);
   * resolve to a fresh integrate token. A user who sat on a form keeps what they typed.
   */
  getToken?: () => string | Promise<string>;
  /** Connector `name`s to offer, e.g. `["hubspot", "exact_online"]`. */
  availableConnectors?: string[];
  /** Skip the catalogue and open this connector's form. */
  selectedConnector?: string;
  /** A connection was added (or re-authorised). */
  onConnected?: (responseData: ConnectedData) => void;
  /** The modal closed (Escape, the close button, "Done", `close()`, or `destroy()` while open). */
  onClose?: () => void;
  onError?: (error: PeliqanError) => void;
  onEvent?: (event: PeliqanEvent) => void;
  /** The connect window's language. Default `"en"`. */
  locale?: Locale;
  theme?: Theme;
  /** The overlay's z-index. Default `2147483000`. */
  zIndex?: number;
  /**
   * Your page's CSP nonce. The loader injects no `<style>` or `<script>` (styles are set through
   * CSSOM, which `style-src` without `'unsafe-inline'` allows), so today nothing carries it; it is
   * applied to anything a future version injects.
   */
  nonce?: string;
  /**
   * The trigger: a CSS selector or an element. Default `#peliqan-integration-button` (not an error
   * if absent; call `open()` yourself). A trigger that is not a native button gets `role="button"`,
   * `tabindex="0"` and Enter/Space activation; `destroy()` removes what was added.
   */
  button?: string | Element;
  /** Inline mode: render the connect window inside this element instead of a modal overlay. */
  container?: string | Element;
  /**
   * The BFF's URL, for this instance only. Default: the origin this module was loaded from. The SDK
   * functions take their own `apiBase` argument (another instance's never redirects them).
   */
  apiBase?: string;
}

export interface PeliqanInstance {
  /** Show the modal (inline mode: reset to the first step). Throws `TypeError` on bad options. */
  open(options?: OpenOptions): void;
  close(): void;
  /** Remove every node and listener this instance added and restore the trigger. Idempotent. */
  destroy(): void;
}

/**
 * One instance per trigger (or `container`): called again on an element that has a live instance,
 * it returns that instance and ignores the new options (a React effect without cleanup, run twice
 * by StrictMode, still gives one dialog); `destroy()` frees the element. Instances may be open
 * together: the page is inert and unscrollable until the last one closes, then as it was before.
 */
export function initialize(options: InitializeOptions): PeliqanInstance;

/** Every SDK function takes these. An integrate token is accepted as `identityToken`. */
export interface ServerArgs {
  identityToken: string;
  serverId: ServerId;
  /** The BFF's URL when it is not where this module was loaded from. */
  apiBase?: string;
}

export interface SyncServerArgs extends ServerArgs {
  /** Sync only these tables. */
  tables?: string[];
  /** Forget the cursors, read everything, and mark rows the provider no longer has as deleted. */
  full?: boolean;
}

/** The connection object (`GET /api/server/{id}`), as `disableServer`/`enableServer` answer it. */
export interface ServerResponse {
  id: ServerId;
  name: string;
  servertype_id: number | null;
  connector: string;
  health_status: HealthStatus;
  detail: string | null;
  created_at: string;
  last_run: PipelineRun | null;
  /** Rows the connection's tables hold now (rows marked deleted not counted; 0 before the first sync). */
  live_count: number;
  /** Seconds between scheduled syncs; null = on demand only. */
  sync_frequency: number | null;
  /** Per-table overrides, e.g. `{deals: 3600}`. */
  table_frequencies: Record<string, number>;
  /** When the next scheduled sync is due (ISO 8601), or null. */
  next_sync_at: string | null;
  account_id: number;
  external_id: string;
}

export interface SyncResponse {
  /** The connection's id as a string, as the source document shows it. */
  server_id: string;
  health_status: HealthStatus;
  run_data: { pipeline_run_id: number; task_id: string }[];
  task_id: string;
  detail: string;
  syncing: boolean;
}

export interface HealthResponse {
  id: ServerId;
  name: string;
  health_status: HealthStatus;
  detail?: string | null;
}

export interface SyncRunStatus {
  running: boolean;
  pipeline_run_id: number | null;
}

export interface PipelineRun {
  id: number;
  pipeline_run_id: number;
  task_id: string;
  status: string;
  started_at: string | null;
  finished_at: string | null;
  /** Records written, per table. */
  records: Record<string, number>;
  /** The tables this run was limited to, or null for all. */
  tables: string[] | null;
  error: string | null;
  /** A full sync (`syncServer({full: true})`). */
  full?: boolean;
  /** `api` (asked for) or `schedule`. */
  trigger?: string;
}

export interface ConnectFormField {
  name: string;
  label: string;
  type: "text" | "password" | "select" | "url" | "email" | "number" | "textarea";
  required: boolean;
  secret: boolean;
  help: string;
  options: { value: string | number; label: string }[];
}

/** OAuth connections: `auth_uri` (already opened in a new tab). Key/login: `form` (opened in the modal). */
export type ReauthoriseResponse = { auth_uri: string } | { form: { fields: ConnectFormField[] } };

/** `POST /api/server/{id}/sync`. Rejects with `sync_already_running` (409) while a run is going. */
export function syncServer(args: SyncServerArgs): Promise<SyncResponse>;
export function getServerHealthStatus(args: ServerArgs): Promise<HealthResponse>;
export function getServerSyncRunStatus(args: ServerArgs): Promise<SyncRunStatus>;
/**
 * Call it from a click handler: a blank tab opens synchronously and is navigated to the returned
 * `auth_uri`. Key/login connections open the credentials form in the modal of the newest
 * `initialize()`d instance (`not_initialized` if there is none); the blank tab is closed.
 */
export function reAuthoriseServer(args: ServerArgs): Promise<ReauthoriseResponse>;
/** Call it from a click handler: opens the returned `refresh_url` in a new tab. */
export function manualRefreshSaltEdge(args: ServerArgs): Promise<{ refresh_url: string }>;
/** `POST /api/server/{id}/disable` → `DISABLED`: no scheduled runs; `syncServer` rejects with `connection_disabled`. */
export function disableServer(args: ServerArgs): Promise<ServerResponse>;
/** `POST /api/server/{id}/enable` → `RE_ENABLED`, then a sync at once; rejects with `connection_not_disabled` (409) otherwise. */
export function enableServer(args: ServerArgs): Promise<ServerResponse>;

export interface WatchServerArgs extends ServerArgs {
  /** Called with the first health answer and whenever it changes. */
  onChange?: (health: HealthResponse) => void;
  /**
   * Called when a sync run has finished since the last poll (seen running before, or a new run id
   * that is already done), with that run from `GET /api/server/{id}/runs?page_size=1`.
   * `onChange` has already reported the health that run left behind.
   */
  onRunFinished?: (run: PipelineRun | null) => void;
  /** Called on a failed poll; 401/403/404 also stop the watch. */
  onError?: (error: PeliqanError) => void;
  /** First (and minimum) delay between polls in ms, default 1000, at least 250. Backs off ×1.5 to 15 s while nothing changes. */
  interval?: number;
}

/** Call it, or its `stop` property, to stop watching. */
export type StopWatching = (() => void) & { stop(): void };

/**
 * Polls health (conditional requests: ETag → 304) and sync status; backs off while nothing changes,
 * pauses while the tab is hidden, resumes at once when it is shown, and is nudged by `syncServer`.
 * Throws `PeliqanError` (`invalid_argument`) synchronously on bad arguments.
 */
export function watchServer(args: WatchServerArgs): StopWatching;

export interface MountConnectionsOptions {
  /** The integrate token your back-end minted. Pass this, `getToken`, or both. */
  integrationToken?: string;
  /** Asked when the token is missing or has under 2 minutes left. */
  getToken?: () => Promise<string>;
  locale?: Locale;
  theme?: Theme;
  /** A connection changed in the panel (or its modal). */
  onChange?: (change: ConnectionsChange) => void;
  onError?: (error: PeliqanError) => void;
  /** Overrides the BFF origin derived from the loader's URL. */
  apiBase?: string;
}

export type ConnectionsChange =
  | { type: "sync_started"; server_id: ServerId }
  | { type: "sync_finished"; server_id: ServerId; run: PipelineRun | null }
  | { type: "deleted"; server_id: ServerId }
  /** "Pause syncing" / "Resume syncing" in the panel (`disableServer` / `enableServer`). */
  | { type: "disabled" | "enabled"; server_id: ServerId }
  | { type: "connected"; server_id: ServerId; connection: ConnectedData };

export interface ConnectionsPanel {
  /** Settles once the panel's code is loaded and the iframe mounted; rejects with a `TypeError` on bad options. */
  ready: Promise<unknown>;
  /** Reload the list, e.g. after your own "Add connection" modal closed. */
  refresh(): Promise<void>;
  /** Idempotent: removes the iframe, every listener, and the modal the panel opened. */
  destroy(): void;
}

/**
 * The customer's connections (name and id) with health badge and, when one needs attention, why; the
 * last sync ("Failed" when it did), the last sync's new records and the next sync; and the actions
 * Sync now (live progress), Re-authorise, Finish setup, Manual refresh and Delete (confirmed inside
 * the panel). Renders in an iframe on the BFF's origin inside `element`; its code loads only now.
 */
export function mountConnections(element: string | Element, options: MountConnectionsOptions): ConnectionsPanel;

export interface PeliqanApi {
  initialize: typeof initialize;
  mountConnections: typeof mountConnections;
  syncServer: typeof syncServer;
  getServerHealthStatus: typeof getServerHealthStatus;
  getServerSyncRunStatus: typeof getServerSyncRunStatus;
  reAuthoriseServer: typeof reAuthoriseServer;
  manualRefreshSaltEdge: typeof manualRefreshSaltEdge;
  disableServer: typeof disableServer;
  enableServer: typeof enableServer;
  watchServer: typeof watchServer;
  PeliqanError: typeof PeliqanError;
}

declare const Peliqan: PeliqanApi;
export default Peliqan;

declare global {
  interface Window {
    /** Defined once by the first copy of the module that runs. */
    Peliqan?: PeliqanApi;
  }
  /** The same object as a global, for pages that load the module with a plain script tag and then
   *  call `Peliqan.initialize(…)` (it exists once the module has run). */
  var Peliqan: PeliqanApi;
  interface WindowEventMap {
    /** Fired on `window` once `window.Peliqan` is defined; `detail` is the same object. */
    "peliqan:ready": CustomEvent<PeliqanApi>;
  }
}
