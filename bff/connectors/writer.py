"""Writeback: the ``objects`` of a definition run against one connection's session.

:class:`Writer` validates fields before any provider call (:class:`FieldErrors`),
builds the body from the action's template (JSON or form-encoded, Stripe-style
brackets for nested values), sends it through the session (auth, retry policy,
token refresh) and reads the id and record from the answer. A provider 4xx
becomes :class:`ProviderRejected` with the provider's own message (scrubbed of
secrets); the retry policy giving up stays :class:`RetriesExhausted`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .errors import ConnectorError, ProviderRejected
from .session import ConnectorSession
from .spec import ActionSpec, ObjectSpec
from .templates import Path, Template, get_path
from .transport import provider_message, short

__all__ = ["FieldErrors", "ObjectNotSupported", "UpsertAmbiguous", "WriteResult", "Writer", "encode_form"]

_TYPE_CHECKS: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "datetime": (str,),
    "date": (str,),
    "integer": (int,),
    "decimal": (int, float),
    "number": (int, float),
    "boolean": (bool,),
}
_TYPE_NAMES = {
    "text": "a string",
    "datetime": "an ISO-8601 string",
    "date": "an ISO-8601 date (2026-01-31)",
    "decimal": "a number",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
}


class ObjectNotSupported(ConnectorError):
    """The connector has no such object, or the object no such action."""

    code = "object_not_supported"


class FieldErrors(ConnectorError):
    """Missing or invalid fields, found before any provider call; ``errors`` maps field → message."""

    code = "validation_error"

    def __init__(self, detail: str, errors: Mapping[str, str]) -> None:
        super().__init__(detail)
        self.errors = dict(errors)


class UpsertAmbiguous(ConnectorError):
    """An upsert's match field found more than one record."""

    code = "upsert_ambiguous"


@dataclass(frozen=True)
class WriteResult:
    """``created``: the provider made a new record (add, or an upsert that matched nothing)."""

    created: bool
    id: str | None
    record: Any


def encode_form(value: Mapping[str, Any]) -> str:
    """Form-encode nested values the way Stripe and Rails read them: ``metadata[key]=v``, ``items[0][price]=p``."""
    pairs: list[tuple[str, str]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, inner in v.items():
                walk(f"{prefix}[{k}]" if prefix else str(k), inner)
        elif isinstance(v, (list, tuple)):
            for i, inner in enumerate(v):
                walk(f"{prefix}[{i}]", inner)
        elif isinstance(v, bool):
            pairs.append((prefix, "true" if v else "false"))
        elif v is None:
            pairs.append((prefix, ""))
        else:
            pairs.append((prefix, str(v)))

    walk("", value)
    return urlencode(pairs)


def _render_body(template: Any, values: Any) -> Any:
    """Fill a body template: ``"{fields}"`` (or any lone ``"{x}"``) keeps the value's JSON type."""
    if isinstance(template, str):
        tpl = Template.parse(template)
        if len(tpl.parts) == 1 and tpl.parts[0][0]:
            name = tpl.parts[0][1]
            return values.fields if name == "fields" else values.value(name)
        return tpl.render(values)
    if isinstance(template, dict):
        return {k: _render_body(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_render_body(v, values) for v in template]
    return template


class Writer:
    """Runs an object's actions over one :class:`ConnectorSession`."""

    def __init__(self, session: ConnectorSession) -> None:
        self.session = session
        self.connector = session.connector
        self.display = session.display

    # ------------------------------------------------------------------ lookups and validation

    def object(self, name: str, action: str | None = None) -> ObjectSpec:
        obj = self.connector.object(name)
        if obj is None:
            known = ", ".join(o.name for o in self.connector.objects) or "none"
            raise ObjectNotSupported(f"{self.display} has no writable object {name!r} (objects: {known}).")
        if action is not None and action not in obj.actions:
            known = ", ".join(obj.actions) or "none"
            raise ObjectNotSupported(f"{self.display} cannot {action} a {name} (actions: {known}).")
        return obj

    def validate(self, obj: ObjectSpec, spec: ActionSpec, fields: Mapping[str, Any], *, partial: bool = False) -> None:
        """Field checks before any provider call; raises :class:`FieldErrors`."""
        errors: dict[str, str] = {}
        types = obj.field_types()
        for name, value in fields.items():
            kind = types.get(name)
            if kind is None:
                if not obj.additional_fields:
                    errors[name] = f"Unknown field; a {obj.name} has: {', '.join(types) or 'no declared fields'}."
                continue
            allowed = _TYPE_CHECKS.get(kind)
            if value is None or allowed is None:
                continue
            if not isinstance(value, allowed) or (kind != "boolean" and isinstance(value, bool)):
                errors[name] = f"Must be {_TYPE_NAMES[kind]}."
        needed = spec.path_fields if partial else (*spec.required, *spec.path_fields)
        for name in needed:
            if fields.get(name) in (None, "") and name not in errors:
                errors[name] = "This field is required."
        if errors:
            raise FieldErrors(f"Some fields of the {obj.name} are missing or invalid.", errors)

    def _match(self, obj: ObjectSpec, spec: ActionSpec, match: Mapping[str, Any]) -> None:
        errors: dict[str, str] = {}
        if not match:
            errors["match"] = f"Give a field to search by: {', '.join(spec.match_fields)}."
        for name, value in match.items():
            if name not in spec.match_fields:
                errors[name] = (
                    f"Cannot search by this field; a {obj.name} is searchable by {', '.join(spec.match_fields)}."
                )
            elif value in (None, ""):
                errors[name] = "Give a value to search for."
        if spec.match_in == "template" and len(match) > 1:
            errors["match"] = f"{self.display} searches by one field at a time."
        if errors:
            raise FieldErrors(f"The search of {obj.name} records is not valid.", errors)

    # ------------------------------------------------------------------ actions

    async def add(self, object_name: str, fields: Mapping[str, Any]) -> WriteResult:
        obj = self.object(object_name, "add")
        spec = obj.actions["add"]
        self.validate(obj, spec, fields)
        _, record = await self._run(obj, spec, fields)
        return WriteResult(True, _id(record, spec.id_path), record)

    async def update(self, object_name: str, record_id: str, fields: Mapping[str, Any]) -> WriteResult:
        obj = self.object(object_name, "update")
        spec = obj.actions["update"]
        self.validate(obj, spec, fields, partial=True)
        _, record = await self._run(obj, spec, fields, record_id=record_id)
        return WriteResult(False, _id(record, spec.id_path) or record_id, record)

    async def delete(self, object_name: str, record_id: str) -> WriteResult:
        obj = self.object(object_name, "delete")
        await self._run(obj, obj.actions["delete"], {}, record_id=record_id)
        return WriteResult(False, record_id, None)

    async def get(self, object_name: str, record_id: str) -> WriteResult:
        obj = self.object(object_name, "get")
        spec = obj.actions["get"]
        _, record = await self._run(obj, spec, {}, record_id=record_id)
        return WriteResult(False, _id(record, spec.id_path) or record_id, record)

    async def search(self, object_name: str, match: Mapping[str, Any]) -> list[Any]:
        obj = self.object(object_name, "search")
        spec = obj.actions["search"]
        self._match(obj, spec, match)
        return await self._search(obj, spec, match)

    async def upsert(self, object_name: str, fields: Mapping[str, Any], match: str) -> WriteResult:
        obj = self.object(object_name, "upsert")
        spec = obj.actions["upsert"]
        if match not in spec.match_fields:
            raise FieldErrors(
                f"A {obj.name} upsert matches on {', '.join(spec.match_fields)}.",
                {"match": f"Must be one of: {', '.join(spec.match_fields)}."},
            )
        if fields.get(match) in (None, ""):
            raise FieldErrors(f"The upsert of a {obj.name} needs the match field.", {match: "This field is required."})
        if spec.strategy == "native":
            self.validate(obj, spec, fields)
            body, record = await self._run(obj, spec, fields, match={"field": match, "value": fields[match]})
            created = bool(get_path(body, spec.created_path)) if spec.created_path else self._last_status == 201
            return WriteResult(created, _id(record, spec.id_path), record)
        search = obj.actions["search"]
        self.validate(obj, obj.actions["add"], fields)  # whichever way it goes, the record must be valid to add
        found = await self._search(obj, search, {match: fields[match]})
        if len(found) > 1:
            raise UpsertAmbiguous(
                f"{len(found)} {obj.name} records have this {match}; update one of them by id instead."
            )
        if not found:
            return await self.add(object_name, fields)
        record_id = _id(found[0], search.id_path)
        if record_id is None:
            raise ProviderRejected(f"{self.display} found the {obj.name} but not its id.", status=200, message=None)
        return await self.update(object_name, record_id, fields)

    # ------------------------------------------------------------------ one call

    _last_status = 0

    async def _search(self, obj: ObjectSpec, spec: ActionSpec, match: Mapping[str, Any]) -> list[Any]:
        values = (
            {"field": next(iter(match)), "value": next(iter(match.values()))} if spec.match_in == "template" else {}
        )
        extra = {k: str(v) for k, v in match.items()} if spec.match_in == "params" else {}
        body, _ = await self._run(obj, spec, {}, match=values, extra_params=extra)
        rows = self.session.records(body, spec.records_path, f"{obj.name} search results")
        return [get_path(r, spec.record_path) if spec.record_path else r for r in rows]

    async def _run(
        self,
        obj: ObjectSpec,
        spec: ActionSpec,
        fields: Mapping[str, Any],
        *,
        record_id: str | None = None,
        match: Mapping[str, Any] | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> tuple[Any, Any]:
        """One provider call; answers ``(decoded body, record at record_path)``."""
        session = self.session
        values: dict[str, Any] = {"record_id": record_id, "fields": dict(fields), "match": dict(match or {})}
        url = await session.url(spec.path, **values)
        params = session.params(spec.params, **values)
        params.update(extra_params or {})
        headers: dict[str, str] = {}
        content: bytes | None = None
        if spec.body != "none":
            body_fields = {k: v for k, v in fields.items() if k not in spec.path_fields}
            resolver = session.placeholders(**{**values, "fields": body_fields})
            payload = _render_body(spec.body_template, resolver)
            if spec.body == "form":
                if not isinstance(payload, Mapping):
                    raise FieldErrors("A form-encoded body must be an object.", {"fields": "Must be an object."})
                content, headers["Content-Type"] = encode_form(payload).encode(), "application/x-www-form-urlencoded"
            else:
                content, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
        label = f"{spec.name} {obj.name}"
        response = await session.request(
            spec.method,
            url,
            params,
            label,
            headers=headers,
            content=content,
            is_auth_failure=session.flagged_auth_failure,
        )
        self._last_status = response.status_code
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        error = session.check_response(body) if 200 <= response.status_code < 300 else None
        if response.status_code >= 400 or error is not None:
            message = error if error is not None else provider_message(body)
            if message is None and response.status_code >= 400 and response.content and body is None:
                message = short(response.text, 160)
            message = session.scrub(message) if message else None
            what = f"{self.display} refused to {spec.name} the {obj.name}"
            raise ProviderRejected(
                f"{what} (HTTP {response.status_code}){': ' + message.rstrip('.') if message else ''}.",
                status=response.status_code,
                message=message,
            )
        record = get_path(body, spec.record_path) if spec.record_path and spec.name != "search" else body
        return body, record


def _id(record: Any, path: Path) -> str | None:
    value = get_path(record, path) if path else None
    return None if value is None or isinstance(value, (dict, list)) else str(value)
