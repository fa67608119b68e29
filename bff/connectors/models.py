"""The typed shape of a connector definition file (pydantic v2), and its JSON Schema.

Every model forbids unknown keys, so a typo (``"incremantal"``) fails loudly;
``auth`` and ``paging`` are discriminated unions on ``kind``, upserts on
``strategy``. Checks that span several parts of a file (a primary key naming a
declared field, ``{credentials.x}`` naming a connect-form field, …) live in
:mod:`bff.connectors.definitions`, next to the runtime objects built from these
models. ``python -m bff.connectors.models`` prints the JSON Schema that is
published as ``bff/connectors/definition.schema.json``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

__all__ = [
    "ActionModel",
    "AuthModel",
    "DefinitionModel",
    "ObjectModel",
    "PagingModel",
    "json_schema",
]

Category = Literal[
    "crm", "accounting", "banking", "payments", "communication", "marketing", "ecommerce", "hr", "support", "other"
]
FormType = Literal["text", "password", "select", "url", "email", "number", "textarea"]
FieldType = Literal["text", "integer", "decimal", "number", "boolean", "date", "datetime", "json"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Params = dict[str, str | int | float]
# Localised UI text, e.g. {"nl": {"label": "API-sleutel", "help": "…"}}; the keys inside a
# locale are free so the widget's translation work can add what it needs.
I18n = dict[str, dict[str, str]]
Snake = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
NonEmpty = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(gt=0)]

_I18N = Field(
    default=None,
    validation_alias=AliasChoices("i18n", "translations"),
    description="Localised UI text per locale (also accepted as `translations`).",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FormOptionModel(_Model):
    value: NonEmpty
    label: NonEmpty
    i18n: I18n | None = _I18N


class FormFieldModel(_Model):
    """One field of the connect form, typed into the BFF-origin iframe."""

    name: NonEmpty
    label: NonEmpty
    type: FormType = "text"
    required: bool = True
    secret: bool | None = Field(default=None, description="Defaults to true for password fields.")
    help: str = ""
    options: list[FormOptionModel] = []
    i18n: I18n | None = _I18N


# --------------------------------------------------------------------------- auth


class HeaderAuth(_Model):
    """``headers[header] = prefix + credentials[field]``."""

    kind: Literal["header"]
    header: NonEmpty
    field: NonEmpty
    prefix: str = ""


class QueryAuth(_Model):
    """``params[param] = credentials[field]``."""

    kind: Literal["query"]
    param: NonEmpty
    field: NonEmpty


class BasicAuth(_Model):
    kind: Literal["basic"]
    username_field: NonEmpty
    password_field: str | None = None


class BearerAuth(_Model):
    """``Authorization: Bearer <OAuth access token>`` (exactly the ``oauth2`` connectors)."""

    kind: Literal["bearer"]


class NoAuth(_Model):
    kind: Literal["none"]


AuthModel = Annotated[HeaderAuth | QueryAuth | BasicAuth | BearerAuth | NoAuth, Field(discriminator="kind")]


# --------------------------------------------------------------------------- paging


class _Limit(_Model):
    limit_param: str | None = None
    limit: Positive | None = None


class NoPaging(_Limit):
    kind: Literal["none"]


class CursorPaging(_Limit):
    """Next cursor from ``next_cursor_path``, else the last record's ``cursor_record_path``."""

    kind: Literal["cursor"]
    cursor_param: NonEmpty
    next_cursor_path: str | None = None
    cursor_record_path: str = "id"
    has_more_path: str | None = None


class OffsetPaging(_Limit):
    kind: Literal["offset"]
    offset_param: NonEmpty
    limit: Positive
    next_offset_path: str | None = None
    has_more_path: str | None = None
    total_path: str | None = None


class PageNumberPaging(_Limit):
    kind: Literal["page_number"]
    page_param: NonEmpty
    page_start: int = 1
    page_count_path: str | None = None
    has_more_path: str | None = None
    total_path: str | None = None


class LinkHeaderPaging(_Limit):
    """Follows RFC 8288 ``Link: <…>; rel="next"``."""

    kind: Literal["link_header"]


class NextUrlPaging(_Limit):
    kind: Literal["next_url"]
    next_url_path: NonEmpty


PagingModel = Annotated[
    NoPaging | CursorPaging | OffsetPaging | PageNumberPaging | LinkHeaderPaging | NextUrlPaging,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- OAuth, test, config


class TokenResponseModel(_Model):
    """Where a token endpoint's JSON keeps things (Slack nests and adds ``ok``)."""

    ok_path: str | None = None
    error_path: str = "error"
    error_description_path: str = "error_description"
    access_token_path: str = "access_token"
    refresh_token_path: str = "refresh_token"
    expires_in_path: str = "expires_in"
    scope_path: str = "scope"
    extra: dict[str, str] = {}
    invalid_grant_errors: list[str] = ["invalid_grant"]


class OAuthModel(_Model):
    authorize_url: NonEmpty
    token_url: NonEmpty
    scopes: list[str] = []
    scope_separator: str = " "
    scope_param: NonEmpty = "scope"
    pkce: bool = False
    client_auth: Literal["post", "basic"] = "post"
    authorize_params: Params = {}
    token_params: Params = {}
    token_response: TokenResponseModel = TokenResponseModel()


class TestModel(_Model):
    __test__ = False  # not a pytest class

    method: Literal["GET", "POST"] = "GET"
    path: str
    params: Params = {}
    expect_status: int = 200
    expect_json: str | None = None


class ConfigSelectModel(_Model):
    field: NonEmpty
    label: NonEmpty
    help: str = ""
    multiple: bool = False
    path: str
    params: Params = {}
    records_path: str = ""
    value_field: NonEmpty
    label_field: NonEmpty
    paging: PagingModel | None = None
    i18n: I18n | None = _I18N


class LookupModel(_Model):
    path: str
    params: Params = {}
    value_path: NonEmpty


class ResponseCheckModel(_Model):
    """APIs answering HTTP 200 with an error flag (Slack's ``{"ok": false, "error": …}``)."""

    ok_path: NonEmpty
    error_path: str = "error"
    auth_errors: list[str] = []


class ManualRefreshModel(_Model):
    url: NonEmpty


# --------------------------------------------------------------------------- streams


class FieldModel(_Model):
    name: NonEmpty
    path: str | None = Field(default=None, description="Dotted path in the provider's record; defaults to `name`.")
    type: FieldType = "text"
    description: str = ""


class IncrementalModel(_Model):
    cursor_field: NonEmpty
    param: NonEmpty
    format: Literal["iso8601", "unix", "template"] = "iso8601"
    template: str | None = None
    order: Literal["asc", "desc", "none"] = "asc"
    start: str | None = None


class DeletedIdsModel(_Model):
    """The provider lists what was deleted: ``GET path?since_param=<last cursor>`` answers the
    ids (and when each went), read after every sync of the stream."""

    kind: Literal["deleted_ids"]
    path: str
    records_path: str = ""
    id_path: NonEmpty = Field(default="id", description="Dotted path of the deleted record's id in each item.")
    cursor_path: NonEmpty = Field(
        default="deleted_at",
        description="Dotted path of when it was deleted; the highest one seen is sent as `since_param` next time.",
    )
    since_param: NonEmpty = "since"


class ArchivedFlagModel(_Model):
    """Deleted records stay in the list with a flag (e.g. HubSpot's ``archived``)."""

    kind: Literal["archived_flag"]
    field: NonEmpty = Field(description="A declared field of the stream; rows where it is true are marked deleted.")


DeletionsModel = Annotated[DeletedIdsModel | ArchivedFlagModel, Field(discriminator="kind")]


class StreamModel(_Model):
    name: Snake
    description: str = ""
    notes: str = ""
    path: str = Field(default="", description="The list endpoint (required unless `rows` is given).")
    rows: list[dict[str, Any]] | None = Field(
        default=None,
        description="Rows the provider documents but serves from no endpoint (Exact Online's EntityType "
        "numbers, say): every sync of the stream yields exactly these and calls nothing. Keyed like the "
        "provider's records (by the fields' paths); goes without `path`, `params`, `paging`, `incremental` "
        "and `deletions`.",
    )
    params: Params = {}
    records_path: str = ""
    primary_key: list[str]
    fields: list[FieldModel] = Field(min_length=1)
    paging: PagingModel | None = None
    incremental: IncrementalModel | None = None
    deletions: DeletionsModel | None = Field(
        default=None, description="How the provider reports deleted records (DESIGN §10); rows keep `_deleted_at`."
    )


# --------------------------------------------------------------------------- objects (writeback)


class ActionModel(_Model):
    """One call: ``add``, ``update``, ``delete`` or ``get`` (and the base of ``search``).

    ``path`` may use ``{id}`` (the record id) and ``{fields.x}`` (a written field,
    then left out of the body). The body is ``body_template`` with ``"{fields}"``
    standing for the fields (default: the fields themselves), encoded as
    ``body`` says. The answer's record is at ``record_path``, its id at ``id_path``
    inside that record.
    """

    method: Method
    path: str
    params: Params = {}
    body: Literal["json", "form", "none"] | None = Field(
        default=None, description="Default: json for POST/PUT/PATCH, none for GET/DELETE."
    )
    body_template: Any = None
    required: list[str] = []
    record_path: str = ""
    id_path: str = "id"


class SearchModel(ActionModel):
    """Find records by field: ``match_in: params`` sends ``<field>=<value>`` query
    parameters; ``template`` fills ``{match.field}``/``{match.value}`` (one field)."""

    method: Method = "GET"
    match_fields: list[NonEmpty] = Field(min_length=1)
    match_in: Literal["params", "template"] = "params"
    records_path: str = ""


class SearchUpsert(_Model):
    """Search by the match field, then update the one hit or add when there is none."""

    strategy: Literal["search"]


class NativeUpsert(ActionModel):
    """One provider call that creates or updates; ``{match.field}``/``{match.value}`` name the match.
    The answer's HTTP 201, or a true value at ``created_path``, means it created."""

    strategy: Literal["native"]
    match_fields: list[NonEmpty] = Field(min_length=1)
    created_path: str | None = None


UpsertModel = Annotated[SearchUpsert | NativeUpsert, Field(discriminator="strategy")]


class ActionsModel(_Model):
    add: ActionModel | None = None
    update: ActionModel | None = None
    delete: ActionModel | None = None
    get: ActionModel | None = None
    search: SearchModel | None = None
    upsert: UpsertModel | None = None


class ObjectFieldModel(_Model):
    name: NonEmpty
    type: FieldType = "text"
    description: str = ""
    i18n: I18n | None = _I18N


class ObjectModel(_Model):
    description: str = ""
    stream: str | None = Field(default=None, description="The stream (table) a `refresh=true` write re-syncs.")
    fields: list[ObjectFieldModel] = []
    additional_fields: bool = Field(default=False, description="Accept fields not listed in `fields`.")
    actions: ActionsModel
    i18n: I18n | None = _I18N


# --------------------------------------------------------------------------- the definition


class DefinitionModel(_Model):
    """One connector: ``definitions/<name>.json`` (or a file in ``BFF_CONNECTORS_DIR``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, title="Connector definition")

    id: Positive
    name: Snake
    display_name: NonEmpty
    category: Category
    logo: NonEmpty = Field(pattern=r"^[^/]+\.svg$", description="An .svg file name in the definitions' logos/ folder.")
    description: str = ""
    docs: list[str] | str = []
    notes: str = ""
    auth_type: Literal["api_key", "basic", "oauth2"]
    connect_form: list[FormFieldModel] = []
    base_url: str
    headers: dict[str, str] = {}
    auth: AuthModel
    oauth: OAuthModel | None = None
    test: TestModel
    config_select: ConfigSelectModel | None = None
    partition_by: str | None = None
    lookups: dict[str, LookupModel] = {}
    streams: list[StreamModel] = Field(min_length=1)
    objects: dict[Snake, ObjectModel] = {}
    response_check: ResponseCheckModel | None = None
    manual_refresh: ManualRefreshModel | None = None
    capabilities: list[str] = []
    i18n: I18n | None = _I18N


def json_schema() -> dict[str, Any]:
    """The JSON Schema published as ``definition.schema.json``."""
    schema = DefinitionModel.model_json_schema(by_alias=False)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
