"""Connectors are data: JSON definitions run by one httpx engine.

* :mod:`.models` — the typed definition format (JSON Schema: ``definition.schema.json``);
* :mod:`.definitions` — load, cross-check and build ``definitions/*.json`` (+ ``BFF_CONNECTORS_DIR``);
* :mod:`.spec` — the runtime (frozen) form of a definition; :mod:`.templates` — paths and placeholders;
* :mod:`.oauth`, :mod:`.transport`, :mod:`.pagers`, :mod:`.records`, :mod:`.session` — the read engine;
* :mod:`.writer` — objects: add, update, delete, upsert, get, search;
* :mod:`.retry` — the per-cause :class:`RetryPolicy`.
"""

from __future__ import annotations

from .definitions import DEFINITIONS_DIR, LOGO_DIR, DefinitionError, load_connectors
from .errors import (
    ConfigRequired,
    ConnectorError,
    CredentialsRejected,
    OAuthError,
    ProviderError,
    ProviderRejected,
    RetriesExhausted,
)
from .oauth import OAuthClient, OAuthTokens, build_authorize_url, exchange_code, new_pkce_pair, refresh_tokens
from .retry import Cause, Decision, LongWait, RetryPolicy, parse_retry_after
from .session import ConnectorSession, Page
from .spec import Connector, FormField, ObjectSpec, Stream

__all__ = [
    "DEFINITIONS_DIR",
    "LOGO_DIR",
    "Cause",
    "ConfigRequired",
    "Connector",
    "ConnectorError",
    "ConnectorSession",
    "CredentialsRejected",
    "Decision",
    "DefinitionError",
    "FormField",
    "LongWait",
    "OAuthClient",
    "OAuthError",
    "OAuthTokens",
    "ObjectSpec",
    "Page",
    "ProviderError",
    "ProviderRejected",
    "RetriesExhausted",
    "RetryPolicy",
    "Stream",
    "build_authorize_url",
    "exchange_code",
    "load_connectors",
    "new_pkce_pair",
    "parse_retry_after",
    "refresh_tokens",
]
