"""The connector error family. ``str(exc)`` is a sentence for the user, never holding secrets.

::

    ConnectorError
    ├── CredentialsRejected      the provider refused the credentials (401/403, invalid_grant)
    ├── ProviderError            the provider failed or answered something unusable
    │   ├── RetriesExhausted     the retry policy gave up (``reason`` says why)
    │   └── ProviderRejected     a write was refused with a 4xx (validation, not found, conflict)
    ├── OAuthError               an OAuth step failed without rejecting the credentials
    └── ConfigRequired           a request needs configuration the connection lacks
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ConfigRequired",
    "ConnectorError",
    "CredentialsRejected",
    "OAuthError",
    "ProviderError",
    "ProviderRejected",
    "RetriesExhausted",
]


class ConnectorError(Exception):
    """Base of every connector failure. ``str(exc)`` is a user-facing sentence."""

    code = "connector_error"

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.detail


class CredentialsRejected(ConnectorError):
    """The provider refused the credentials (401/403, or ``invalid_grant`` from the token endpoint)."""

    code = "credentials_rejected"


class ProviderError(ConnectorError):
    """The provider failed or answered something we cannot use."""

    code = "provider_error"


class RetriesExhausted(ProviderError):
    """The retry policy gave up; ``reason`` is the policy's sentence, ``cause`` the last failure kind."""

    code = "retries_exhausted"

    def __init__(
        self,
        reason: str,
        *,
        detail: str | None = None,
        status: int | None = None,
        cause: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        self.reason = reason
        self.cause = cause
        self.retry_after = retry_after
        super().__init__(detail or reason, status=status)


class ProviderRejected(ProviderError):
    """A write (or a get) answered 4xx: ``message`` is the provider's own words, ``body`` its JSON."""

    code = "provider_rejected"

    def __init__(self, detail: str, *, status: int, message: str | None, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail, status=status)
        self.message = message
        self.body = dict(body) if body else None


class OAuthError(ConnectorError):
    """An OAuth step failed in a way that is not a credential rejection (bad token response, …)."""

    code = "oauth_error"


class ConfigRequired(ConnectorError):
    """The connection lacks configuration a request needs (e.g. no divisions chosen yet)."""

    code = "config_required"
