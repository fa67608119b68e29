"""What the API answers, one model per shape. Fields the server always sends have no default
(required in the document); fields sent only sometimes have one. ``X | None`` is a field the
server can answer ``null`` for. Extra keys are allowed: a newer server may add fields."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Item = TypeVar("Item")
Time = str | None  # ISO 8601 (UTC, "Z"), null when not (yet) known


def no_null_defaults(schema: dict[str, Any]) -> None:
    """A field that may be left out has no ``default: null`` in the document: openapi-typescript
    would type it as always there."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=no_null_defaults)


class Error(Model):
    """Every 4xx/5xx: a ``code`` to branch on, a sentence, and per-field ``errors`` for ``validation_error``.
    Some codes carry one more key (``pipeline_run_id``, ``run_id``, ``id``)."""

    detail: str
    code: str
    errors: dict[str, str] | None = Field(default=None, description="Field name → what is wrong with it.")


class Page(Model, Generic[Item]):
    """One page of a list; ``next``/``previous`` are full URLs or null."""

    count: int = Field(ge=0)
    next: str | None
    previous: str | None
    results: list[Item]


# -- partner and sub-accounts -------------------------------------------------------------------


class Row(Model):
    """One row (or provider record): keys are field names, or ``field_<id>`` in the rows API unless
    ``user_field_names=true``."""


class Partner(Model):
    id: int
    name: str
    origins: list[str]
    token: str | None = Field(default=None, description="Only in the answer of rotate-token.")
    revoked: bool | None = Field(default=None, description="Only in the answer of revoke.")


class SubAccount(Model):
    id: int
    external_id: str
    first_name: str | None
    last_name: str | None
    email: str | None
    language: str | None
    company_name: str | None
    created_at: Time


class Token(Model):
    """An integrate or identity token; ``expires_in``/``expires_at`` are null for one that does not expire."""

    token: str
    expires_in: int | None
    expires_at: int | None
    account_id: int
    external_id: str


class TokensRevoked(Model):
    account_id: int
    external_id: str
    revoked: bool


class DatabaseCredentials(Model):
    """A SQL login for one customer's own database (read-only unless asked to write); a new password each call."""

    host: str
    port: int
    database: str
    user: str
    password: str
    schema_: str = Field(alias="schema")


class OwnWarehouse(Model):
    """Where the customer's database now is: its server by host and port (never the URL)."""

    server: str
    database: str
    moved: bool = Field(description="True when the database was moved there from another server.")


# -- catalogue and connections -----------------------------------------------------------------------


class Option(Model):
    value: str | int
    label: str


class FormField(Model):
    name: str
    label: str
    type: str
    required: bool
    secret: bool
    help: str
    options: list[Option]


class ConnectForm(Model):
    fields: list[FormField]


class ConfigSelectStep(Model):
    """The CONFIG_SELECT step: a choice among options the provider offers (e.g. divisions)."""

    field: str = Field(description="The key to send the choice under in POST /api/server/{id}/config.")
    label: str
    multiple: bool
    help: str


class Servertype(Model):
    id: int | str
    name: str
    display_name: str
    category: str
    description: str
    logo_url: str
    auth_type: str
    connect_form: ConnectForm
    capabilities: list[str]
    config_select: ConfigSelectStep | None
    streams: list[str]


class Run(Model):
    """A sync run."""

    id: int
    pipeline_run_id: int
    task_id: str
    status: str
    started_at: Time
    finished_at: Time
    resume_at: Time = Field(description="When a run paused by the provider's rate limit goes on.")
    records: dict[str, int] = Field(description="Rows written per table.")
    tables: list[str] | None = Field(description="The tables asked for; null: all of them.")
    categories: list[str] | None = Field(description="The divisions asked for; null: the connection's own.")
    error: str | None
    full: bool
    trigger: str


class Connection(Model):
    """A connection: never credentials or provider tokens."""

    id: int
    name: str
    servertype_id: int | str | None
    connector: str
    health_status: str
    detail: str | None
    config: dict[str, Any]
    created_at: Time
    last_run: Run | None
    live_count: int = Field(
        description="Rows its tables hold (deleted ones not counted): counted again after each run, otherwise at most every 10 s."
    )
    sync_frequency: int | None
    table_frequencies: dict[str, int]
    tables: list[str] | None = Field(default=None, description="The tables chosen to sync; null: every table.")
    next_sync_at: Time
    account_id: int
    external_id: str
    oauth_url: str | None = Field(
        default=None,
        description="OAuth2 (on create only): the sign-in's start page, to open in a new tab or window; it names the"
        " partner, the customer and the connector and goes on when the person presses Continue (or at once when"
        " the opener hands over oauth_nonce).",
    )
    oauth_nonce: str | None = Field(default=None, description="OAuth2: the nonce the sign-in page is opened with.")


class Log(Model):
    ts: Time
    level: str
    message: str
    pipeline_run_id: int | None


class ConfigOptions(Model):
    field: str
    label: str
    multiple: bool
    help: str
    options: list[Option]
    selected: list[str | int] = Field(description="The values chosen so far.")


class Reauthorisation(Model):
    """OAuth2: ``auth_uri`` (and ``oauth_nonce``); key/login without a body: the ``form`` to fill in;
    with new credentials: the connection (see Connection)."""

    id: int
    auth_uri: str | None = None
    oauth_nonce: str | None = None
    form: ConnectForm | None = None


class ManualRefresh(Model):
    id: int
    refresh_url: str


class EmbedSession(Model):
    account_id: int
    external_id: str
    partner_id: int
    expires_at: int | None
    locale: str | None


class Health(Model):
    id: int
    name: str
    health_status: str
    detail: str | None


class SyncStatus(Model):
    running: bool
    pipeline_run_id: int | None
    status: str | None


class RunRef(Model):
    pipeline_run_id: int
    task_id: str


class SyncStarted(Model):
    server_id: str = Field(description="The connection id, as a string (as the source document has it).")
    health_status: str
    run_data: list[RunRef]
    task_id: str
    detail: str
    syncing: bool
    full: bool
    run: Run | None = Field(default=None, description="The finished run, when it finished within ?wait=.")


# -- the warehouse ---------------------------------------------------------------------------------


class TableField(Model):
    id: int
    name: str
    type: str
    primary: bool


class Table(Model):
    """A synced table (``type: "synced"``) or a query table (``type: "query"``)."""

    id: int
    name: str
    type: Literal["synced", "query"]
    connection: int | None = Field(description="The connection a synced table comes from; null for a query table.")
    database_id: int
    row_count: int | None = Field(
        description="Every row, deleted ones included; null for a query table whose query broke."
    )
    live_count: int | None
    deleted_count: int | None = Field(description="Null for a query table without a _deleted_at column.")
    primary_key: list[str]
    fields: list[TableField]
    created_at: Time
    schema_: str | None = Field(
        default=None,
        alias="schema",
        description="A synced table's schema in the customer's database (its connection's).",
    )
    table: str | None = Field(default=None, description="A synced table's name inside that schema.")
    sql_name: str | None = Field(
        default=None, description='How SQL names a synced table, quoted and qualified: "exact online"."invoices".'
    )
    query: str | None = Field(default=None, description="A query table's SELECT.")
    updated_at: Time = Field(default=None, description="When a query table last changed.")
    error: str | None = Field(default=None, description="Why a query table cannot be read now.")


class Database(Model):
    id: int
    name: str
    type: str
    account_id: int
    external_id: str
    tables: list[Table] | None = Field(default=None, description="Unless ?exclude_tables=true.")


class QueryField(Model):
    name: str
    type: str


class QueryResult(Model):
    fields: list[QueryField]
    rows: list[dict[str, Any]]
    count: int
    truncated: bool
    status: str | None = Field(default=None, description="With write: PostgreSQL's command tag (DELETE 3).")
    rowcount: int | None = Field(default=None, description="With write: the rows the statement changed or returned.")


# -- writeback -------------------------------------------------------------------------------------------


class ObjectAction(Model):
    required: list[str]
    match_fields: list[str] | None = None
    strategy: str | None = None


class ObjectFieldSpec(Model):
    name: str
    type: str
    description: str


class WritableObject(Model):
    name: str
    description: str
    table: str | None
    actions: dict[str, ObjectAction]
    fields: list[ObjectFieldSpec]
    additional_fields: bool


class Record(Model):
    id: str | None
    record: Any = Field(description="The record as the provider answered it.")


# -- webhooks ------------------------------------------------------------------------------------------------


class Webhook(Model):
    url: str
    events: list[str]
    created_at: Time
    updated_at: Time
    secret: str | None = Field(default=None, description="Only when the webhook is created and on rotation.")


class DeliveryAttempt(Model):
    attempt: int
    url: str
    at: Time
    duration_ms: int | None
    status_code: int | None
    error: str | None


class WebhookDelivery(Model):
    id: int
    webhook_id: str
    type: str
    status: str
    attempts: list[DeliveryAttempt]
    next_attempt_at: Time
    created_at: Time
    delivered_at: Time
    payload: dict[str, Any]


class Redelivery(Model):
    id: int
    webhook_id: str
    status: str


# -- scripts ---------------------------------------------------------------------------------------------------


class ScriptRun(Model):
    id: int
    script_id: int
    status: Literal["queued", "running", "succeeded", "failed"]
    trigger: Literal["api", "schedule"]
    created_at: Time
    started_at: Time
    finished_at: Time
    exit_code: int | None
    output: str = Field(description="The last 64 KB of stdout and stderr.")
    error: str | None


class Script(Model):
    id: int
    name: str
    raw_code: str
    schedule: int | None
    next_run_at: Time
    created_at: Time
    updated_at: Time
    last_run: ScriptRun | None


class ScriptState(Model):
    state: Any


class HealthCheck(Model):
    status: Literal["ok"]


class OAuthStarted(Model):
    authorize_url: str
