"""What the API takes in its query strings, as pydantic models: a model's fields are the
operation's query parameters; a field whose type is an object (:class:`RowFilters`,
:class:`RecordMatch`) stands for a family of parameters named by a pattern (OpenAPI ``style:
form, explode: true``: each of its keys is a parameter of its own).

The routes parse their query strings with these models (``bff.http.parse_query``): a value is
text, and the ``BeforeValidator``s below read it with the contract's words (``?expire=no``,
``?page=x`` is "Must be an integer.").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from ..connector_text import LOCALES
from ..errors import validation_error
from ..external_ids import normalise_external_id
from ..http import MAX_ID, MAX_PAGE_SIZE, MAX_QUERY_INT
from ..warehouse_reader import OPERATORS
from .input import FieldsRefused, Input, OpenBody
from .requests import Locale

MAX_WAIT_SECONDS = 120


def _flag(value: Any) -> bool:
    lowered = str(value).lower()
    if lowered in {"1", "true", "yes"}:
        return True
    if lowered in {"0", "false", "no"}:
        return False
    raise ValueError("Must be true or false.")


def _whole(minimum: int, maximum: int) -> Callable[[Any], int]:
    def whole(value: Any) -> int:
        raw = str(value)
        if len(raw) > 20:
            raise ValueError(f"Must be between {minimum} and {maximum}.")
        try:
            number = int(raw)
        except ValueError:
            raise ValueError("Must be an integer.") from None
        if not minimum <= number <= maximum:
            raise ValueError(f"Must be between {minimum} and {maximum}.")
        return number

    return whole


def _id(value: Any) -> int:
    """An id: ASCII digits only, at most MAX_ID."""
    raw = str(value)
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError("Must be an integer.")
    if len(raw) > len(str(MAX_ID)) or int(raw) > MAX_ID:
        raise ValueError(f"Must be at most {MAX_ID}.")
    return int(raw)


def _seconds(value: Any) -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS or seconds != seconds:
        raise ValueError(f"Must be a number of seconds from 0 to {MAX_WAIT_SECONDS}.")
    return seconds


def _locale(value: Any) -> str:
    """``nl``, ``nl-BE``, ``nl_BE`` → ``nl``."""
    base = str(value).replace("_", "-").split("-", 1)[0].lower()
    if base not in LOCALES:
        raise ValueError(f"Must be one of {', '.join(LOCALES)}.")
    return base


Flag = Annotated[bool, BeforeValidator(_flag)]
PageNumber = Annotated[int, BeforeValidator(_whole(1, MAX_QUERY_INT)), Field(ge=1, le=MAX_QUERY_INT)]
PageSize = Annotated[int, BeforeValidator(_whole(1, MAX_PAGE_SIZE)), Field(ge=1, le=MAX_PAGE_SIZE)]
Id = Annotated[int, BeforeValidator(_id), Field(ge=1, le=MAX_ID)]


class Query(Input):
    """A query model: only its own parameters are read (others are the route's business)."""


class Paging(Query):
    page: PageNumber | None = None
    page_size: PageSize | None = None


class WhichSubAccount(Query):
    """One of the two says which sub-account."""

    account_id: Id | None = None
    external_id: Annotated[str, BeforeValidator(normalise_external_id), Field(min_length=1, max_length=255)] | None = (
        None
    )

    @model_validator(mode="after")
    def _one_of_them(self) -> WhichSubAccount:
        if self.account_id is None and self.external_id is None:
            raise FieldsRefused({"account_id": "Pass `account_id` or `external_id`."})
        return self

    @classmethod
    def refused(cls, errors: dict[str, str]) -> Exception:
        said = errors.get("account_id") == "Pass `account_id` or `external_id`."
        return (
            validation_error(errors, "Say which sub-account: account_id or external_id.")
            if said
            else validation_error(errors)
        )


class IdentityQuery(WhichSubAccount):
    expire: Flag | None = Field(default=None, description="false: a token that lasts until revoked.")


class LocaleQuery(Query):
    locale: Annotated[Locale, BeforeValidator(_locale)] | None = Field(
        default=None, description="The language of labels and help; English by default."
    )

    @classmethod
    def refused(cls, errors: dict[str, str]) -> Exception:
        return validation_error(errors, "Unsupported locale.") if "locale" in errors else validation_error(errors)


class ServertypesQuery(LocaleQuery, Paging):
    pass


class WaitQuery(Query):
    wait: Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=MAX_WAIT_SECONDS)] | None = Field(
        default=None, description="Seconds to wait for the run to finish (200 with it) before answering 202."
    )


class ApplicationsQuery(Paging):
    exclude_tables: Flag | None = None


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
    user_field_names: Flag | None = Field(default=None, description="Key rows by field name, not field_<id>.")
    search: str | None = Field(default=None, description="Rows whose text fields contain this.")
    order_by: str | None = Field(default=None, description="field,-field: `-` sorts descending.")
    updated_since: str | None = Field(default=None, description="An ISO 8601 time: rows synced at or after it.")
    include: str | None = Field(default=None, description="Comma-separated fields to return.")
    exclude: str | None = Field(default=None, description="Comma-separated fields to leave out.")
    filters: RowFilters | None = Field(default=None, description="filter__<field>__<operator>=<value>, any number.")


class WriteQuery(Query):
    timeout: Flag | None = Field(default=None, description="true: the short retry policy.")
    refresh: Flag | None = Field(default=None, description="true: sync the object's table after success.")


class RecordMatch(OpenBody):
    """``<field>=<value>``: records whose field equals the value."""

    __pydantic_extra__: dict[str, str]


class RecordSearchQuery(WriteQuery):
    fields: RecordMatch | None = Field(default=None, description="<field>=<value>, any number.")


class UpsertQuery(WriteQuery):
    say = {"match": "Give the field to match on, e.g. ?match=email."}

    match: str = Field(description="The field an existing record is found by, e.g. email.")
