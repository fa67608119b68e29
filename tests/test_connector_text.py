"""Connector text per locale: the definitions' ``i18n`` blocks and their per-string fallback."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bff.connector_text import TRANSLATED, localized_servertype
from bff.connectors import DEFINITIONS_DIR, load_connectors
from bff.connectors.definitions import DefinitionError, parse_connector


def definition(name: str) -> dict[str, Any]:
    return json.loads((DEFINITIONS_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_every_shipped_string_is_translated_into_every_locale() -> None:
    for connector in load_connectors().values():
        for locale in TRANSLATED:
            block = connector.translations.get(locale, {})
            assert block.get("description"), (connector.name, locale)
            for field in connector.connect_form:
                texts = block["connect_form"].get(field.name, {})
                assert texts.get("label") and (texts.get("help") or not field.help), (
                    connector.name,
                    locale,
                    field.name,
                )
            if connector.config_select:
                assert block["config_select"].get("label"), (connector.name, locale)


def test_a_missing_string_falls_back_to_english_on_its_own() -> None:
    data = definition("sandbox_bank")
    data.pop("i18n")
    for field in data["connect_form"]:
        field.pop("i18n")
    data["connect_form"][0]["i18n"] = {"nl": {"label": "Gebruikersnaam"}}
    connector = parse_connector(data, "sandbox_bank.json")
    item = localized_servertype(connector, connector.public_dict("/logos/"), "nl")
    fields = {f["name"]: f for f in item["connect_form"]["fields"]}
    assert fields["login"]["label"] == "Gebruikersnaam"
    assert fields["login"]["help"] == "Use sandbox."  # this string only
    assert fields["password"]["label"] == "Password"
    assert item["description"] == data["description"]
    assert localized_servertype(connector, connector.public_dict("/logos/"), "fr") == connector.public_dict("/logos/")


def test_option_labels_are_translated() -> None:
    data = definition("sandbox_accounting")
    data["connect_form"].append(
        {
            "name": "region",
            "label": "Region",
            "type": "select",
            "required": False,
            "options": [
                {"value": "eu", "label": "Europe", "i18n": {"nl": {"label": "Europa"}}},
                {"value": "us", "label": "United States"},
            ],
        }
    )
    connector = parse_connector(data, "sandbox_accounting.json")
    item = localized_servertype(connector, connector.public_dict("/logos/"), "nl")
    region = next(f for f in item["connect_form"]["fields"] if f["name"] == "region")
    assert region["options"] == [{"value": "eu", "label": "Europa"}, {"value": "us", "label": "United States"}]


@pytest.mark.parametrize(
    ("where", "i18n", "message"),
    [
        ("field", {"es": {"label": "Usuario"}}, "connect_form[0].i18n.es' is not a supported locale"),
        ("field", {"nl": {"placeholder": "x"}}, "connect_form[0].i18n.nl.placeholder' is not a known key here"),
        ("field", {"nl": {"label": " "}}, "connect_form[0].i18n.nl.label' must be a non-empty string"),
        ("top", {"nl": {"label": "Bank"}}, "field 'i18n.nl.label' is not a known key here"),
    ],
)
def test_a_broken_i18n_block_names_the_key(where: str, i18n: dict[str, Any], message: str) -> None:
    data = copy.deepcopy(definition("sandbox_bank"))
    if where == "field":
        data["connect_form"][0]["i18n"] = i18n
    else:
        data["i18n"] = i18n
    with pytest.raises(DefinitionError) as caught:
        parse_connector(data, "sandbox_bank.json")
    assert message in str(caught.value) and "sandbox_bank.json" in str(caught.value)
