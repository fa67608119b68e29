"""Dotted paths into JSON answers, ``{placeholder}`` templates, and the one resolver that fills them.

Placeholders (see docs/connector-definitions.md):

==================  =========================================================  ==================
placeholder         value                                                      when it is missing
==================  =========================================================  ==================
``{sandbox}``       the BFF's ``<public url>/sandbox``                         ConfigRequired
``{context.x}``     a deployment value                                         ConfigRequired
``{config.x}``      a CONFIG_SELECT choice of the connection                   ConfigRequired
``{credentials.x}`` a connect-form value                                       CredentialsRejected
``{lookup.x}``      a value fetched once per session (``lookups``)             ConfigRequired
``{partition}``     the partition being read                                   ConfigRequired
``{cursor}``        the incremental cursor (only in ``incremental.template``)  ConfigRequired
``{id}``            the record id of a write                                   ConfigRequired
``{fields.x}``      a field of the record being written (consumed by the path) ConfigRequired
``{match.field}``   the field a search matches on, ``{match.value}`` its value ConfigRequired
==================  =========================================================  ==================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import ConfigRequired, CredentialsRejected

__all__ = ["PLACEHOLDER_ROOTS", "Placeholders", "Template", "compile_path", "get_path"]

PLACEHOLDER_ROOTS = (
    "sandbox",
    "context",
    "config",
    "credentials",
    "lookup",
    "partition",
    "cursor",
    "id",
    "fields",
    "match",
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_$\-]+)?)\}")

Path = tuple[str | int, ...]


def compile_path(path: str | None) -> Path:
    """``"d.results.0.Code"`` → ``("d", "results", 0, "Code")``; ``""`` → ``()`` (the root)."""
    if not path:
        return ()
    return tuple(int(part) if part.isdigit() else part for part in path.split("."))


def get_path(obj: Any, keys: Path) -> Any:
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

    def uses(self, root: str) -> bool:
        return any(is_ph and (text == root or text.startswith(root + ".")) for is_ph, text in self.parts)

    def render(self, resolve: Callable[[str], str]) -> str:
        if len(self.parts) == 1 and not self.parts[0][0]:
            return self.parts[0][1]
        return "".join(resolve(text) if is_ph else text for is_ph, text in self.parts)

    def __str__(self) -> str:
        return self.raw


class Placeholders:
    """The one resolver: every template of every definition is rendered through an instance.

    A missing value raises the same error wherever the template is (a URL, a
    path, a parameter): :class:`CredentialsRejected` for connect-form values,
    :class:`ConfigRequired` for everything else. ``quote_values`` URL-quotes
    each value, so a typed-in value cannot move a path or a host.
    """

    def __init__(
        self,
        display: str,
        *,
        context: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        credentials: Mapping[str, Any] | None = None,
        lookups: Mapping[str, str] | None = None,
        partition: Any = None,
        cursor: Any = None,
        record_id: Any = None,
        fields: Mapping[str, Any] | None = None,
        match: Mapping[str, Any] | None = None,
        quote_values: bool = False,
    ) -> None:
        self.display = display
        self.context = context or {}
        self.config = config or {}
        self.credentials = credentials or {}
        self.lookups = lookups or {}
        self.partition = partition
        self.cursor = cursor
        self.record_id = record_id
        self.fields = fields or {}
        self.match = match or {}
        self.quote_values = quote_values

    def value(self, name: str) -> Any:
        root, _, key = name.partition(".")
        if root == "sandbox":
            value = self.context.get("sandbox")
            if value is None:
                raise ConfigRequired("The sandbox URL is not configured on this server.")
            return str(value).rstrip("/")
        if root == "credentials":
            value = self.credentials.get(key)
            if value is None or value == "":
                raise CredentialsRejected(
                    f"{self.display} is missing the '{key}' credential; fill in the connect form again."
                )
            return value
        source: Mapping[str, Any] | None = {
            "context": self.context,
            "config": self.config,
            "lookup": self.lookups,
            "fields": self.fields,
            "match": self.match,
        }.get(root)
        if source is not None:
            value = source.get(key)
        elif root == "partition":
            value = self.partition
        elif root == "cursor":
            value = self.cursor
        elif root == "id":
            value = self.record_id
        else:
            value = None
        if value is None or value == "" or value == []:
            raise ConfigRequired(f"{self.display} needs '{name}', which is not set.")
        return value

    def __call__(self, name: str) -> str:
        text = str(self.value(name))
        return quote(text, safe="") if self.quote_values and name != "sandbox" else text
