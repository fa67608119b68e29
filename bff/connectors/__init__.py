"""Connectors are data: JSON definitions run by one httpx engine.

* :mod:`bff.connectors.definitions` — load/validate ``definitions/*.json``;
* :mod:`bff.connectors.engine` — OAuth helpers and :class:`ConnectorSession`;
* :mod:`bff.connectors.retry` — the per-cause :class:`RetryPolicy`.
"""

from __future__ import annotations

from .definitions import DEFINITIONS_DIR, LOGO_DIR, Connector, FormField, Stream, get_connector, load_connectors
from .engine import (
    ConfigRequired,
    ConnectorError,
    ConnectorSession,
    CredentialsRejected,
    OAuthClient,
    OAuthError,
    OAuthTokens,
    Page,
    ProviderError,
    RetriesExhausted,
    build_authorize_url,
    exchange_code,
    new_pkce_pair,
    refresh_tokens,
)
from .retry import Cause, Decision, LongWait, RetryPolicy, parse_retry_after

__all__ = [
    "Cause",
    "ConfigRequired",
    "Connector",
    "ConnectorError",
    "ConnectorSession",
    "CredentialsRejected",
    "DEFINITIONS_DIR",
    "Decision",
    "FormField",
    "LOGO_DIR",
    "LongWait",
    "OAuthClient",
    "OAuthError",
    "OAuthTokens",
    "Page",
    "ProviderError",
    "RetriesExhausted",
    "RetryPolicy",
    "Stream",
    "build_authorize_url",
    "exchange_code",
    "get_connector",
    "load_connectors",
    "new_pkce_pair",
    "parse_retry_after",
    "refresh_tokens",
]
