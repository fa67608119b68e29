"""Connector text per locale: the definitions' ``translations`` blocks and their per-string fallback."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bff.connector_text import LOCALES, localized_servertype
from bff.connectors import DEFINITIONS_DIR, load_connectors
from bff.connectors.definitions import parse_connector


def definition(name: str) -> dict[str, Any]:
    return json.loads((DEFINITIONS_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_every_shipped_string_is_translated_into_every_locale() -> None:
    for connector in load_connectors().values():
        for locale in LOCALES[1:]:
            block = connector.translations.get(locale, {})
            assert block.get("description"), (connector.name, locale)
            for field in connector.connect_form:
                texts = block["connect_form"].get(field.name, {})
                assert texts.get("label") and (texts.get("help") or not field.help), (connector.name, locale, field.name)
            if connector.config_select:
                assert block["config_select"].get("label"), (connector.name, locale)


def test_a_missing_string_falls_back_to_english_on_its_own() -> None:
    data = definition("sandbox_bank")
    data["translations"] = {"nl": {"connect_form": {"login": {"label": "Gebruikersnaam"}}}}
    connector = parse_connector(data, "sandbox_bank.json")
    item = localized_servertype(connector, connector.public_dict("/logos/"), "nl")
    fields = {f["name"]: f for f in item["connect_form"]["fields"]}
    assert fields["login"]["label"] == "Gebruikersnaam"
    assert fields["login"]["help"] == "Use sandbox."  # this string only
    assert fields["password"]["label"] == "Password"
    assert item["description"] == data["description"]
    assert localized_servertype(connector, connector.public_dict("/logos/"), "fr") == connector.public_dict("/logos/")


@pytest.mark.parametrize(
    ("translations", "message"),
    [
        ({"es": {}}, "translations.es is not a known field"),
        ({"nl": {"connect_form": {"pin": {"label": "PIN"}}}}, "nl.connect_form.pin is not a known field"),
        ({"nl": {"connect_form": {"login": {"label": ""}}}}, "nl.connect_form.login.label must be a non-empty string"),
        ({"nl": {"connect_form": {"login": {"placeholder": "x"}}}}, "nl.connect_form.login.placeholder is not a known field"),
        ({"nl": {"config_select": {"label": "Keuze"}}}, "nl.config_select: the connector has no config_select step"),
        ({"nl": "Gebruikersnaam"}, "nl must be an object"),
    ],
)
def test_a_broken_translations_block_names_the_key(translations: dict[str, Any], message: str) -> None:
    data = copy.deepcopy(definition("sandbox_bank"))
    data["translations"] = translations
    with pytest.raises(ValueError, match="sandbox_bank.json: field 'translations'") as caught:
        parse_connector(data, "sandbox_bank.json")
    assert message in str(caught.value)
