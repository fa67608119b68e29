"""What the API takes in its query strings, as pydantic models: a model's fields are the
operation's query parameters; a field whose type is an object (:class:`RowFilters`,
:class:`RecordMatch`) stands for a family of parameters named by a pattern (OpenAPI ``style:
form, explode: true``: each of its keys is a parameter of its own)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..http import MAX_ID, MAX_PAGE_SIZE, MAX_QUERY_INT
from ..warehouse_reader import OPERATORS
from .input import OpenBody
from .requests import Locale

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
