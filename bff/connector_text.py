"""Connector text in the customer's language: field labels, help, option labels, descriptions.

The connector definition is the source. English is written where it always was (``label``,
``help``, ``description``…); other languages sit next to it, in an ``i18n`` block (also accepted as
``translations``) on the object they translate::

    {"name": "login", "label": "Login", "help": "Use sandbox.",
     "i18n": {"nl": {"label": "Gebruikersnaam", "help": "Gebruik sandbox."}}}

on a connect-form field (``label``, ``help``), on an option (``label``), on ``config_select``
(``label``, ``help``) and on the definition itself (``description``). Every string falls back to
English on its own, so a half-translated definition shows a half-translated form, never an
English one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connectors.models import DefinitionModel
    from .connectors.spec import Connector

LOCALES = ("en", "nl", "fr", "de")
DEFAULT_LOCALE = "en"
TRANSLATED = LOCALES[1:]  # English is the definition's own text


def _blocks(
    i18n: Mapping[str, Mapping[str, str]] | None, where: str, allowed: set[str]
) -> Iterator[tuple[str, dict[str, str]]]:
    for locale, texts in (i18n or {}).items():
        if locale not in TRANSLATED:
            raise ValueError(f"{where}.{locale}: is not a supported locale (use {', '.join(TRANSLATED)})")
        unknown = sorted(set(texts) - allowed)
        if unknown:
            raise ValueError(
                f"{where}.{locale}.{unknown[0]}: is not a known key here (known: {', '.join(sorted(allowed))})"
            )
        for key, text in texts.items():
            if not text.strip():
                raise ValueError(f"{where}.{locale}.{key}: must be a non-empty string")
        yield locale, dict(texts)


def collect_translations(model: DefinitionModel) -> dict[str, Any]:
    """The definition's ``i18n`` blocks gathered per locale (see the module docstring); checked."""
    out: dict[str, dict[str, Any]] = {}

    def block(locale: str) -> dict[str, Any]:
        return out.setdefault(locale, {"connect_form": {}})

    for locale, texts in _blocks(model.i18n, "i18n", {"description"}):
        block(locale).update(texts)
    for i, f in enumerate(model.connect_form):
        for locale, texts in _blocks(f.i18n, f"connect_form[{i}].i18n", {"label", "help"}):
            block(locale)["connect_form"].setdefault(f.name, {"options": {}}).update(texts)
        for j, option in enumerate(f.options):
            for locale, texts in _blocks(option.i18n, f"connect_form[{i}].options[{j}].i18n", {"label"}):
                entry = block(locale)["connect_form"].setdefault(f.name, {"options": {}})
                if "label" in texts:
                    entry["options"][option.value] = texts["label"]
    if model.config_select is not None:
        for locale, texts in _blocks(model.config_select.i18n, "config_select.i18n", {"label", "help"}):
            block(locale)["config_select"] = texts
    return out


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
