"""The HTTP surfaces, one thin module each: parse the request, make one service call, shape the answer.

No module here runs SQL or touches the pool (``tests/test_structure.py`` checks it): that is the
services' and the store's work. ``bff.app`` mounts every module's ``routes()``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from .. import embed
from . import connections, data, lifecycle, oauth, partners, records, scripts, sync, tables, webhooks


def routes() -> list[BaseRoute]:
    return [
        *partners.routes(),
        *connections.routes(),
        *oauth.routes(),
        *sync.routes(),
        *data.routes(),
        *tables.routes(),
        *embed.routes(),
        *records.routes(),
        *lifecycle.routes(),
        *webhooks.routes(),
        *scripts.routes(),
    ]
