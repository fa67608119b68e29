"""Every operation of the API: its stable ``operationId``, tag, body, query parameters and answers.

Keyed by method and path as the router has them (``{id}`` without a convertor). An ``operationId``
is part of the contract: generated clients name their functions after it, so it never changes
once released (a new path gets a new one; ``tests/released_operation_ids.json`` lists the
released ones). ``tests/test_openapi.py`` checks that every route outside the sandbox has an
entry here and that no entry is left without a route.

The routes parse their bodies with these models (``bff.http.parse_body``; query parameters are
still checked by the routes, with the error wording the contract fixes), and
``tests/contract_check.py`` holds every in-process test's answers, and every body the server
took, to them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from . import queries as qp
from . import requests as rq
from . import responses as rs

Answers = Mapping[int, tuple[Any, str]]  # status → (model, or None for no body; description)


@dataclass(frozen=True)
class Operation:
    id: str
    tag: str
    answers: Answers
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    content_type: str = "application/json"
    # The proxy passes the provider's status and body through: its errors are not only ours.
    errors: str = "Error"


PARTNER, CONNECTIONS, SYNC, WAREHOUSE, QUERY_TABLES = "partner", "connections", "sync", "warehouse", "query-tables"
WRITEBACK, WEBHOOKS, SCRIPTS, EMBED, META = "writeback", "webhooks", "scripts", "embed", "meta"
TAGS = {
    PARTNER: "The partner itself, its sub-accounts and their tokens (partner token).",
    CONNECTIONS: "The connector catalogue and a sub-account's connections (integrate or identity token).",
    SYNC: "Sync runs, their status and the connection's health.",
    WAREHOUSE: "The sub-account's warehouse: tables and rows (identity token).",
    QUERY_TABLES: "Saved SELECTs over the customer's tables, one-off queries, SQL access.",
    WRITEBACK: "Writes to the provider through a connection, and raw API calls (identity token).",
    WEBHOOKS: "The partner's webhook and its deliveries (partner token).",
    SCRIPTS: "Scheduled scripts in the customer's account (identity token).",
    EMBED: "The widget's documents, scripts and the OAuth2 pages.",
    META: "Health and the API description.",
    "sandbox": "Fake providers for demos and tests (not part of the contract: their shapes are theirs).",
}
NO_BODY = None


def ok(model: Any, description: str = "Success") -> Answers:
    return {200: (model, description)}


@functools.cache
def page_of(model: type[BaseModel]) -> type[BaseModel]:
    """``Page[Run]`` named ``RunPage`` in the document (and in generated clients)."""
    return type(f"{model.__name__}Page", (rs.Page[model],), {"__module__": rs.__name__})  # type: ignore[valid-type]


def page(model: type[BaseModel]) -> Answers:
    return ok(page_of(model))


_CONNECTION = ok(rs.Connection)
_SUB_ACCOUNT_CREATED = {201: (rs.SubAccount, "Created")}
_TOKEN = ok(rs.Token)
_REVOKED = ok(rs.TokensRevoked)
_DELETED = {204: (NO_BODY, "Deleted")}

OPERATIONS: dict[tuple[str, str], Operation] = {
    # -- partner ---------------------------------------------------------------------------------------
    ("GET", "/api/partner"): Operation("getPartner", PARTNER, ok(rs.Partner)),
    ("POST", "/api/partner/rotate-token"): Operation(
        "rotatePartnerToken",
        PARTNER,
        ok(rs.Partner, "The new token (the old one is dead, and so are the customer tokens minted with it)"),
        body=rq.RotateToken,
        body_required=False,
    ),
    ("POST", "/api/partner/revoke"): Operation(
        "revokePartnerTokens", PARTNER, ok(rs.Partner, "Every token of the partner is dead")
    ),
    ("PUT", "/api/partner/origins"): Operation("setPartnerOrigins", PARTNER, ok(rs.Partner), body=rq.PartnerOrigins),
    ("POST", "/api/partner/sub-account"): Operation(
        "createSubAccount", PARTNER, _SUB_ACCOUNT_CREATED, body=rq.SubAccountFields
    ),
    ("POST", "/api/sub-account"): Operation(
        "createSubAccountAlias", PARTNER, _SUB_ACCOUNT_CREATED, body=rq.SubAccountFields
    ),
    ("GET", "/api/partner/sub-accounts"): Operation("listSubAccounts", PARTNER, page(rs.SubAccount), query=qp.Paging),
    ("GET", "/api/sub-accounts"): Operation("listSubAccountsAlias", PARTNER, page(rs.SubAccount), query=qp.Paging),
    ("POST", "/api/partner/sub-account/integrate"): Operation(
        "mintIntegrateToken",
        PARTNER,
        ok(rs.Token, "An integrate token (the sub-account is created on first use)"),
        body=rq.SubAccountFields,
        body_required=False,
        query=qp.WhichSubAccount,
    ),
    ("POST", "/api/sub-account/integrate"): Operation(
        "mintIntegrateTokenForExisting", PARTNER, _TOKEN, query=qp.WhichSubAccount
    ),
    ("GET", "/api/partner/sub-account/identity"): Operation(
        "mintIdentityToken", PARTNER, _TOKEN, query=qp.IdentityQuery
    ),
    ("GET", "/api/sub-account/identity"): Operation("mintIdentityTokenAlias", PARTNER, _TOKEN, query=qp.IdentityQuery),
    ("POST", "/api/partner/sub-account/{account_id}/revoke-tokens"): Operation(
        "revokeSubAccountTokens", PARTNER, _REVOKED
    ),
    ("POST", "/api/sub-account/{account_id}/revoke-tokens"): Operation(
        "revokeSubAccountTokensAlias", PARTNER, _REVOKED
    ),
    ("POST", "/api/partner/sub-account/{account_id}/database-credentials"): Operation(
        "createDatabaseCredentials",
        QUERY_TABLES,
        ok(rs.DatabaseCredentials),
        body=rq.DatabaseCredentialsRequest,
        body_required=False,
    ),
    ("GET", "/api/partner/sub-account/{account_id}/export"): Operation(
        "exportSubAccount",
        PARTNER,
        ok(NO_BODY, "The customer's database as a pg_dump archive (custom format, for pg_restore)"),
        content_type="application/octet-stream",
    ),
    ("PUT", "/api/partner/sub-account/{account_id}/warehouse"): Operation(
        "setSubAccountWarehouse",
        PARTNER,
        ok(rs.OwnWarehouse, "The customer's database is on that server (moved there if it was elsewhere)"),
        body=rq.OwnWarehouseRequest,
    ),
    ("DELETE", "/api/partner/sub-account/{account_id}"): Operation(
        "deleteSubAccount", PARTNER, {204: (NO_BODY, "Deleted, with its database and roles")}
    ),
    # -- webhooks -------------------------------------------------------------------------------------------
    ("PUT", "/api/partner/webhook"): Operation(
        "setWebhook",
        WEBHOOKS,
        {201: (rs.Webhook, "Created (with secret)"), 200: (rs.Webhook, "Changed")},
        body=rq.WebhookSettings,
    ),
    ("GET", "/api/partner/webhook"): Operation("getWebhook", WEBHOOKS, ok(rs.Webhook)),
    ("DELETE", "/api/partner/webhook"): Operation("deleteWebhook", WEBHOOKS, {204: (NO_BODY, "Removed")}),
    ("POST", "/api/partner/webhook/rotate-secret"): Operation(
        "rotateWebhookSecret", WEBHOOKS, ok(rs.Webhook, "With the new secret")
    ),
    ("GET", "/api/partner/webhook/deliveries"): Operation(
        "listWebhookDeliveries", WEBHOOKS, page(rs.WebhookDelivery), query=qp.Paging
    ),
    ("POST", "/api/partner/webhook/deliveries/{delivery_id}/redeliver"): Operation(
        "redeliverWebhook", WEBHOOKS, {202: (rs.Redelivery, "Queued again")}
    ),
    # -- connections --------------------------------------------------------------------------------------------
    ("GET", "/api/servertypes"): Operation(
        "listServertypes", CONNECTIONS, page(rs.Servertype), query=qp.ServertypesQuery
    ),
    ("POST", "/api/servers"): Operation(
        "createServer",
        CONNECTIONS,
        {201: (rs.Connection, "Created (OAuth2: with oauth_url and oauth_nonce)")},
        body=rq.ConnectionCreate,
    ),
    ("GET", "/api/servers"): Operation("listServers", CONNECTIONS, page(rs.Connection), query=qp.Paging),
    ("GET", "/api/server/{id}"): Operation("getServer", CONNECTIONS, _CONNECTION),
    ("PATCH", "/api/server/{id}"): Operation("updateServer", CONNECTIONS, _CONNECTION, body=rq.ConnectionChange),
    ("DELETE", "/api/server/{id}"): Operation("deleteServer", CONNECTIONS, _DELETED),
    ("GET", "/api/server/{id}/logs"): Operation("listServerLogs", CONNECTIONS, page(rs.Log), query=qp.Paging),
    ("GET", "/api/server/{id}/config-options"): Operation(
        "getConfigOptions", CONNECTIONS, ok(rs.ConfigOptions), query=qp.LocaleQuery
    ),
    ("POST", "/api/server/{id}/config"): Operation(
        "saveConfig", CONNECTIONS, ok(rs.Connection, "Ready to sync"), body=rq.ConfigChoice
    ),
    ("POST", "/api/server/{id}/reauthorise"): Operation(
        "reauthoriseServer",
        CONNECTIONS,
        ok(rs.Reauthorisation | rs.Connection, "A consent URL, the form, or the connection with new credentials"),
        body=rq.Credentials,
        body_required=False,
        query=qp.LocaleQuery,
    ),
    ("POST", "/api/server/{id}/manual-refresh"): Operation("getManualRefreshUrl", CONNECTIONS, ok(rs.ManualRefresh)),
    ("POST", "/api/server/{id}/disable"): Operation("disableServer", CONNECTIONS, ok(rs.Connection, "DISABLED")),
    ("POST", "/api/server/{id}/enable"): Operation("enableServer", CONNECTIONS, ok(rs.Connection, "RE_ENABLED")),
    ("POST", "/api/embed/session"): Operation(
        "createEmbedSession", EMBED, ok(rs.EmbedSession), body=rq.EmbedSessionRequest
    ),
    # -- sync ------------------------------------------------------------------------------------------------------
    ("POST", "/api/server/{id}/sync"): Operation(
        "syncServer",
        SYNC,
        {
            200: (rs.SyncStarted, "Finished within ?wait= (with `run`)"),
            202: (rs.SyncStarted, "Queued (or still running after ?wait=)"),
        },
        body=rq.SyncRequest,
        body_required=False,
        query=qp.WaitQuery,
    ),
    ("GET", "/api/server/{id}/health"): Operation(
        "getServerHealth",
        SYNC,
        {200: (rs.Health, "Success"), 304: (NO_BODY, "Not modified (If-None-Match)")},
    ),
    ("GET", "/api/server/{id}/sync-status"): Operation("getServerSyncStatus", SYNC, ok(rs.SyncStatus)),
    ("GET", "/api/server/{id}/runs"): Operation("listServerRuns", SYNC, page(rs.Run), query=qp.Paging),
    # -- the warehouse --------------------------------------------------------------------------------------------
    ("GET", "/api/applications"): Operation(
        "listApplications", WAREHOUSE, page(rs.Database), query=qp.ApplicationsQuery
    ),
    ("GET", "/api/database/tables/database/{database_id}"): Operation(
        "listTables", WAREHOUSE, page(rs.Table), query=qp.Paging
    ),
    ("GET", "/api/database/rows/table/{table_id}"): Operation("listRows", WAREHOUSE, page(rs.Row), query=qp.RowsQuery),
    ("POST", "/api/table"): Operation(
        "createQueryTable", QUERY_TABLES, {201: (rs.Table, "Created")}, body=rq.QueryTableCreate
    ),
    ("POST", "/table"): Operation(
        "createQueryTableAlias", QUERY_TABLES, {201: (rs.Table, "Created")}, body=rq.QueryTableCreate
    ),
    ("GET", "/api/table/{table_id}"): Operation("getQueryTable", QUERY_TABLES, ok(rs.Table)),
    ("PATCH", "/api/table/{table_id}"): Operation(
        "updateQueryTable", QUERY_TABLES, ok(rs.Table), body=rq.QueryTableChange
    ),
    ("DELETE", "/api/table/{table_id}"): Operation("deleteQueryTable", QUERY_TABLES, _DELETED),
    ("POST", "/api/database/query"): Operation("runQuery", QUERY_TABLES, ok(rs.QueryResult), body=rq.QueryRun),
    # -- writeback --------------------------------------------------------------------------------------------------
    ("GET", "/api/server/{id}/objects"): Operation("listObjects", WRITEBACK, page(rs.WritableObject)),
    ("GET", "/api/server/{id}/records/{object}"): Operation(
        "searchRecords", WRITEBACK, page(rs.Row), query=qp.RecordSearchQuery
    ),
    ("POST", "/api/server/{id}/records/{object}"): Operation(
        "addRecord", WRITEBACK, {201: (rs.Record, "Created")}, body=rq.RecordFields, query=qp.WriteQuery
    ),
    ("PUT", "/api/server/{id}/records/{object}"): Operation(
        "upsertRecord",
        WRITEBACK,
        {201: (rs.Record, "Created"), 200: (rs.Record, "Updated")},
        body=rq.RecordFields,
        query=qp.UpsertQuery,
    ),
    ("GET", "/api/server/{id}/records/{object}/{record_id}"): Operation(
        "getRecord", WRITEBACK, ok(rs.Record), query=qp.WriteQuery
    ),
    ("PATCH", "/api/server/{id}/records/{object}/{record_id}"): Operation(
        "updateRecord", WRITEBACK, ok(rs.Record), body=rq.RecordFields, query=qp.WriteQuery
    ),
    ("DELETE", "/api/server/{id}/records/{object}/{record_id}"): Operation(
        "deleteRecord", WRITEBACK, _DELETED, query=qp.WriteQuery
    ),
    # -- scripts -----------------------------------------------------------------------------------------------------
    ("POST", "/api/interface"): Operation("createScript", SCRIPTS, {201: (rs.Script, "Created")}, body=rq.ScriptCreate),
    ("POST", "/interface"): Operation(
        "createScriptAlias", SCRIPTS, {201: (rs.Script, "Created")}, body=rq.ScriptCreate
    ),
    ("GET", "/api/interface"): Operation("listScripts", SCRIPTS, page(rs.Script), query=qp.Paging),
    ("GET", "/api/interface/{script_id}"): Operation("getScript", SCRIPTS, ok(rs.Script)),
    ("PATCH", "/api/interface/{script_id}"): Operation("updateScript", SCRIPTS, ok(rs.Script), body=rq.ScriptChange),
    ("DELETE", "/api/interface/{script_id}"): Operation(
        "deleteScript", SCRIPTS, {204: (NO_BODY, "Deleted (a run is stopped)")}
    ),
    ("POST", "/api/interface/{script_id}/run"): Operation(
        "runScript",
        SCRIPTS,
        {200: (rs.ScriptRun, "Finished within ?wait="), 202: (rs.ScriptRun, "Queued or running")},
        query=qp.WaitQuery,
    ),
    ("GET", "/api/interface/{script_id}/runs"): Operation(
        "listScriptRuns", SCRIPTS, page(rs.ScriptRun), query=qp.Paging
    ),
    ("GET", "/api/interface/{script_id}/runs/{run_id}"): Operation("getScriptRun", SCRIPTS, ok(rs.ScriptRun)),
    ("GET", "/api/interface/{script_id}/state"): Operation("getScriptState", SCRIPTS, ok(rs.ScriptState)),
    ("PUT", "/api/interface/{script_id}/state"): Operation(
        "setScriptState", SCRIPTS, ok(rs.ScriptState), body=rq.ScriptStateBody
    ),
    # -- embed and meta ------------------------------------------------------------------------------------------------
    ("POST", "/oauth/start"): Operation("startOAuth", EMBED, ok(rs.OAuthStarted), body=rq.OAuthStart),
    ("GET", "/healthz"): Operation("getHealthz", META, ok(rs.HealthCheck)),
}
_PROXIED: Answers = {}
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    OPERATIONS[(_method, "/api/server/{id}/proxy/{path}")] = Operation(
        f"proxy{_method.title()}",
        WRITEBACK,
        _PROXIED,
        body=None if _method in ("GET", "DELETE") else rq.RecordFields,
        body_required=False,
        content_type="*/*",
        errors="The provider's answer: its status, headers and body as it gave them (or an Error of ours)",
    )
# Pages, scripts and images: their answers are not JSON.
for (_method, _path), (_id, _type) in {
    ("GET", "/embed/v1/peliqan-integration.js"): ("getWidgetLoader", "text/javascript"),
    ("GET", "/embed/v1.3/peliqan-integration.js"): ("getWidgetLoaderV13", "text/javascript"),
    ("GET", "/embed/v1/{name}"): ("getWidgetAsset", "*/*"),
    ("GET", "/embed/v1.3/{name}"): ("getWidgetAssetV13", "*/*"),
    ("GET", "/embed/v1/connect"): ("getConnectDocument", "text/html"),
    ("GET", "/embed/v1/panel"): ("getPanelDocument", "text/html"),
    ("GET", "/embed/v1/logos/{name}"): ("getConnectorLogo", "image/svg+xml"),
    ("GET", "/oauth/start"): ("getOAuthStartPage", "text/html"),
    ("GET", "/oauth/callback"): ("completeOAuth", "text/html"),
    ("GET", "/favicon.ico"): ("getFavicon", "image/x-icon"),
}.items():
    OPERATIONS[(_method, _path)] = Operation(
        _id, META if _path == "/favicon.ico" else EMBED, ok(NO_BODY), content_type=_type
    )
