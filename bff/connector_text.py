"""Connector text in the customer's language: field labels, help, option labels, descriptions.

The connector definition is the source. English is written where it always was (``label``,
``help``, ``description``…); other languages sit in one additive block of the same file::

    "translations": {
      "nl": {
        "description": "…",
        "connect_form": {"login": {"label": "Gebruikersnaam", "help": "…", "options": {"eu": "Europa"}}},
        "config_select": {"label": "Administraties", "help": "…"}
      }
    }

Every string falls back to English on its own, so a half-translated definition shows a
half-translated form, never an English one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from .errors import validation_error

if TYPE_CHECKING:
    from .connectors.definitions import ConfigSelect, Connector, FormField

LOCALES = ("en", "nl", "fr", "de")
DEFAULT_LOCALE = "en"
_FIELD_KEYS = {"label", "help", "options"}
_SELECT_KEYS = {"label", "help"}
_LOCALE_KEYS = {"description", "connect_form", "config_select"}


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string")
    return value


def _keys(value: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a known field here (known: {', '.join(sorted(allowed))})")
    return value


def check_translations(raw: Any, form: list[FormField], config_select: ConfigSelect | None) -> Mapping[str, Any]:
    """Validate a definition's ``translations`` block; errors name the offending key."""
    fields = {f.name: f for f in form}
    checked: dict[str, Any] = {}
    for locale, block in _keys(raw, set(LOCALES) - {DEFAULT_LOCALE}, "translations").items():
        block = _keys(block, _LOCALE_KEYS, locale)
        out: dict[str, Any] = {}
        if "description" in block:
            out["description"] = _text(block["description"], f"{locale}.description")
        form_out: dict[str, Any] = {}
        for name, texts in _keys(block.get("connect_form", {}), set(fields), f"{locale}.connect_form").items():
            where = f"{locale}.connect_form.{name}"
            texts = _keys(texts, _FIELD_KEYS, where)
            entry: dict[str, Any] = {k: _text(texts[k], f"{where}.{k}") for k in ("label", "help") if k in texts}
            values = {o.value for o in fields[name].options}
            options = _keys(texts.get("options", {}), values, f"{where}.options")
            entry["options"] = {v: _text(label, f"{where}.options.{v}") for v, label in options.items()}
            form_out[name] = entry
        out["connect_form"] = form_out
        if "config_select" in block:
            if config_select is None:
                raise ValueError(f"{locale}.config_select: the connector has no config_select step")
            texts = _keys(block["config_select"], _SELECT_KEYS, f"{locale}.config_select")
            out["config_select"] = {k: _text(v, f"{locale}.config_select.{k}") for k, v in texts.items()}
        checked[locale] = out
    return checked


def request_locale(request: Request) -> str:
    """``?locale=`` (``nl``, ``nl-BE``, …) → one of :data:`LOCALES`; English when absent."""
    raw = request.query_params.get("locale")
    if raw is None or raw == "":
        return DEFAULT_LOCALE
    base = raw.replace("_", "-").split("-", 1)[0].lower()
    if base not in LOCALES:
        raise validation_error({"locale": f"Must be one of {', '.join(LOCALES)}."}, detail="Unsupported locale.")
    return base


def localized_servertype(connector: Connector, item: dict[str, Any], locale: str) -> dict[str, Any]:
    """A ``/api/servertypes`` item with its text in ``locale`` (per string, English otherwise)."""
    block = connector.translations.get(locale)
    if not block:
        return item
    item = dict(item)
    if "description" in block:
        item["description"] = block["description"]
    form_texts = block.get("connect_form", {})
    fields = []
    for f in item["connect_form"]["fields"]:
        texts = form_texts.get(f["name"], {})
        labels = texts.get("options", {})
        fields.append(
            {
                **f,
                "label": texts.get("label", f["label"]),
                "help": texts.get("help", f["help"]),
                "options": [{**o, "label": labels.get(o["value"], o["label"])} for o in f["options"]],
            }
        )
    item["connect_form"] = {**item["connect_form"], "fields": fields}
    if item.get("config_select"):
        item["config_select"] = localized_config_select(connector, item["config_select"], locale)
    return item


def localized_config_select(connector: Connector, step: dict[str, Any], locale: str) -> dict[str, Any]:
    """The CONFIG_SELECT step's label and help in ``locale``."""
    texts = connector.translations.get(locale, {}).get("config_select", {})
    return {**step, **{k: v for k, v in texts.items() if k in step}}


def localized_form(connector: Connector, fields: list[dict[str, Any]], locale: str) -> list[dict[str, Any]]:
    """Connect-form fields (``FormField.public_dict()``) in ``locale``."""
    item = localized_servertype(connector, {"connect_form": {"fields": fields}}, locale)
    return list(item["connect_form"]["fields"])
