"""What domain code needs at run time: settings, the connector definitions, the store, tokens, the
vault, a clock and HTTP.

Routes get the full :class:`bff.services.Services` (which extends this); the
connection runtime and the sync runner only need this much, so they never import
the application layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import httpx

from .connectors import Connector
from .crypto import Vault
from .settings import Settings
from .store import Store
from .tokens import TokenAuthority


@dataclasses.dataclass(kw_only=True)
class Runtime:
    settings: Settings
    store: Store
    tokens: TokenAuthority
    vault: Vault
    clock: Callable[[], float]
    http: httpx.AsyncClient
    # Every connector definition (BFF_CONNECTORS_DIR included), read and validated once by create_app.
    connectors: Mapping[str, Connector]
