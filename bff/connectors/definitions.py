"""Connector definitions: JSON files validated by typed models, built into runtime objects.

Every connector is one file ``<name>.json``: the package's own in
``bff/connectors/definitions/``, plus any directory listed in
``BFF_CONNECTORS_DIR`` (``os.pathsep``-separated), whose files add connectors
and replace built-in ones with the same ``name``. :func:`load_connectors` reads
and validates them once; a broken file raises :class:`DefinitionError`, one line
naming the file and the key, e.g.::

    connector definition acme.json: field 'streams[0].paging.kind' must be one of 'none', 'cursor', … (got 'pages')

The shape is :class:`bff.connectors.models.DefinitionModel` (JSON Schema:
``definition.schema.json``, guide: ``docs/connector-definitions.md``). This
module adds the checks that span the file: primary keys and cursors name
declared fields, placeholders name what exists (``{credentials.x}`` a
connect-form field, ``{lookup.x}`` a lookup, ``{partition}`` only with
``partition_by``), and each template uses only the placeholders its place allows.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import models as m
from .spec import (
    ActionSpec,
    AuthSpec,
    ConfigSelect,
    Connector,
    Deletions,
    FieldSpec,
    FormField,
    FormOption,
    Incremental,
    LookupSpec,
    OAuthSpec,
    ObjectField,
    ObjectSpec,
    Paging,
    ResponseCheck,
    Stream,
    TestSpec,
    TokenResponse,
)
from .templates import Template, compile_path, get_path

__all__ = [  # the runtime classes are re-exported: callers import them from here
    "CONNECTORS_DIR_ENV",
    "DEFINITIONS_DIR",
    "LOGO_DIR",
    "ActionSpec",
    "AuthSpec",
    "ConfigSelect",
    "Connector",
    "DefinitionError",
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
    "Template",
    "TestSpec",
    "TokenResponse",
    "compile_path",
    "definition_dirs",
    "get_path",
    "load_connectors",
    "parse_connector",
]

DEFINITIONS_DIR = Path(__file__).with_name("definitions")
LOGO_DIR = DEFINITIONS_DIR / "logos"
CONNECTORS_DIR_ENV = "BFF_CONNECTORS_DIR"

# Which placeholders each kind of template may use.
_URL = ("sandbox", "context", "config", "credentials")
_REQUEST = (*_URL, "lookup", "partition")
_WRITE = (*_URL, "lookup", "id", "fields", "match")
_LOOKUP = _URL
_MANUAL_REFRESH = ("sandbox", "context")


class DefinitionError(ValueError):
    """A definition file is invalid; ``str()`` is one line naming the file and the key."""

    def __init__(self, file: str, key: str | None, message: str) -> None:
        self.file, self.key = file, key
        where = f"field '{key}' " if key else ""
        super().__init__(" ".join(f"connector definition {file}: {where}{message}".split()))


# --------------------------------------------------------------------------- pydantic errors → one line

_UNION_FIELDS = {"auth": "kind", "paging": "kind", "upsert": "strategy"}


def _loc(parts: Sequence[int | str]) -> str:
    out = ""
    skip_tag = False
    for part in parts:
        if skip_tag:
            skip_tag = False
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
            skip_tag = part in _UNION_FIELDS
    return out


def _from_validation_error(file: str, exc: ValidationError) -> DefinitionError:
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # loc ends at the union itself: name its discriminator key.
        tag_key = _UNION_FIELDS.get(str(loc[-1]) if loc else "", "kind")
        key = f"{_loc(loc)}.{tag_key}"
        if kind == "union_tag_not_found":
            return DefinitionError(file, key, "is required")
        return DefinitionError(file, key, f"must be one of {ctx.get('expected_tags')} (got {ctx.get('tag')!r})")
    key = _loc(loc)
    if kind == "missing":
        return DefinitionError(file, key, "is required")
    if kind == "extra_forbidden":
        return DefinitionError(file, key, "is not a known field here")
    if kind in ("literal_error", "enum"):
        return DefinitionError(file, key, f"must be one of {ctx.get('expected')} (got {err.get('input')!r})")
    message = str(err["msg"]).replace("Input should be", "must be").replace("String should", "must")
    return DefinitionError(file, key or None, message[:1].lower() + message[1:])


# --------------------------------------------------------------------------- build + cross-reference checks


class _Builder:
    """Turns one validated model into a :class:`Connector`, checking what spans the file."""

    def __init__(self, file: str, model: m.DefinitionModel) -> None:
        self.file = file
        self.model = model
        self.form_names = {f.name for f in model.connect_form}
        self.lookup_names = set(model.lookups)

    def fail(self, key: str, message: str) -> DefinitionError:
        return DefinitionError(self.file, key, message)

    def template(self, key: str, raw: str, allowed: Iterable[str], *, extra_fields: Iterable[str] = ()) -> Template:
        tpl = Template.parse(raw)
        allowed = tuple(allowed)
        for name in tpl.names:
            root, dot, sub = name.partition(".")
            if root not in allowed:
                raise self.fail(key, f"uses unknown placeholder {{{name}}} (allowed here: {', '.join(allowed)})")
            if root in ("config", "credentials", "context", "lookup", "fields", "match") and not dot:
                raise self.fail(key, f"placeholder {{{name}}} needs a field, e.g. {{{root}.name}}")
            if root in ("partition", "id", "sandbox") and dot:
                raise self.fail(key, f"uses unknown placeholder {{{name}}}")
            if root == "credentials" and sub not in self.form_names:
                raise self.fail(key, f"uses {{{name}}} but connect_form has no field {sub!r}")
            if root == "lookup" and sub not in self.lookup_names:
                raise self.fail(key, f"uses {{{name}}} but 'lookups' declares no {sub!r}")
            if root == "match" and sub not in ("field", "value"):
                raise self.fail(key, f"uses {{{name}}}; only {{match.field}} and {{match.value}} exist")
            if root == "partition" and not self.model.partition_by:
                raise self.fail(key, "uses {partition} but the connector declares no 'partition_by'")
        return tpl

    def params(
        self, key: str, raw: Mapping[str, str | int | float], allowed: Iterable[str]
    ) -> tuple[tuple[str, Template], ...]:
        return tuple((name, self.template(f"{key}.{name}", str(value), allowed)) for name, value in raw.items())

    def paging(self, raw: m.PagingModel | None) -> Paging:
        if raw is None:
            return Paging()
        values = raw.model_dump()
        for key in (
            "next_cursor_path",
            "has_more_path",
            "next_offset_path",
            "total_path",
            "page_count_path",
            "next_url_path",
        ):
            if values.get(key) is not None:
                values[key] = compile_path(values[key])
        if "cursor_record_path" in values:
            values["cursor_record_path"] = compile_path(values["cursor_record_path"])
        return Paging(**values)

    def check_limit(self, key: str, raw: m.PagingModel | None) -> None:
        if raw is not None and raw.kind != "none" and (raw.limit is None) != (raw.limit_param is None):
            raise self.fail(f"{key}.limit_param", "and 'limit' go together")

    def build(self) -> Connector:
        md = self.model
        if md.auth.kind in ("header", "query", "basic"):
            used = [getattr(md.auth, k, None) for k in ("field", "username_field", "password_field")]
            for name in used:
                if name and name not in self.form_names:
                    raise self.fail("auth", f"uses credential field {name!r}, which is not in connect_form")
        if (md.auth_type == "oauth2") != (md.auth.kind == "bearer"):
            raise self.fail("auth.kind", "must be 'bearer' exactly when auth_type is 'oauth2'")
        if md.auth_type == "oauth2" and md.oauth is None:
            raise self.fail("oauth", "is required")
        if len(self.form_names) != len(md.connect_form):
            raise self.fail("connect_form", "has duplicate field names")
        for i, f in enumerate(md.connect_form):
            if f.type == "select" and not f.options:
                raise self.fail(f"connect_form[{i}].options", "is required for a select field")
        if md.partition_by and (md.config_select is None or md.config_select.field != md.partition_by):
            raise self.fail("partition_by", "must name the config_select field whose chosen values are the partitions")
        streams = tuple(self.stream(i, s) for i, s in enumerate(md.streams))
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise self.fail("streams", "has duplicate stream names")
        objects = tuple(self.object(name, o, set(names)) for name, o in md.objects.items())
        return Connector(
            id=md.id,
            name=md.name,
            display_name=md.display_name,
            category=md.category,
            logo=md.logo,
            description=md.description,
            auth_type=md.auth_type,
            connect_form=tuple(
                FormField(
                    name=f.name,
                    label=f.label,
                    type=f.type,
                    required=f.required,
                    secret=f.secret if f.secret is not None else f.type == "password",
                    help=f.help,
                    options=tuple(FormOption(o.value, o.label) for o in f.options),
                )
                for f in md.connect_form
            ),
            base_url=self.template("base_url", md.base_url, (*_URL, "lookup")),
            auth=AuthSpec(**md.auth.model_dump()),
            test=TestSpec(
                method=md.test.method,
                path=self.template("test.path", md.test.path, _REQUEST),
                params=self.params("test.params", md.test.params, _REQUEST),
                expect_status=md.test.expect_status,
                expect_json=compile_path(md.test.expect_json) if md.test.expect_json is not None else None,
            ),
            streams=streams,
            capabilities=tuple(md.capabilities),
            headers=tuple(md.headers.items()),
            oauth=self.oauth(),
            config_select=self.config_select(),
            partition_by=md.partition_by,
            lookups=tuple(
                LookupSpec(
                    name=name,
                    path=self.template(f"lookups.{name}.path", lk.path, _LOOKUP),
                    params=self.params(f"lookups.{name}.params", lk.params, _LOOKUP),
                    value_path=compile_path(lk.value_path),
                )
                for name, lk in md.lookups.items()
            ),
            response_check=ResponseCheck(
                ok_path=compile_path(md.response_check.ok_path),
                error_path=compile_path(md.response_check.error_path),
                auth_errors=tuple(md.response_check.auth_errors),
            )
            if md.response_check
            else None,
            manual_refresh=self.template("manual_refresh.url", md.manual_refresh.url, _MANUAL_REFRESH)
            if md.manual_refresh
            else None,
            docs=tuple([md.docs] if isinstance(md.docs, str) else md.docs),
            objects=objects,
            source=self.file,
            translations=self.translations(),
        )

    def translations(self) -> dict[str, Any]:
        from ..connector_text import collect_translations  # the rules live with the code that uses them

        try:
            return collect_translations(self.model)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise self.fail(key, message) from None

    def oauth(self) -> OAuthSpec | None:
        o = self.model.oauth
        if o is None:
            return None
        tr = o.token_response
        return OAuthSpec(
            authorize_url=self.template("oauth.authorize_url", o.authorize_url, _URL),
            token_url=self.template("oauth.token_url", o.token_url, _URL),
            scopes=tuple(o.scopes),
            scope_separator=o.scope_separator,
            scope_param=o.scope_param,
            pkce=o.pkce,
            client_auth=o.client_auth,
            authorize_params=self.params("oauth.authorize_params", o.authorize_params, _URL),
            token_params=self.params("oauth.token_params", o.token_params, _URL),
            token_response=TokenResponse(
                ok_path=compile_path(tr.ok_path),
                error_path=compile_path(tr.error_path),
                error_description_path=compile_path(tr.error_description_path),
                access_token_path=compile_path(tr.access_token_path),
                refresh_token_path=compile_path(tr.refresh_token_path),
                expires_in_path=compile_path(tr.expires_in_path),
                scope_path=compile_path(tr.scope_path),
                extra=tuple((k, compile_path(v)) for k, v in tr.extra.items()),
                invalid_grant_errors=tuple(tr.invalid_grant_errors),
            ),
        )

    def config_select(self) -> ConfigSelect | None:
        c = self.model.config_select
        if c is None:
            return None
        self.check_limit("config_select.paging", c.paging)
        return ConfigSelect(
            field=c.field,
            label=c.label,
            multiple=c.multiple,
            path=self.template("config_select.path", c.path, _REQUEST),
            params=self.params("config_select.params", c.params, _REQUEST),
            records_path=compile_path(c.records_path),
            value_path=compile_path(c.value_field),
            label_path=compile_path(c.label_field),
            paging=self.paging(c.paging),
            help=c.help,
        )

    def stream(self, i: int, s: m.StreamModel) -> Stream:
        where = f"streams[{i}]"
        names = [f.name for f in s.fields]
        if len(set(names)) != len(names):
            raise self.fail(f"{where}.fields", "has duplicate field names")
        if not s.primary_key:
            raise self.fail(f"{where}.primary_key", "must name at least one field")
        for pk in s.primary_key:
            if pk not in names:
                raise self.fail(f"{where}.primary_key", f"names {pk!r}, which is not a declared field")
        self.check_limit(f"{where}.paging", s.paging)
        incremental = None
        if s.incremental is not None:
            inc = s.incremental
            if inc.cursor_field not in names:
                raise self.fail(
                    f"{where}.incremental.cursor_field", f"names {inc.cursor_field!r}, which is not a declared field"
                )
            template = None
            if inc.format == "template":
                if inc.template is None:
                    raise self.fail(f"{where}.incremental.template", "is required with format 'template'")
                template = self.template(f"{where}.incremental.template", inc.template, ("cursor",))
                if "cursor" not in template.names:
                    raise self.fail(f"{where}.incremental.template", "must contain {cursor}")
            incremental = Incremental(
                cursor_field=inc.cursor_field,
                param=inc.param,
                format=inc.format,
                template=template,
                order=inc.order,
                start=None if inc.start is None else self.template(f"{where}.incremental.start", inc.start, _URL),
            )
        if s.rows is not None:
            if s.path or s.params or s.paging or s.incremental or s.deletions:
                raise self.fail(f"{where}.rows", "goes without path, params, paging, incremental and deletions")
            keys = {f.path if f.path is not None else f.name for f in s.fields}
            for i, row in enumerate(s.rows):
                if not set(row) <= keys:
                    raise self.fail(f"{where}.rows[{i}]", f"has keys no field reads: {sorted(set(row) - keys)}")
        elif not s.path:
            raise self.fail(f"{where}.path", "is required (or rows)")
        path = self.template(f"{where}.path", s.path, _REQUEST)
        params = self.params(f"{where}.params", s.params, _REQUEST)
        deletions = None
        if isinstance(s.deletions, m.ArchivedFlagModel):
            if s.deletions.field not in names:
                raise self.fail(
                    f"{where}.deletions.field", f"names {s.deletions.field!r}, which is not a declared field"
                )
            deletions = Deletions(kind="archived_flag", field=s.deletions.field)
        elif isinstance(s.deletions, m.DeletedIdsModel):
            if len(s.primary_key) != 1:
                raise self.fail(f"{where}.deletions", "deleted_ids needs a single-field primary key")
            deletions = Deletions(
                kind="deleted_ids",
                path=self.template(f"{where}.deletions.path", s.deletions.path, _REQUEST),
                records_path=compile_path(s.deletions.records_path),
                id_path=compile_path(s.deletions.id_path),
                cursor_path=compile_path(s.deletions.cursor_path),
                since_param=s.deletions.since_param,
            )
        return Stream(
            name=s.name,
            path=path,
            params=params,
            records_path=compile_path(s.records_path),
            primary_key=tuple(s.primary_key),
            fields=tuple(
                FieldSpec(f.name, compile_path(f.path if f.path is not None else f.name), f.type) for f in s.fields
            ),
            paging=self.paging(s.paging),
            incremental=incremental,
            description=s.description,
            partitioned=path.uses("partition") or any(t.uses("partition") for _, t in params),
            deletions=deletions,
            rows=None if s.rows is None else tuple(dict(row) for row in s.rows),
        )

    def object(self, name: str, o: m.ObjectModel, streams: set[str]) -> ObjectSpec:
        where = f"objects.{name}"
        if o.stream is not None and o.stream not in streams:
            raise self.fail(f"{where}.stream", f"names {o.stream!r}, which is not a declared stream")
        declared = {f.name for f in o.fields}
        actions: dict[str, ActionSpec] = {}
        raw_actions = {k: v for k, v in o.actions if v is not None}
        if not raw_actions:
            raise self.fail(f"{where}.actions", "must declare at least one action")
        for action, raw in raw_actions.items():
            key = f"{where}.actions.{action}"
            if isinstance(raw, m.SearchUpsert):
                missing = [a for a in ("search", "add", "update") if a not in raw_actions]
                if missing:
                    raise self.fail(f"{key}.strategy", f"'search' needs the actions {', '.join(missing)} too")
                search = o.actions.search
                assert search is not None
                actions[action] = ActionSpec(
                    name=action,
                    method="",
                    path=Template.parse(""),
                    strategy="search",
                    match_fields=tuple(search.match_fields),
                )
                continue
            actions[action] = self.action(key, action, raw)
            spec = actions[action]
            uses_id = spec.path.uses("id") or any(t.uses("id") for _, t in spec.params)
            if action in ("update", "delete", "get") and not uses_id:
                raise self.fail(f"{key}.path", "must use {id}")
            if not o.additional_fields:
                for field_name in (*spec.required, *spec.match_fields, *spec.path_fields):
                    if field_name not in declared:
                        raise self.fail(key, f"names field {field_name!r}, which 'fields' does not declare")
        return ObjectSpec(
            name=name,
            actions=actions,
            fields=tuple(ObjectField(f.name, f.type, f.description) for f in o.fields),
            additional_fields=o.additional_fields,
            stream=o.stream,
            description=o.description,
        )

    def action(self, key: str, name: str, raw: m.ActionModel) -> ActionSpec:
        body = raw.body or ("none" if raw.method in ("GET", "DELETE") else "json")
        template = raw.body_template if raw.body_template is not None else "{fields}"
        self._check_body(f"{key}.body_template", template)
        extra: dict[str, Any] = {}
        if isinstance(raw, m.SearchModel):
            extra = {
                "match_fields": tuple(raw.match_fields),
                "match_in": raw.match_in,
                "records_path": compile_path(raw.records_path),
            }
        elif isinstance(raw, m.NativeUpsert):
            extra = {
                "match_fields": tuple(raw.match_fields),
                "match_in": "template",
                "strategy": "native",
                "created_path": compile_path(raw.created_path) if raw.created_path else None,
            }
        return ActionSpec(
            name=name,
            method=raw.method,
            path=self.template(f"{key}.path", raw.path, _WRITE),
            params=self.params(f"{key}.params", raw.params, _WRITE),
            body=body,
            body_template=template,
            required=tuple(raw.required),
            record_path=compile_path(raw.record_path),
            id_path=compile_path(raw.id_path),
            **extra,
        )

    def _check_body(self, key: str, value: Any) -> None:
        if isinstance(value, str):
            if value != "{fields}":  # the whole record, kept as an object
                self.template(key, value, _WRITE)
        elif isinstance(value, dict):
            for k, v in value.items():
                self._check_body(f"{key}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._check_body(f"{key}[{i}]", v)


def parse_connector(data: Any, file: str = "<memory>") -> Connector:
    """Validate one decoded JSON definition and build its :class:`Connector`."""
    if not isinstance(data, dict):
        raise DefinitionError(file, None, "must be a JSON object")
    try:
        model = m.DefinitionModel.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(file, exc) from None
    return _Builder(file, model).build()


# --------------------------------------------------------------------------- loading


def definition_dirs(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The package's definitions, then each ``BFF_CONNECTORS_DIR`` entry (later ones win)."""
    env = os.environ if environ is None else environ
    extra = [Path(p).expanduser() for p in env.get(CONNECTORS_DIR_ENV, "").split(os.pathsep) if p.strip()]
    return (DEFINITIONS_DIR, *extra)


def _load_dir(directory: Path, *, builtin: bool) -> list[Connector]:
    if not directory.is_dir():
        raise DefinitionError(str(directory), None, f"is not a directory ({CONNECTORS_DIR_ENV})")
    out = []
    for path in sorted(directory.glob("*.json")):
        label = path.name if builtin else str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DefinitionError(label, None, f"not valid JSON ({exc})") from None
        connector = parse_connector(data, label)
        if connector.name != path.stem:
            raise DefinitionError(label, "name", f"must equal the file name ({path.stem!r})")
        # A partner's definition may reuse a built-in logo; the logos are served from the package.
        found = (directory / "logos" / connector.logo).is_file() or (
            not builtin and (LOGO_DIR / connector.logo).is_file()
        )
        if not found:
            raise DefinitionError(label, "logo", f"names a missing file logos/{connector.logo}")
        out.append(connector)
    return out


@functools.lru_cache(maxsize=8)
def _load_cached(directories: tuple[str, ...]) -> tuple[tuple[str, Connector], ...]:
    connectors: dict[str, Connector] = {}
    for i, directory in enumerate(directories):
        for connector in _load_dir(Path(directory), builtin=i == 0):
            connectors[connector.name] = connector  # a later directory overrides by name
    ids: dict[int, str] = {}
    for connector in connectors.values():
        if connector.id in ids:
            raise DefinitionError(connector.source, "id", f"{connector.id} is already used by {ids[connector.id]}")
        ids[connector.id] = connector.name
    return tuple(connectors.items())


@functools.lru_cache(maxsize=4)
def _load_default(env_value: str) -> tuple[tuple[str, Connector], ...]:
    # Keyed by the raw variable: the hot path (every request) skips resolving paths.
    return _load_cached(tuple(str(Path(d).resolve()) for d in definition_dirs({CONNECTORS_DIR_ENV: env_value})))


def load_connectors(directory: str | Path | Sequence[str | Path] | None = None) -> dict[str, Connector]:
    """All connector definitions, keyed by ``name`` (read and validated once, then cached).

    ``directory`` (one or several, later ones override earlier ones by name)
    defaults to :func:`definition_dirs`. Raises :class:`DefinitionError`.
    """
    if directory is None:
        return dict(_load_default(os.environ.get(CONNECTORS_DIR_ENV, "")))
    dirs: Sequence[str | Path]
    if isinstance(directory, (str, Path)):
        dirs = [directory]
    else:
        dirs = directory
    return dict(_load_cached(tuple(str(Path(d).resolve()) for d in dirs)))
