"""The connector engine's public surface, in one import (kept for existing callers).

The engine is split by concept: :mod:`.oauth` (PKCE, authorize URL, token
endpoint), :mod:`.transport` (one call through the retry policy),
:mod:`.pagers` (one pager per paging kind, one loop), :mod:`.records` (record
conversion), :mod:`.session` (auth, refresh, reads) and :mod:`.writer`
(objects: add, update, delete, upsert, get, search).
"""

from __future__ import annotations

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
from .session import ConnectorSession, Page
from .transport import USER_AGENT

__all__ = [
    "USER_AGENT",
    "ConfigRequired",
    "ConnectorError",
    "ConnectorSession",
    "CredentialsRejected",
    "OAuthClient",
    "OAuthError",
    "OAuthTokens",
    "Page",
    "ProviderError",
    "ProviderRejected",
    "RetriesExhausted",
    "build_authorize_url",
    "exchange_code",
    "new_pkce_pair",
    "refresh_tokens",
]
