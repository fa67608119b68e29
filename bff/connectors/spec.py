"""The runtime form of a connector definition: frozen dataclasses with paths compiled and
templates parsed once, built by :mod:`bff.connectors.definitions` from the typed models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .templates import Path, Placeholders, Template

__all__ = [
    "ACTIONS",
    "ActionSpec",
    "AuthSpec",
    "ConfigSelect",
    "Connector",
    "FieldSpec",
    "FormField",
    "FormOption",
    "Incremental",
    "LookupSpec",
    "OAuthSpec",
    "ObjectField",
    "ObjectSpec",
    "Paging",
    "ResponseCheck",
    "Stream",
    "TestSpec",
    "TokenResponse",
]

ACTIONS = ("add", "update", "delete", "upsert", "get", "search")

# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class FormOption:
    value: str
    label: str


@dataclass(frozen=True)
class FormField:
    """One field of a connector's connect form (typed into the BFF-origin iframe)."""

    name: str
    label: str
    type: str = "text"
    required: bool = True
    secret: bool = False
    help: str = ""
    options: tuple[FormOption, ...] = ()

    def public_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "required": self.required,
            "secret": self.secret,
            "help": self.help,
            "options": [{"value": o.value, "label": o.label} for o in self.options],
        }


@dataclass(frozen=True)
class AuthSpec:
    """How credentials are applied to every API request.

    ``header``: ``headers[header] = prefix + credentials[field]``;
    ``query``: ``params[param] = credentials[field]``;
    ``basic``: HTTP Basic from ``username_field``/``password_field`` (password may be absent);
    ``bearer``: ``Authorization: Bearer <oauth access token>``; ``none``.
    """

    kind: str
    field: str | None = None
    header: str | None = None
    prefix: str = ""
    param: str | None = None
    username_field: str | None = None
    password_field: str | None = None


@dataclass(frozen=True)
class TokenResponse:
    """Where a token endpoint's JSON keeps things (Slack nests and adds ``ok``)."""

    ok_path: Path = ()  # empty = no ok flag
    error_path: Path = ("error",)
    error_description_path: Path = ("error_description",)
    access_token_path: Path = ("access_token",)
    refresh_token_path: Path = ("refresh_token",)
    expires_in_path: Path = ("expires_in",)
    scope_path: Path = ("scope",)
    extra: tuple[tuple[str, Path], ...] = ()  # (name, path) kept in OAuthTokens.extra
    invalid_grant_errors: tuple[str, ...] = ("invalid_grant",)


@dataclass(frozen=True)
class OAuthSpec:
    authorize_url: Template
    token_url: Template
    scopes: tuple[str, ...] = ()
    scope_separator: str = " "
    scope_param: str = "scope"
    pkce: bool = False
    client_auth: str = "post"  # "post" (client_id/secret in the form) or "basic"
    authorize_params: tuple[tuple[str, Template], ...] = ()
    token_params: tuple[tuple[str, Template], ...] = ()
    token_response: TokenResponse = TokenResponse()


@dataclass(frozen=True)
class TestSpec:
    method: str
    path: Template
    params: tuple[tuple[str, Template], ...] = ()
    expect_status: int = 200
    expect_json: Path | None = None  # a value that must be present


@dataclass(frozen=True)
class Paging:
    """How a list endpoint pages. Only the fields of ``kind`` matter.

    ``cursor``: next cursor from ``next_cursor_path`` or else the last raw
    record's ``cursor_record_path``; sent as ``cursor_param``; ends on an
    empty/absent cursor, ``has_more_path`` false, or an empty page.
    ``offset``: ``offset_param``/``limit_param``; next offset from
    ``next_offset_path`` or offset + records; ends on ``has_more_path`` false,
    offset ≥ ``total_path``, an empty page, or (only when neither signal is
    declared) a short page.
    ``page_number``: ``page_param`` from ``page_start``; ends on page ≥
    ``page_count_path``, ``has_more_path`` false, an empty page, or (without
    those) a short page.
    ``link_header``: follows RFC 8288 ``rel="next"``.
    ``next_url``: follows the absolute/relative URL at ``next_url_path``.
    """

    kind: str = "none"
    limit_param: str | None = None
    limit: int | None = None
    cursor_param: str | None = None
    next_cursor_path: Path | None = None
    cursor_record_path: Path = ("id",)
    has_more_path: Path | None = None
    offset_param: str | None = None
    next_offset_path: Path | None = None
    total_path: Path | None = None
    page_param: str | None = None
    page_start: int = 1
    page_count_path: Path | None = None
    next_url_path: Path | None = None


@dataclass(frozen=True)
class Incremental:
    """Incremental reads: ``param`` carries the highest ``cursor_field`` value already synced.

    ``format``: ``iso8601`` (sent as stored), ``unix`` (epoch seconds) or
    ``template`` (``template`` with ``{cursor}``, e.g. an OData ``$filter``).
    ``order``: how the API sorts by the cursor field. ``asc`` lets the state
    advance page by page; with ``desc``/``none`` the state only advances after
    the last page of a partition (crash-safe either way).
    """

    cursor_field: str
    param: str
    format: str = "iso8601"
    template: Template | None = None
    order: str = "asc"
    # The cursor used when there is no state yet (None = full read); may name connect-form values,
    # e.g. "{credentials.starting_year}-01-01T00:00:00".
    start: Template | None = None


@dataclass(frozen=True)
class Deletions:
    """How a stream learns about deleted records: ``deleted_ids`` (an endpoint listing them,
    read after each sync from ``since_param``) or ``archived_flag`` (``field`` true = deleted)."""

    kind: str
    path: Template | None = None
    records_path: Path = ()
    id_path: Path = ()
    cursor_path: Path = ()
    since_param: str = "since"
    field: str | None = None


@dataclass(frozen=True)
class FieldSpec:
    name: str
    path: Path
    type: str = "text"


@dataclass(frozen=True)
class Stream:
    name: str
    path: Template
    params: tuple[tuple[str, Template], ...]
    records_path: Path
    primary_key: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    paging: Paging
    incremental: Incremental | None = None
    description: str = ""
    partitioned: bool = False
    deletions: Deletions | None = None
    rows: tuple[dict[str, Any], ...] | None = None  # documented rows served by no endpoint

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def public_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "primary_key": list(self.primary_key),
            "incremental": self.incremental is not None,
            "fields": [{"name": f.name, "type": f.type} for f in self.fields],
        }


@dataclass(frozen=True)
class ConfigSelect:
    """The CONFIG_SELECT step: options fetched from the provider, chosen by the user."""

    field: str  # config field the choice is stored in
    label: str  # UI label, e.g. "Divisions"
    multiple: bool
    path: Template
    params: tuple[tuple[str, Template], ...]
    records_path: Path
    value_path: Path
    label_path: Path
    paging: Paging = Paging()
    help: str = ""

    def public_dict(self) -> dict[str, Any]:
        return {"field": self.field, "label": self.label, "multiple": self.multiple, "help": self.help}


@dataclass(frozen=True)
class LookupSpec:
    """A value fetched once per session and usable as ``{lookup.<name>}``."""

    name: str
    path: Template
    params: tuple[tuple[str, Template], ...]
    value_path: Path


@dataclass(frozen=True)
class ResponseCheck:
    """APIs answering HTTP 200 with an error flag (Slack's ``{"ok": false, "error": …}``)."""

    ok_path: Path
    error_path: Path = ("error",)
    auth_errors: tuple[str, ...] = ()  # error codes meaning "credentials rejected"


@dataclass(frozen=True)
class Connector:
    """One connector, as loaded from its JSON definition."""

    id: int
    name: str
    display_name: str
    category: str
    logo: str
    description: str
    auth_type: str
    connect_form: tuple[FormField, ...]
    base_url: Template
    auth: AuthSpec
    test: TestSpec
    streams: tuple[Stream, ...]
    capabilities: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    oauth: OAuthSpec | None = None
    config_select: ConfigSelect | None = None
    partition_by: str | None = None
    lookups: tuple[LookupSpec, ...] = ()
    response_check: ResponseCheck | None = None
    manual_refresh: Template | None = None
    docs: tuple[str, ...] = ()
    objects: tuple[ObjectSpec, ...] = ()
    source: str = field(default="", compare=False, repr=False)
    # The definition's i18n blocks gathered per locale (bff.connector_text.collect_translations):
    # {locale: {"description", "connect_form": {field: {"label", "help", "options": {value: label}}},
    #  "config_select": {"label", "help"}}}.
    translations: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def object(self, name: str) -> ObjectSpec | None:
        return next((o for o in self.objects if o.name == name), None)

    def stream(self, name: str) -> Stream:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(f"connector {self.name!r} has no stream {name!r}")

    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.streams)

    def lookup(self, name: str) -> LookupSpec:
        for spec in self.lookups:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def manual_refresh_url(self, context: Mapping[str, Any]) -> str | None:
        """The provider's manual-refresh page (SaltEdge-style), or ``None``."""
        if self.manual_refresh is None:
            return None
        return self.manual_refresh.render(Placeholders(self.display_name, context=context))

    def public_dict(self, logo_base_url: str) -> dict[str, Any]:
        """The ``/api/servertypes`` item: catalogue data only, nothing secret."""
        return {
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "category": self.category,
            "description": self.description,
            "logo_url": f"{logo_base_url.rstrip('/')}/{self.logo}",
            "auth_type": self.auth_type,
            "connect_form": {"fields": [f.public_dict() for f in self.connect_form]},
            "capabilities": list(self.capabilities),
            "config_select": self.config_select.public_dict() if self.config_select else None,
            "streams": [s.name for s in self.streams],
        }


# --------------------------------------------------------------------------- objects (writeback)


@dataclass(frozen=True)
class ObjectField:
    name: str
    type: str = "text"
    description: str = ""


@dataclass(frozen=True)
class ActionSpec:
    """One provider call of an object's action (see :class:`bff.connectors.models.ActionModel`)."""

    name: str
    method: str
    path: Template
    params: tuple[tuple[str, Template], ...] = ()
    body: str = "json"  # json | form | none
    body_template: Any = "{fields}"
    required: tuple[str, ...] = ()
    record_path: Path = ()
    id_path: Path = ("id",)
    # search and native upsert
    match_fields: tuple[str, ...] = ()
    match_in: str = "params"
    records_path: Path = ()
    # upsert: "search" (search, then update or add) or "native" (this call)
    strategy: str | None = None
    created_path: Path | None = None

    @property
    def path_fields(self) -> tuple[str, ...]:
        """Fields the path consumes (``{fields.x}``): they are not sent in the body."""
        return tuple(n.partition(".")[2] for n in self.path.names if n.startswith("fields."))


@dataclass(frozen=True)
class ObjectSpec:
    """A writable object (``contact``, ``invoice``, ``message`` …) and its actions."""

    name: str
    actions: Mapping[str, ActionSpec]
    fields: tuple[ObjectField, ...] = ()
    additional_fields: bool = False
    stream: str | None = None
    description: str = ""

    def field_types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.fields}

    def public_dict(self) -> dict[str, Any]:
        actions: dict[str, Any] = {}
        for name in ACTIONS:
            spec = self.actions.get(name)
            if spec is None:
                continue
            one: dict[str, Any] = {"required": list(spec.required)}
            if spec.match_fields:
                one["match_fields"] = list(spec.match_fields)
            if spec.strategy:
                one["strategy"] = spec.strategy
            actions[name] = one
        return {
            "name": self.name,
            "description": self.description,
            "table": self.stream,
            "actions": actions,
            "fields": [{"name": f.name, "type": f.type, "description": f.description} for f in self.fields],
            "additional_fields": self.additional_fields,
        }
