"""``?page=&page_size=`` → offset/limit, and the ``{count, next, previous, results}`` envelope."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from ..auth import services
from ..contract.queries import Paging
from ..http import DEFAULT_PAGE_SIZE, parse_query


class Pagination:
    """``?page=&page_size=`` → offset/limit, and the ``{count, next, previous, results}`` envelope."""

    def __init__(
        self, request: Request, *, default_size: int = DEFAULT_PAGE_SIZE, size_alias: str | None = None
    ) -> None:
        self.request = request
        named = None
        if size_alias and not request.query_params.get("page_size") and request.query_params.get(size_alias):
            named = {"page_size": size_alias}
        paging = parse_query(request, Paging, named=named)
        self.page = paging.page or 1
        self.page_size = paging.page_size or default_size
        self.offset = (self.page - 1) * self.page_size
        self.limit = self.page_size

    def _link(self, page: int) -> str:
        # From the configured public URL, never the request's Host header (which the client chooses).
        params = dict(self.request.query_params)
        params["page"] = str(page)
        public_url = services(self.request).settings.public_url
        return f"{public_url}{self.request.url.path}?{urlencode(params)}"

    def envelope(self, count: int, results: list[Any]) -> dict[str, Any]:
        has_next = self.offset + len(results) < count
        return {
            "count": count,
            "next": self._link(self.page + 1) if has_next else None,
            "previous": self._link(self.page - 1) if self.page > 1 else None,
            "results": results,
        }
