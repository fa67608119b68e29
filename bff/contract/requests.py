"""What the API takes: JSON bodies and query parameters, as pydantic models.

A query model's fields are the operation's query parameters; a field whose type is an object
(:class:`RowFilters`, :class:`RecordMatch`) stands for a family of parameters named by a pattern
(OpenAPI ``style: form, explode: true``: each of its keys is a parameter of its own).
The routes check their input themselves, with the exact error wording the contract promises
(``{code: "validation_error", errors: {field: message}}``); these models say what that input is.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from ..connector_text import LOCALES
from ..http import MAX_ID, MAX_PAGE_SIZE, MAX_QUERY_INT
from ..query_tables import MAX_QUERY_LENGTH
from ..scripts.service import MAX_SCHEDULE, MIN_SCHEDULE
from ..services.schedules import MAX_SYNC_FREQUENCY, MIN_SYNC_FREQUENCY
from ..warehouse_reader import OPERATORS
from ..webhooks import EVENT_TYPES

Locale = Literal[LOCALES]  # type: ignore[valid-type]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
Frequency = Annotated[int, Field(ge=MIN_SYNC_FREQUENCY, le=MAX_SYNC_FREQUENCY)]
Text200 = Annotated[str, Field(max_length=200)]


def defaults_in_words(schema: dict[str, Any]) -> None:
    """A field that may be left out has no ``default`` in the document, but says it in words:
    openapi-typescript types a field with a default as one that must be sent."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop:
            default = prop.pop("default")
            if default is not None:
                said = f"Default: {json.dumps(default)}."
                prop["description"] = f"{prop['description']} {said}" if prop.get("description") else said


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=defaults_in_words)


class OpenBody(BaseModel):
    """A body whose keys are not fixed (a connector's form fields, a provider's record)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=defaults_in_words)


# -- partner -----------------------------------------------------------------------------------------


class RotateToken(Body):
    keep_customer_tokens: bool = Field(
        default=False, description="Keep the integrate and identity tokens minted with the old partner token."
    )


class PartnerOrigins(Body):
    origins: list[Annotated[str, Field(max_length=300)]] = Field(
        max_length=50, description="Browser origins such as https://app.example.com."
    )


class SubAccountFields(OpenBody):
    """A customer of the partner; ``external_id`` is the partner's own unique id for it."""

    external_id: Annotated[str, Field(min_length=1, max_length=255)] | int
    first_name: Text200 | None = None
    last_name: Text200 | None = None
    company_name: Text200 | None = None
    email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")] | None = None


class WebhookSettings(Body):
    url: str = Field(max_length=2048, description="An https URL the BFF can reach.")
    events: list[EventType] | None = Field(default=None, min_length=1, description="Every event when absent.")


# -- connections -------------------------------------------------------------------------------------------


class ConnectionCreate(OpenBody):
    """``servertype_id`` and an optional ``name``; the connector's connect-form fields (e.g.
    ``api_key``) go next to them."""

    servertype_id: int | str
    name: Text200 | None = None
    oauth_strict: bool = Field(
        default=False,
        description="OAuth2: oauth_url then goes on only with oauth_nonce handed over by the window that opened it;"
        " without, oauth_url also works opened on its own, after the person presses Continue on a page naming the"
        " partner, the customer and the connector.",
    )
    __pydantic_extra__: dict[str, str | int | float]


class Credentials(OpenBody):
    """The connector's connect-form fields, tested with the provider before they are stored."""

    oauth_strict: bool = Field(default=False, description="OAuth2: as for createServer, for auth_uri.")
    __pydantic_extra__: dict[str, str | int | float]


class ConfigChoice(OpenBody):
    """``{<config_select.field>: [value, …]}`` (one value may be sent bare), from the options of
    GET /api/server/{id}/config-options."""

    __pydantic_extra__: dict[str, list[str | int] | str | int]


class ConnectionChange(Body):
    # Optional, but not null: `null` is refused (SkipJsonSchema keeps None out of the document).
    name: Annotated[str, Field(min_length=1, max_length=200)] | SkipJsonSchema[None] = None
    sync_frequency: Frequency | None = Field(default=None, description="Seconds between syncs; null: no schedule.")
    table_frequencies: dict[str, Frequency] | None = None
    tables: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="The tables to sync and schedule (the others are left out); null: all."
    )


class SyncRequest(Body):
    tables: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, description="All when absent.")
    full: bool = Field(default=False, description="Forget the cursors; rows the provider no longer has are marked.")
    categories: list[Annotated[str, Field(min_length=1, max_length=64)] | int] | None = Field(
        default=None, description="Only these divisions (partitions) of a connector that has them; not with full."
    )


class EmbedSessionRequest(OpenBody):
    parent_origin: str


class OAuthStart(OpenBody):
    """``{nonce, opener_origin}`` (handed over by the opener) or ``{link}`` (oauth_url's own ticket, on Continue)."""

    nonce: Annotated[str, Field(max_length=128)] | None = None
    opener_origin: Annotated[str, Field(max_length=300)] | None = None
    link: Annotated[str, Field(max_length=128)] | None = None


# -- the warehouse ------------------------------------------------------------------------------------------


class QueryTableCreate(OpenBody):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)] = Field(
        description="One SELECT (or WITH … SELECT) over the customer's own tables."
    )


class QueryTableChange(Body):
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)] | None = None


class QueryRun(OpenBody):
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)]
    limit: int = Field(default=1000, ge=1, le=10_000)
    write: bool = Field(
        default=False,
        description="One statement that may change the customer's own database (INSERT/UPDATE/DELETE in synced"
        " tables, tables in schemas of its own); the answer adds status and rowcount.",
    )


class DatabaseCredentialsRequest(Body):
    write: bool = Field(default=False, description="A login that may also write the customer's own database.")


class OwnWarehouseRequest(Body):
    url: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="The customer's own PostgreSQL (14+): postgresql://user:password@host:port/db of a role with"
        " CREATEDB and CREATEROLE. Kept encrypted; never shown again."
    )


# -- writeback ------------------------------------------------------------------------------------------------


class RecordFields(OpenBody):
    """The record's fields, as GET /api/server/{id}/objects lists them."""


class ScriptCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    raw_code: Annotated[str, Field(min_length=1)]
    schedule: Annotated[int, Field(ge=MIN_SCHEDULE, le=MAX_SCHEDULE)] | None = Field(
        default=None, description="Seconds between runs; null: run by hand only."
    )


class ScriptChange(Body):
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    raw_code: Annotated[str, Field(min_length=1)] | None = None
    schedule: Annotated[int, Field(ge=MIN_SCHEDULE, le=MAX_SCHEDULE)] | None = None


class ScriptStateBody(Body):
    state: Any = Field(description="Any JSON value, at most 1 MB.")


# -- query parameters -------------------------------------------------------------------------------------------

PageNumber = Annotated[int, Field(ge=1, le=MAX_QUERY_INT)]
PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Paging(BaseModel):
    page: PageNumber | None = None
    page_size: PageSize | None = None


class WhichSubAccount(BaseModel):
    """One of the two says which sub-account."""

    account_id: Id | None = None
    external_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class IdentityQuery(WhichSubAccount):
    expire: bool | None = Field(default=None, description="false: a token that lasts until revoked.")


class LocaleQuery(BaseModel):
    locale: Locale | None = Field(default=None, description="The language of labels and help; English by default.")


class ServertypesQuery(LocaleQuery, Paging):
    pass


class WaitQuery(BaseModel):
    wait: Annotated[float, Field(ge=0, le=120)] | None = Field(
        default=None, description="Seconds to wait for the run to finish (200 with it) before answering 202."
    )


class ApplicationsQuery(Paging):
    exclude_tables: bool | None = None


_OPERATORS = "|".join(OPERATORS)


class RowFilters(OpenBody):
    """``filter__<field>__<operator>=<value>``: ``<field>`` a field name or ``field_<id>``,
    ``<operator>`` one of equal, not_equal, contains, higher_than, lower_than, empty, not_empty."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"propertyNames": {"pattern": f"^filter__.+__({_OPERATORS})$"}}
    )
    __pydantic_extra__: dict[str, str]


class RowsQuery(Paging):
    size: PageSize | None = Field(default=None, description="Another name for page_size.")
    user_field_names: bool | None = Field(default=None, description="Key rows by field name, not field_<id>.")
    search: str | None = Field(default=None, description="Rows whose text fields contain this.")
    order_by: str | None = Field(default=None, description="field,-field: `-` sorts descending.")
    updated_since: str | None = Field(default=None, description="An ISO 8601 time: rows synced at or after it.")
    include: str | None = Field(default=None, description="Comma-separated fields to return.")
    exclude: str | None = Field(default=None, description="Comma-separated fields to leave out.")
    filters: RowFilters | None = Field(default=None, description="filter__<field>__<operator>=<value>, any number.")


class WriteQuery(BaseModel):
    timeout: bool | None = Field(default=None, description="true: the short retry policy.")
    refresh: bool | None = Field(default=None, description="true: sync the object's table after success.")


class RecordMatch(OpenBody):
    """``<field>=<value>``: records whose field equals the value."""

    __pydantic_extra__: dict[str, str]


class RecordSearchQuery(WriteQuery):
    fields: RecordMatch | None = Field(default=None, description="<field>=<value>, any number.")


class UpsertQuery(WriteQuery):
    match: str = Field(description="The field an existing record is found by, e.g. email.")
