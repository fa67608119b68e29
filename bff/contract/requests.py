"""What the API takes in JSON bodies, as pydantic models (query parameters: :mod:`.queries`).

The routes parse their bodies with these models (``await bff.http.parse_body(request, Model)``), so
what the document says is what is taken; a refusal keeps the wording the contract promises
(``{code: "validation_error", errors: {field: message}}``): a field validator raises the exact
sentence, ``say`` words pydantic's own errors per field, ``report_as`` names the field an error
is reported under.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from ..connector_text import LOCALES
from ..errors import ApiError, Invalid, validation_error
from ..external_ids import normalise_external_id
from ..query_tables import MAX_QUERY_LENGTH
from ..scripts.service import MAX_SCHEDULE, MIN_SCHEDULE
from ..services.schedules import MAX_SYNC_FREQUENCY, MIN_SYNC_FREQUENCY
from ..warehouse_own import NOT_A_POSTGRESQL_URL, parse_url
from ..webhooks import EVENT_TYPES
from .input import Body, FieldsRefused, FormBody, OpenBody, blank_is_absent, context_of, text

Locale = Literal[LOCALES]  # type: ignore[valid-type]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
Frequency = Annotated[int, Field(ge=MIN_SYNC_FREQUENCY, le=MAX_SYNC_FREQUENCY)]
Text200 = Annotated[str, Field(max_length=200)]
EXTERNAL_ID_REQUIRED = "This field is required: your own unique id for this customer."
UNKNOWN_CONNECTOR = "Unknown connector; see GET /api/servertypes."
NONCE_AND_ORIGIN = "Send the nonce and the origin it came from."
STATE_SHAPE = 'Send {"state": <any JSON value>}.'
PATCHABLE = ("name", "sync_frequency", "table_frequencies", "tables")
MAX_QUERY_ROWS = 10_000


# -- partner -----------------------------------------------------------------------------------------


class RotateToken(Body):
    say = {"*unknown": "Unknown field; send keep_customer_tokens or nothing."}

    keep_customer_tokens: bool = Field(
        default=False, description="Keep the integrate and identity tokens minted with the old partner token."
    )


class PartnerOrigins(Body):
    say = {
        "*unknown": "Unknown field; send origins.",
        "origins": "Send a list of at most 50 origins, like https://app.example.com.",
    }

    origins: list[Annotated[str, Field(max_length=300)]] = Field(
        max_length=50, description="Browser origins such as https://app.example.com."
    )

    @field_validator("origins")
    @classmethod
    def _normalised(cls, origins: list[str]) -> list[str]:
        from ..settings import normalise_origin  # SettingsError is a ValueError: its message is the field's

        return [normalise_origin(origin) for origin in origins]


class SubAccountFields(OpenBody):
    """A customer of the partner; ``external_id`` is the partner's own unique id for it."""

    say = {
        "external_id:missing": EXTERNAL_ID_REQUIRED,
        "email:string_pattern_mismatch": "Must be an email address.",
        "language:string_pattern_mismatch": "Must be a language code such as `en` or `nl`.",
    }

    external_id: Annotated[str, Field(min_length=1, max_length=255)] | int
    first_name: Text200 | None = None
    last_name: Text200 | None = None
    company_name: Text200 | None = None
    email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    language: Annotated[str, Field(max_length=10, pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")] | None = None

    @field_validator("external_id", mode="before")
    @classmethod
    def _external_id(cls, value: Any) -> str:
        """NFC-normalised and stripped; invisible, control and space-like characters refused."""
        if value is None or value == "":
            raise ValueError(EXTERNAL_ID_REQUIRED)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError("Must be a string (or an integer).")
        return normalise_external_id(str(value))

    _blank_is_absent = field_validator("first_name", "last_name", "company_name", "email", "language", mode="before")(
        blank_is_absent
    )

    def profile(self) -> dict[str, str]:
        """The fields given besides external_id."""
        names = ("first_name", "last_name", "company_name", "email", "language")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class WebhookSettings(Body):
    say = {"*unknown": "Unknown field; send url and events.", "url:missing": "Must be an http:// or https:// URL."}

    url: str = Field(max_length=2048, description="An https URL the BFF can reach.")
    events: list[EventType] | None = Field(default=None, min_length=1, description="Every event when absent.")

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str:
        from ..webhooks import UnsafeTarget, validate_url

        try:
            return validate_url(value)
        except UnsafeTarget as exc:
            raise ValueError(str(exc)) from None

    @field_validator("events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> list[str] | None:
        if value is None:
            return None
        known = ", ".join(EVENT_TYPES)
        if not isinstance(value, list) or not value or not all(isinstance(e, str) for e in value):
            raise ValueError(f"Must be a non-empty list of event types: {known}.")
        unknown = [e for e in value if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"Unknown event type(s): {', '.join(unknown)}. Known: {known}.")
        return list(dict.fromkeys(value))


# -- connections -------------------------------------------------------------------------------------------


class ConnectionCreate(FormBody):
    """``servertype_id`` and an optional ``name``; the connector's connect-form fields (e.g.
    ``api_key``) go next to them."""

    say = {"servertype_id": UNKNOWN_CONNECTOR, "name": "Must be text of at most 200 characters."}

    servertype_id: int | str
    name: Text200 | None = None
    oauth_strict: bool = Field(
        default=False,
        description="OAuth2: oauth_url then goes on only with oauth_nonce handed over by the window that opened it;"
        " without, oauth_url also works opened on its own, after the person presses Continue on a page naming the"
        " partner, the customer and the connector.",
    )
    __pydantic_extra__: dict[str, str | int | float]

    _blank_is_absent = field_validator("name", mode="before")(blank_is_absent)


class Credentials(FormBody):
    """The connector's connect-form fields, tested with the provider before they are stored."""

    oauth_strict: bool = Field(default=False, description="OAuth2: as for createServer, for auth_uri.")
    __pydantic_extra__: dict[str, str | int | float]


class ConfigChoice(FormBody):
    """``{<config_select.field>: [value, …]}`` (one value may be sent bare), from the options of
    GET /api/server/{id}/config-options."""

    __pydantic_extra__: dict[str, list[str | int] | str | int]


class ConnectionChange(Body):
    """Checked against the connection: ``context={"streams": [...], "frequency_streams": [...]}``
    (the connector's table names, and those the connection syncs)."""

    say = {"*unknown": f"Cannot be changed here; send any of: {', '.join(PATCHABLE)}."}

    # Optional, but not null: `null` is refused (SkipJsonSchema keeps None out of the document).
    name: Annotated[str, Field(min_length=1, max_length=200)] | SkipJsonSchema[None] = None
    sync_frequency: Frequency | None = Field(default=None, description="Seconds between syncs; null: no schedule.")
    table_frequencies: dict[str, Frequency] | None = None
    tables: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="The tables to sync and schedule (the others are left out); null: all."
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ValueError("Must be text of 1 to 200 characters.")
        return value.strip()

    @field_validator("sync_frequency", mode="before")
    @classmethod
    def _frequency(cls, value: Any) -> int | None:
        from ..services.schedules import ScheduleError, parse_frequency

        try:
            return parse_frequency(value, "sync_frequency")
        except ScheduleError as exc:
            raise FieldsRefused(exc.errors or {}) from None

    @field_validator("table_frequencies", mode="before")
    @classmethod
    def _table_frequencies(cls, value: Any, info: ValidationInfo) -> dict[str, int]:
        from ..services.schedules import ScheduleError, parse_table_frequencies

        try:
            return parse_table_frequencies(value, context_of(info, "frequency_streams"))
        except ScheduleError as exc:
            raise FieldsRefused(exc.errors or {}) from None

    @field_validator("tables", mode="before")
    @classmethod
    def _tables(cls, value: Any, info: ValidationInfo) -> list[str] | None:
        """The tables chosen (in the connector's order), None for every one."""
        known: list[str] = context_of(info, "streams")
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
            raise ValueError(
                f"Must be a non-empty list of table names (of {', '.join(known)}), or null for every table."
            )
        unknown = [t for t in value if t not in known]
        if unknown:
            raise ValueError(f"Unknown table(s): {', '.join(unknown)}. This connection has: {', '.join(known)}.")
        return [name for name in known if name in value]


class SyncRequest(Body):
    say = {"*unknown": "Unknown field; send tables, full and categories.", "tables": "Must be a list of table names."}

    tables: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, description="All when absent.")
    full: bool = Field(default=False, description="Forget the cursors; rows the provider no longer has are marked.")
    categories: list[Annotated[str, Field(min_length=1, max_length=64)] | int] | None = Field(
        default=None, description="Only these divisions (partitions) of a connector that has them; not with full."
    )

    @field_validator("tables", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise ValueError("Must be a list of table names.")
        return list(dict.fromkeys(value)) or None

    @field_validator("categories", mode="before")
    @classmethod
    def _categories(cls, items: Any) -> list[str] | None:
        """Partition values (division codes), as strings or integers."""
        if items is None:
            return None
        values = (
            [str(v) for v in items if isinstance(v, (str, int)) and not isinstance(v, bool)]
            if isinstance(items, list)
            else []
        )
        if (
            not isinstance(items, list)
            or len(values) != len(items)
            or not all(0 < len(v) <= 64 and v.strip() == v for v in values)
        ):
            raise ValueError("Must be a list of division codes (strings or integers).")
        return list(dict.fromkeys(values)) or None


class EmbedSessionRequest(OpenBody):
    parent_origin: str

    @classmethod
    def refused(cls, errors: dict[str, str]) -> Exception:
        return origin_not_allowed()


def origin_not_allowed() -> ApiError:
    return ApiError(403, "origin_not_allowed", "This page's origin is not registered for this partner.")


class OAuthStart(OpenBody):
    """``{nonce, opener_origin}`` (handed over by the opener) or ``{link}`` (oauth_url's own ticket, on Continue)."""

    say = {"link": "Send the link's ticket.", "nonce": NONCE_AND_ORIGIN}
    report_as = {"opener_origin": "nonce"}

    nonce: Annotated[str, Field(max_length=128)] | None = None
    opener_origin: Annotated[str, Field(max_length=300)] | None = None
    link: Annotated[str, Field(max_length=128)] | None = None

    @model_validator(mode="after")
    def _one_ticket(self) -> OAuthStart:
        if (self.nonce is None and self.link is None) or (self.nonce is not None and self.opener_origin is None):
            raise FieldsRefused({"nonce": NONCE_AND_ORIGIN})
        return self

    @property
    def by_link(self) -> bool:
        """The person pressed Continue on the page of an ``oauth_url`` opened on its own."""
        return self.link is not None and self.nonce is None


# -- the warehouse ------------------------------------------------------------------------------------------


class QueryTableCreate(OpenBody):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)] = Field(
        description="One SELECT (or WITH … SELECT) over the customer's own tables."
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str | None:
        return text(value, max_length=100, required=True, strip=True)

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> str | None:
        return text(value, max_length=MAX_QUERY_LENGTH, required=True)


class QueryTableChange(Body):
    say = {"*unknown": "Unknown field; a query table has a name and a query."}

    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)] | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str | None:
        return text(value, max_length=100, required=False, strip=True)

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> str | None:
        return text(value, max_length=MAX_QUERY_LENGTH, required=False)


class QueryRun(OpenBody):
    say = {"limit": f"Must be a whole number from 1 to {MAX_QUERY_ROWS}."}

    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_LENGTH)]
    limit: int = Field(default=1000, ge=1, le=MAX_QUERY_ROWS)
    write: bool = Field(
        default=False,
        description="One statement that may change the customer's own database (INSERT/UPDATE/DELETE in synced"
        " tables, tables in schemas of its own); the answer adds status and rowcount.",
    )

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> str | None:
        return text(value, max_length=MAX_QUERY_LENGTH, required=True)


class DatabaseCredentialsRequest(Body):
    say = {"*unknown": "Unknown field; send write (true or false) or nothing."}

    write: bool = Field(default=False, description="A login that may also write the customer's own database.")


class OwnWarehouseRequest(Body):
    say = {"*unknown": "Unknown field; send url.", "url:missing": NOT_A_POSTGRESQL_URL}

    url: Annotated[str, Field(min_length=1, max_length=2000)] = Field(
        description="The customer's own PostgreSQL (14+): postgresql://user:password@host:port/db of a role with"
        " CREATEDB and CREATEROLE. Kept encrypted; never shown again."
    )

    @field_validator("url", mode="before")
    @classmethod
    def _a_postgresql_url(cls, value: Any) -> Any:
        try:
            parse_url(value)  # the same checks the move makes, with their words
        except Invalid as exc:
            raise FieldsRefused(exc.errors or {}) from None
        return value


# -- writeback ------------------------------------------------------------------------------------------------


class RecordFields(OpenBody):
    """The record's fields, as GET /api/server/{id}/objects lists them."""


class ScriptFields(Body):
    say = {"*unknown": "Unknown field; a script has a name, raw_code and schedule."}
    required: ClassVar[bool] = True

    @field_validator("name", mode="before", check_fields=False)
    @classmethod
    def _name(cls, value: Any) -> str | None:
        return text(value, max_length=100, required=cls.required, strip=True)

    @field_validator("raw_code", mode="before", check_fields=False)
    @classmethod
    def _code(cls, value: Any, info: ValidationInfo) -> str | None:
        from ..scripts.service import MAX_CODE_BYTES, check_code

        code = text(value, max_length=MAX_CODE_BYTES, required=cls.required)
        problem = None if code is None else check_code(code, info.data.get("name") or "")
        if problem:
            raise ValueError(f"The code does not compile: {problem}")
        return code

    @field_validator("schedule", mode="before", check_fields=False)
    @classmethod
    def _schedule(cls, value: Any) -> int | None:
        from ..scripts.service import parse_schedule

        return parse_schedule(value)

    @classmethod
    def refused(cls, errors: dict[str, str]) -> Exception:
        # A script that does not compile is told so in the detail too.
        return validation_error(
            errors, errors["raw_code"] if list(errors) == ["raw_code"] else "Some fields are invalid."
        )


class ScriptCreate(ScriptFields):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    raw_code: Annotated[str, Field(min_length=1)]
    schedule: Annotated[int, Field(ge=MIN_SCHEDULE, le=MAX_SCHEDULE)] | None = Field(
        default=None, description="Seconds between runs; null: run by hand only."
    )


class ScriptChange(ScriptFields):
    required = False

    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    raw_code: Annotated[str, Field(min_length=1)] | None = None
    schedule: Annotated[int, Field(ge=MIN_SCHEDULE, le=MAX_SCHEDULE)] | None = None


class ScriptStateBody(Body):
    say = {"*unknown": STATE_SHAPE, "state": STATE_SHAPE}
    report_as = {"*unknown": "state"}

    state: Any = Field(description="Any JSON value, at most 1 MB.")

    @field_validator("state")
    @classmethod
    def _at_most_a_megabyte(cls, state: Any) -> Any:
        from ..scripts import MAX_STATE_BYTES

        size = len(json.dumps(state).encode())
        if size > MAX_STATE_BYTES:
            raise ValueError(f"Is {size} bytes as JSON; at most {MAX_STATE_BYTES} are kept.")
        return state
