"""Connector definitions: declarative JSON files loaded into frozen dataclasses.

Every connector is one file ``definitions/<name>.json``. :func:`load_connectors`
reads and validates them once; a broken file (including an unknown key) raises
``ValueError`` naming the file and the offending field, so a typo fails at
start-up rather than mid-sync. A short example::

    {
      "id": 3, "name": "sandbox_bank", "display_name": "Sandbox Bank",
      "category": "banking", "logo": "sandbox_bank.svg", "description": "…",
      "docs": ["docs/sandbox-api.md"],
      "auth_type": "basic",
      "connect_form": [{"name": "login", "label": "Login", "type": "text"},
                       {"name": "password", "label": "Password", "type": "password"}],
      "base_url": "{sandbox}/bank/api",
      "auth": {"kind": "basic", "username_field": "login", "password_field": "password"},
      "test": {"method": "GET", "path": "/accounts", "expect_json": "accounts"},
      "streams": [{
        "name": "transactions", "path": "/transactions", "records_path": "",
        "primary_key": ["id"],
        "fields": [{"name": "id"}, {"name": "amount", "type": "number"},
                   {"name": "updated_at", "type": "datetime"}],
        "paging": {"kind": "link_header", "limit_param": "per_page", "limit": 500},
        "incremental": {"cursor_field": "updated_at", "param": "updated_after"}
      }],
      "manual_refresh": {"url": "{sandbox}/bank/refresh"},
      "capabilities": ["read", "incremental", "manual_refresh"]
    }

Other blocks: ``oauth`` (authorize/token URLs, scopes, ``pkce``,
``client_auth``, ``authorize_params``, ``token_response`` paths for quirky
answers), ``config_select`` + ``partition_by`` (the CONFIG_SELECT step whose
chosen values become partitions), ``lookups``, ``headers`` and
``response_check`` (HTTP 200 answers carrying ``ok: false``). Field paths are
dotted (``properties.email``, ``d.results.0.Code``); the field ``path``
defaults to its ``name``.

Templates (``base_url``, paths, parameter values, OAuth URLs) use
``{placeholders}``: ``{sandbox}`` (the BFF's ``<public url>/sandbox``),
``{config.<field>}``, ``{credentials.<field>}``, ``{context.<key>}``,
``{partition}``, ``{cursor}`` and ``{lookup.<name>}`` (a value fetched once per
session from the provider, e.g. Exact Online's current division).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "AuthSpec",
    "ConfigSelect",
    "Connector",
    "DEFINITIONS_DIR",
    "FieldSpec",
    "FormField",
    "FormOption",
    "Incremental",
    "LOGO_DIR",
    "LookupSpec",
    "OAuthSpec",
    "Paging",
    "ResponseCheck",
    "Stream",
    "Template",
    "TestSpec",
    "TokenResponse",
    "compile_path",
    "get_connector",
    "get_path",
    "load_connectors",
]

DEFINITIONS_DIR = Path(__file__).with_name("definitions")
LOGO_DIR = DEFINITIONS_DIR / "logos"

AUTH_TYPES = ("api_key", "basic", "oauth2")
CATEGORIES = ("crm", "accounting", "banking", "payments", "communication", "marketing", "ecommerce", "hr", "support", "other")
FORM_TYPES = ("text", "password", "select", "url", "email", "number", "textarea")
FIELD_TYPES = ("text", "integer", "number", "boolean", "datetime", "json")
PAGING_KINDS = ("none", "cursor", "offset", "page_number", "link_header", "next_url")
CURSOR_FORMATS = ("iso8601", "unix", "template")
CURSOR_ORDERS = ("asc", "desc", "none")
AUTH_KINDS = ("header", "query", "basic", "bearer", "none")
# `{cursor}` is only allowed in an incremental `template`; the engine adds the
# incremental parameter itself.
PLACEHOLDER_ROOTS = ("sandbox", "config", "credentials", "context", "partition", "lookup")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_$\-]+)?)\}")


# --------------------------------------------------------------------------- paths


def compile_path(path: str | None) -> tuple[str | int, ...]:
    """``"d.results.0.Code"`` → ``("d", "results", 0, "Code")``; ``""`` → ``()`` (the root)."""
    if not path:
        return ()
    return tuple(int(part) if part.isdigit() else part for part in path.split("."))


def get_path(obj: Any, keys: tuple[str | int, ...]) -> Any:
    """Follow compiled ``keys`` into nested dicts/lists; ``None`` when anything is missing."""
    for key in keys:
        if isinstance(obj, dict):
            obj = obj.get(key) if not isinstance(key, int) else obj.get(str(key))
        elif isinstance(obj, list) and isinstance(key, int):
            obj = obj[key] if -len(obj) <= key < len(obj) else None
        else:
            return None
        if obj is None:
            return None
    return obj


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A string with ``{placeholders}``, parsed once."""

    raw: str
    parts: tuple[tuple[bool, str], ...] = field(repr=False, compare=False)  # (is_placeholder, text)

    @classmethod
    def parse(cls, raw: str) -> Template:
        parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(raw):
            if m.start() > pos:
                parts.append((False, raw[pos : m.start()]))
            parts.append((True, m.group(1)))
            pos = m.end()
        if pos < len(raw):
            parts.append((False, raw[pos:]))
        return cls(raw, tuple(parts))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(text for is_ph, text in self.parts if is_ph)

    @property
    def is_static(self) -> bool:
        return not any(is_ph for is_ph, _ in self.parts)

    def uses(self, root: str) -> bool:
        return any(is_ph and (text == root or text.startswith(root + ".")) for is_ph, text in self.parts)

    def render(self, resolve: Callable[[str], str]) -> str:
        if len(self.parts) == 1 and not self.parts[0][0]:
            return self.parts[0][1]
        return "".join(resolve(text) if is_ph else text for is_ph, text in self.parts)

    def __str__(self) -> str:
        return self.raw


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

    ok_path: tuple[str | int, ...] = ()  # empty = no ok flag
    error_path: tuple[str | int, ...] = ("error",)
    error_description_path: tuple[str | int, ...] = ("error_description",)
    access_token_path: tuple[str | int, ...] = ("access_token",)
    refresh_token_path: tuple[str | int, ...] = ("refresh_token",)
    expires_in_path: tuple[str | int, ...] = ("expires_in",)
    scope_path: tuple[str | int, ...] = ("scope",)
    extra: tuple[tuple[str, tuple[str | int, ...]], ...] = ()  # (name, path) kept in OAuthTokens.extra
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
    expect_json: tuple[str | int, ...] | None = None  # a value that must be present


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
    next_cursor_path: tuple[str | int, ...] | None = None
    cursor_record_path: tuple[str | int, ...] = ("id",)
    has_more_path: tuple[str | int, ...] | None = None
    offset_param: str | None = None
    next_offset_path: tuple[str | int, ...] | None = None
    total_path: tuple[str | int, ...] | None = None
    page_param: str | None = None
    page_start: int = 1
    page_count_path: tuple[str | int, ...] | None = None
    next_url_path: tuple[str | int, ...] | None = None


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
    start: str | None = None  # value used when there is no state yet (None = full read)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    path: tuple[str | int, ...]
    type: str = "text"


@dataclass(frozen=True)
class Stream:
    name: str
    path: Template
    params: tuple[tuple[str, Template], ...]
    records_path: tuple[str | int, ...]
    primary_key: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    paging: Paging
    incremental: Incremental | None = None
    description: str = ""
    partitioned: bool = False

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
    records_path: tuple[str | int, ...]
    value_path: tuple[str | int, ...]
    label_path: tuple[str | int, ...]
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
    value_path: tuple[str | int, ...]


@dataclass(frozen=True)
class ResponseCheck:
    """APIs answering HTTP 200 with an error flag (Slack's ``{"ok": false, "error": …}``)."""

    ok_path: tuple[str | int, ...]
    error_path: tuple[str | int, ...] = ("error",)
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
    source: str = field(default="", compare=False, repr=False)
    # {locale: {"description", "connect_form": {field: {"label", "help", "options": {value: label}}},
    #  "config_select": {"label", "help"}}}; checked by bff.connector_text.check_translations.
    translations: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

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
        return self.manual_refresh.render(lambda name: _context_value(context, name))

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


def _context_value(context: Mapping[str, Any], name: str) -> str:
    key = name[len("context.") :] if name.startswith("context.") else name
    value = context.get(key)
    if value is None:
        raise KeyError(f"missing context value {key!r}")
    return str(value).rstrip("/") if key == "sandbox" else str(value)


# --------------------------------------------------------------------------- validation


class _Reader:
    """Typed access to one JSON object, with errors naming file and field."""

    def __init__(self, file: str, data: Any, where: str = "") -> None:
        self.file = file
        self.where = where
        if not isinstance(data, dict):
            self.fail(where or "(top level)", "must be a JSON object")
        self.data: dict[str, Any] = data

    def fail(self, fieldname: str, message: str) -> None:
        raise ValueError(f"connector definition {self.file}: field '{fieldname}' {message}")

    def allow(self, *keys: str) -> _Reader:
        """Reject unknown keys, so a typo ("incremantal") fails loudly instead of being ignored."""
        for key in self.data:
            if key not in keys:
                self.fail(self._name(key), f"is not a known field here (known: {', '.join(keys)})")
        return self

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get_str(self, key: str, default: Any = ..., *, choices: Iterable[str] | None = None, nonempty: bool = True) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is ...:
                self.fail(self._name(key), "is required")
            return default
        if not isinstance(value, str) or (nonempty and not value.strip()):
            self.fail(self._name(key), "must be a non-empty string")
        if choices is not None and value not in choices:
            self.fail(self._name(key), f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def get_int(self, key: str, default: Any = ...) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is ...:
                self.fail(self._name(key), "is required")
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(self._name(key), "must be an integer")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(self._name(key), "must be true or false")
        return value

    def get_list(self, key: str, default: Any = ...) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            if default is ...:
                self.fail(self._name(key), "is required")
            return default
        if not isinstance(value, list):
            self.fail(self._name(key), "must be a list")
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        items = self.get_list(key, [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(f"{self._name(key)}[{i}]", "must be a string")
        return tuple(items)

    def obj(self, key: str, required: bool = False) -> _Reader | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(self._name(key), "is required")
            return None
        return _Reader(self.file, value, self._name(key))

    def path(self, key: str, default: Any = ...) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is ...:
                self.fail(self._name(key), "is required")
            return default
        if not isinstance(value, str):
            self.fail(self._name(key), "must be a dotted path string")
        return compile_path(value)

    def template(self, key: str, default: Any = ..., *, allowed: Iterable[str] = PLACEHOLDER_ROOTS) -> Any:
        raw = self.get_str(key, default, nonempty=False)
        if not isinstance(raw, str):
            return raw
        return self.check_template(self._name(key), raw, allowed)

    def check_template(self, fieldname: str, raw: str, allowed: Iterable[str]) -> Template:
        tpl = Template.parse(raw)
        allowed = tuple(allowed)
        for name in tpl.names:
            root = name.split(".", 1)[0]
            if root not in allowed:
                self.fail(fieldname, f"uses unknown placeholder {{{name}}} (allowed here: {', '.join(allowed)})")
            if root in ("config", "credentials", "context", "lookup") and "." not in name:
                self.fail(fieldname, f"placeholder {{{name}}} needs a field, e.g. {{{root}.name}}")
        return tpl

    def params(self, key: str, allowed: Iterable[str] = PLACEHOLDER_ROOTS) -> tuple[tuple[str, Template], ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(self._name(key), "must be an object of name → value")
        out = []
        for name, raw in value.items():
            if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
                self.fail(f"{self._name(key)}.{name}", "must be a string or a number")
            out.append((name, self.check_template(f"{self._name(key)}.{name}", str(raw), allowed)))
        return tuple(out)


def _read_paging(r: _Reader | None, where: str) -> Paging:
    if r is None:
        return Paging()
    r.allow(*(f for f in Paging.__dataclass_fields__ if f != "kind"), "kind")
    kind = r.get_str("kind", choices=PAGING_KINDS)
    limit = r.get_int("limit", None)
    limit_param = r.get_str("limit_param", None)
    if limit is not None and limit <= 0:
        r.fail(f"{where}.limit", "must be positive")
    if (limit is None) != (limit_param is None) and kind != "none":
        r.fail(f"{where}.limit_param", "and 'limit' go together")
    p = Paging(
        kind=kind,
        limit_param=limit_param,
        limit=limit,
        cursor_param=r.get_str("cursor_param", None),
        next_cursor_path=r.path("next_cursor_path", None),
        cursor_record_path=r.path("cursor_record_path", ("id",)),
        has_more_path=r.path("has_more_path", None),
        offset_param=r.get_str("offset_param", None),
        next_offset_path=r.path("next_offset_path", None),
        total_path=r.path("total_path", None),
        page_param=r.get_str("page_param", None),
        page_start=r.get_int("page_start", 1),
        page_count_path=r.path("page_count_path", None),
        next_url_path=r.path("next_url_path", None),
    )
    if kind == "cursor" and not p.cursor_param:
        r.fail(f"{where}.cursor_param", "is required for cursor paging")
    if kind == "offset":
        if not p.offset_param:
            r.fail(f"{where}.offset_param", "is required for offset paging")
        if p.limit is None:
            r.fail(f"{where}.limit", "is required for offset paging")
    if kind == "page_number" and not p.page_param:
        r.fail(f"{where}.page_param", "is required for page_number paging")
    if kind == "next_url" and not p.next_url_path:
        r.fail(f"{where}.next_url_path", "is required for next_url paging")
    return p


def _read_field(r: _Reader) -> FieldSpec:
    r.allow("name", "path", "type", "description")
    name = r.get_str("name")
    return FieldSpec(name=name, path=r.path("path", compile_path(name)), type=r.get_str("type", "text", choices=FIELD_TYPES))


def _read_stream(r: _Reader, partition_by: str | None) -> Stream:
    where = r.where
    r.allow("name", "description", "notes", "path", "params", "records_path", "primary_key", "fields", "paging", "incremental")
    name = r.get_str("name")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        r.fail(f"{where}.name", "must be snake_case (a warehouse table name)")
    path = r.template("path")
    params = r.params("params")
    fields_raw = r.get_list("fields")
    if not fields_raw:
        r.fail(f"{where}.fields", "must list at least one field")
    fields = tuple(_read_field(_Reader(r.file, f, f"{where}.fields[{i}]")) for i, f in enumerate(fields_raw))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        r.fail(f"{where}.fields", "has duplicate field names")
    primary_key = r.str_list("primary_key")
    if not primary_key:
        r.fail(f"{where}.primary_key", "must name at least one field")
    for pk in primary_key:
        if pk not in names:
            r.fail(f"{where}.primary_key", f"names {pk!r}, which is not a declared field")
    paging = _read_paging(r.obj("paging"), f"{where}.paging")
    incremental = None
    inc = r.obj("incremental")
    if inc is not None:
        inc.allow("cursor_field", "param", "format", "template", "order", "start")
        cursor_field = inc.get_str("cursor_field")
        if cursor_field not in names:
            r.fail(f"{where}.incremental.cursor_field", f"names {cursor_field!r}, which is not a declared field")
        fmt = inc.get_str("format", "iso8601", choices=CURSOR_FORMATS)
        template = None
        if fmt == "template":
            template = inc.template("template", allowed=("cursor",))
            if "cursor" not in template.names:
                r.fail(f"{where}.incremental.template", "must contain {cursor}")
        incremental = Incremental(
            cursor_field=cursor_field,
            param=inc.get_str("param"),
            format=fmt,
            template=template,
            order=inc.get_str("order", "asc", choices=CURSOR_ORDERS),
            start=inc.get_str("start", None),
        )
    partitioned = path.uses("partition") or any(t.uses("partition") for _, t in params)
    if partitioned and not partition_by:
        r.fail(f"{where}.path", "uses {partition} but the connector declares no 'partition_by'")
    return Stream(
        name=name,
        path=path,
        params=params,
        records_path=r.path("records_path", ()),
        primary_key=primary_key,
        fields=fields,
        paging=paging,
        incremental=incremental,
        description=r.get_str("description", "", nonempty=False),
        partitioned=partitioned,
    )


def _read_token_response(r: _Reader | None) -> TokenResponse:
    if r is None:
        return TokenResponse()
    r.allow(
        "ok_path", "error_path", "error_description_path", "access_token_path", "refresh_token_path",
        "expires_in_path", "scope_path", "extra", "invalid_grant_errors",
    )
    extra_raw = r.data.get("extra") or {}
    if not isinstance(extra_raw, dict) or not all(isinstance(v, str) for v in extra_raw.values()):
        r.fail(f"{r.where}.extra", "must be an object of name → dotted path")
    base = TokenResponse()
    return TokenResponse(
        ok_path=r.path("ok_path", ()),
        error_path=r.path("error_path", base.error_path),
        error_description_path=r.path("error_description_path", base.error_description_path),
        access_token_path=r.path("access_token_path", base.access_token_path),
        refresh_token_path=r.path("refresh_token_path", base.refresh_token_path),
        expires_in_path=r.path("expires_in_path", base.expires_in_path),
        scope_path=r.path("scope_path", base.scope_path),
        extra=tuple((k, compile_path(v)) for k, v in extra_raw.items()),
        invalid_grant_errors=r.str_list("invalid_grant_errors") or base.invalid_grant_errors,
    )


_URL_ROOTS = ("sandbox", "context", "config", "credentials")


def parse_connector(data: Any, file: str = "<memory>") -> Connector:
    """Validate one decoded JSON definition and build its :class:`Connector`."""
    r = _Reader(file, data)
    r.allow(
        "id", "name", "display_name", "category", "logo", "description", "docs", "notes", "auth_type",
        "connect_form", "base_url", "headers", "auth", "oauth", "test", "config_select", "partition_by",
        "lookups", "streams", "response_check", "manual_refresh", "capabilities", "translations",
    )
    name = r.get_str("name")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        r.fail("name", "must be snake_case")
    auth_type = r.get_str("auth_type", choices=AUTH_TYPES)
    connector_id = r.get_int("id")
    if connector_id <= 0:
        r.fail("id", "must be a positive integer")

    form = []
    for i, raw in enumerate(r.get_list("connect_form", [])):
        fr = _Reader(file, raw, f"connect_form[{i}]").allow("name", "label", "type", "required", "secret", "help", "options")
        ftype = fr.get_str("type", "text", choices=FORM_TYPES)
        options = []
        for j, opt in enumerate(fr.get_list("options", [])):
            orr = _Reader(file, opt, f"connect_form[{i}].options[{j}]").allow("value", "label")
            options.append(FormOption(value=orr.get_str("value"), label=orr.get_str("label")))
        if ftype == "select" and not options:
            fr.fail(f"connect_form[{i}].options", "is required for a select field")
        form.append(
            FormField(
                name=fr.get_str("name"),
                label=fr.get_str("label"),
                type=ftype,
                required=fr.get_bool("required", True),
                secret=fr.get_bool("secret", ftype == "password"),
                help=fr.get_str("help", "", nonempty=False),
                options=tuple(options),
            )
        )
    form_names = {f.name for f in form}
    if len(form_names) != len(form):
        r.fail("connect_form", "has duplicate field names")

    ar = r.obj("auth", required=True)
    assert ar is not None
    ar.allow("kind", "field", "header", "prefix", "param", "username_field", "password_field")
    kind = ar.get_str("kind", choices=AUTH_KINDS)
    auth = AuthSpec(
        kind=kind,
        field=ar.get_str("field", None),
        header=ar.get_str("header", None),
        prefix=ar.get_str("prefix", "", nonempty=False),
        param=ar.get_str("param", None),
        username_field=ar.get_str("username_field", None),
        password_field=ar.get_str("password_field", None),
    )
    if kind in ("header", "query") and (not auth.field or (kind == "header" and not auth.header) or (kind == "query" and not auth.param)):
        ar.fail("auth", f"of kind {kind!r} needs 'field' and '{'header' if kind == 'header' else 'param'}'")
    if kind == "basic" and not auth.username_field:
        ar.fail("auth.username_field", "is required for basic auth")
    for used in (auth.field, auth.username_field, auth.password_field):
        if used and used not in form_names:
            ar.fail("auth", f"uses credential field {used!r}, which is not in connect_form")
    if (auth_type == "oauth2") != (kind == "bearer"):
        ar.fail("auth.kind", "must be 'bearer' exactly when auth_type is 'oauth2'")

    oauth = None
    orr = r.obj("oauth", required=auth_type == "oauth2")
    if orr is not None:
        orr.allow(
            "authorize_url", "token_url", "scopes", "scope_separator", "scope_param", "pkce", "client_auth",
            "authorize_params", "token_params", "token_response",
        )
        scope_sep = orr.get_str("scope_separator", " ", nonempty=False)
        oauth = OAuthSpec(
            authorize_url=orr.template("authorize_url", allowed=_URL_ROOTS),
            token_url=orr.template("token_url", allowed=_URL_ROOTS),
            scopes=orr.str_list("scopes"),
            scope_separator=scope_sep,
            scope_param=orr.get_str("scope_param", "scope"),
            pkce=orr.get_bool("pkce", False),
            client_auth=orr.get_str("client_auth", "post", choices=("post", "basic")),
            authorize_params=orr.params("authorize_params", _URL_ROOTS),
            token_params=orr.params("token_params", _URL_ROOTS),
            token_response=_read_token_response(orr.obj("token_response")),
        )

    tr = r.obj("test", required=True)
    assert tr is not None
    tr.allow("method", "path", "params", "expect_status", "expect_json")
    test = TestSpec(
        method=tr.get_str("method", "GET", choices=("GET", "POST")),
        path=tr.template("path"),
        params=tr.params("params"),
        expect_status=tr.get_int("expect_status", 200),
        expect_json=tr.path("expect_json", None),
    )

    partition_by = r.get_str("partition_by", None)
    config_select = None
    cr = r.obj("config_select")
    if cr is not None:
        cr.allow("field", "label", "help", "multiple", "path", "params", "records_path", "value_field", "label_field", "paging")
        config_select = ConfigSelect(
            field=cr.get_str("field"),
            label=cr.get_str("label"),
            multiple=cr.get_bool("multiple", False),
            path=cr.template("path"),
            params=cr.params("params"),
            records_path=cr.path("records_path", ()),
            value_path=cr.path("value_field"),
            label_path=cr.path("label_field"),
            paging=_read_paging(cr.obj("paging"), "config_select.paging"),
            help=cr.get_str("help", "", nonempty=False),
        )
    if partition_by and (config_select is None or config_select.field != partition_by):
        r.fail("partition_by", "must name the config_select field whose chosen values are the partitions")

    lookups = []
    lr = r.obj("lookups")
    if lr is not None:
        for lname in lr.data:
            one = lr.obj(lname, required=True)
            assert one is not None
            one.allow("path", "params", "value_path")
            roots = ("sandbox", "config", "credentials", "context")  # no lookups inside lookups
            lookups.append(
                LookupSpec(
                    name=lname,
                    path=one.template("path", allowed=roots),
                    params=one.params("params", roots),
                    value_path=one.path("value_path"),
                )
            )
    lookup_names = {lk.name for lk in lookups}

    streams_raw = r.get_list("streams")
    if not streams_raw:
        r.fail("streams", "must declare at least one stream")
    streams = tuple(_read_stream(_Reader(file, s, f"streams[{i}]"), partition_by) for i, s in enumerate(streams_raw))
    stream_names = [s.name for s in streams]
    if len(set(stream_names)) != len(stream_names):
        r.fail("streams", "has duplicate stream names")

    response_check = None
    rr = r.obj("response_check")
    if rr is not None:
        rr.allow("ok_path", "error_path", "auth_errors")
        response_check = ResponseCheck(
            ok_path=rr.path("ok_path"),
            error_path=rr.path("error_path", ("error",)),
            auth_errors=rr.str_list("auth_errors"),
        )

    headers_raw = r.data.get("headers") or {}
    if not isinstance(headers_raw, dict) or not all(isinstance(v, str) for v in headers_raw.values()):
        r.fail("headers", "must be an object of header name → string")

    manual_refresh = None
    mr = r.obj("manual_refresh")
    if mr is not None:
        mr.allow("url")
        manual_refresh = mr.template("url", allowed=("sandbox", "context"))

    # Every {lookup.x} anywhere must be declared; {credentials.x} must be a form field.
    templates: list[tuple[str, Template]] = [("base_url", r.template("base_url", allowed=_URL_ROOTS + ("lookup",)))]
    templates += [("test.path", test.path)] + [(f"test.params.{k}", t) for k, t in test.params]
    for s in streams:
        templates += [(f"streams.{s.name}.path", s.path)] + [(f"streams.{s.name}.params.{k}", t) for k, t in s.params]
    if config_select:
        templates += [("config_select.path", config_select.path)]
    for fname, tpl in templates:
        for ph in tpl.names:
            root, _, key = ph.partition(".")
            if root == "lookup" and key not in lookup_names:
                r.fail(fname, f"uses {{{ph}}} but 'lookups' declares no {key!r}")
            if root == "credentials" and key not in form_names:
                r.fail(fname, f"uses {{{ph}}} but connect_form has no field {key!r}")

    docs = r.data.get("docs", [])
    if isinstance(docs, str):
        docs = [docs]
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        r.fail("docs", "must be a list of URLs")

    logo = r.get_str("logo")
    if "/" in logo or not logo.endswith(".svg"):
        r.fail("logo", "must be an .svg file name in definitions/logos/")

    return Connector(
        id=connector_id,
        name=name,
        display_name=r.get_str("display_name"),
        category=r.get_str("category", choices=CATEGORIES),
        logo=logo,
        description=r.get_str("description", "", nonempty=False),
        auth_type=auth_type,
        connect_form=tuple(form),
        base_url=templates[0][1],
        auth=auth,
        test=test,
        streams=streams,
        capabilities=r.str_list("capabilities"),
        headers=tuple(headers_raw.items()),
        oauth=oauth,
        config_select=config_select,
        partition_by=partition_by,
        lookups=tuple(lookups),
        response_check=response_check,
        manual_refresh=manual_refresh,
        docs=tuple(docs),
        source=file,
        translations=_translations(r, form, config_select),
    )


def _translations(r: _Reader, form: list[FormField], config_select: ConfigSelect | None) -> Mapping[str, Any]:
    from ..connector_text import check_translations  # the block's rules live with the code that uses it

    raw = r.data.get("translations") or {}
    try:
        return check_translations(raw, form, config_select)
    except ValueError as exc:
        r.fail("translations", str(exc))
        raise


def _load_dir(directory: Path) -> dict[str, Connector]:
    connectors: dict[str, Connector] = {}
    ids: dict[int, str] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"connector definition {path.name}: not valid JSON ({exc})") from None
        connector = parse_connector(data, path.name)
        if connector.name != path.stem:
            raise ValueError(f"connector definition {path.name}: field 'name' must equal the file name ({path.stem!r})")
        if connector.id in ids:
            raise ValueError(f"connector definition {path.name}: field 'id' {connector.id} is already used by {ids[connector.id]}")
        logo_dir = directory / "logos"
        if logo_dir.is_dir() and not (logo_dir / connector.logo).is_file():
            raise ValueError(f"connector definition {path.name}: field 'logo' names a missing file logos/{connector.logo}")
        ids[connector.id] = connector.name
        connectors[connector.name] = connector
    return connectors


@functools.lru_cache(maxsize=8)
def _load_cached(directory: str) -> tuple[tuple[str, Connector], ...]:
    return tuple(_load_dir(Path(directory)).items())


def load_connectors(directory: str | Path | None = None) -> dict[str, Connector]:
    """All connector definitions, keyed by ``name`` (read and validated once, then cached).

    Raises ``ValueError`` naming the file and field when a definition is invalid.
    """
    return dict(_load_cached(str(Path(directory or DEFINITIONS_DIR).resolve())))


def get_connector(name: str) -> Connector:
    """One connector by ``name``; ``KeyError`` if unknown."""
    return load_connectors()[name]
