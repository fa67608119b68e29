"""How a route's input is parsed: the base models of :mod:`.requests` and the helpers their
validators share. :func:`bff.http.parse_body` validates with them (strictly) and words pydantic's
refusals with ``say`` and ``report_as`` (``{code: "validation_error", errors: {field: message}}``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, ValidationInfo, model_validator

from ..errors import validation_error


def defaults_in_words(schema: dict[str, Any]) -> None:
    """A field that may be left out has no ``default`` in the document, but says it in words:
    openapi-typescript types a field with a default as one that must be sent."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop:
            default = prop.pop("default")
            if default is not None:
                said = f"Default: {json.dumps(default)}."
                prop["description"] = f"{prop['description']} {said}" if prop.get("description") else said


class FieldsRefused(ValueError):
    """Raised by a validator that refuses more than its own field (``{field: message}``)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = dict(errors)


class Input(BaseModel):
    """What a route takes, parsed by :func:`bff.http.body`. ``say``: ``{field: message}`` or
    ``{"field:<pydantic error type>": message}`` for pydantic's own refusals, ``"*unknown"`` for
    a key the model does not have; ``report_as``: ``{field: reported_field}`` (``"*unknown"``
    likewise)."""

    say: ClassVar[Mapping[str, str]] = {}
    report_as: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def refused(cls, errors: dict[str, str]) -> Exception:
        return validation_error(errors)


class Body(Input):
    model_config = ConfigDict(extra="forbid", json_schema_extra=defaults_in_words)


class OpenBody(Input):
    """A body whose keys are not fixed (a connector's form fields, a provider's record)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=defaults_in_words)


class FormBody(OpenBody):
    """An open body whose other keys are a connector's form: the declared fields are checked here,
    the others by the connector's form (its labels in the messages, e.g. "API key is required.")."""

    @model_validator(mode="wrap")
    @classmethod
    def _form_fields_checked_by_the_form(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        parsed = handler({key: value for key, value in data.items() if key in cls.model_fields})
        parsed.__pydantic_extra__ = {key: value for key, value in data.items() if key not in cls.model_fields}
        return parsed

    def form_values(self) -> dict[str, Any]:
        """The declared fields given, then the form's as they came (unchecked here: ``model_dump``
        would serialise them by the schema's types and warn about any other value)."""
        extra = self.__pydantic_extra__ or {}
        return {**self.model_dump(exclude_unset=True, exclude=set(extra)), **extra}


def text(value: Any, *, max_length: int, required: bool, strip: bool = False) -> str | None:
    """A non-blank string: ``""`` and spaces are "Must not be empty.", None is absent (or required)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("Must not be empty.")
    if value is None:
        if required:
            raise ValueError("This field is required.")
        return None
    if not isinstance(value, str):
        raise ValueError("Must be a string.")
    if len(value) > max_length:
        raise ValueError(f"Must be at most {max_length} characters.")
    return value.strip() if strip else value


def blank_is_absent(value: Any) -> Any:
    return None if value == "" else value


def context_of(info: ValidationInfo, key: str) -> Any:
    if not isinstance(info.context, dict) or key not in info.context:
        raise RuntimeError(f"{key} is needed in the validation context")
    return info.context[key]
