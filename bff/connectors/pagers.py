"""Paging: one small pager per paging kind, all driven by the single loop in :func:`pages`.

A pager gets the request it made and the answer, and returns the next request
or ``None`` when that was the last page. Pagers that follow provider-given URLs
(``link_header``, ``next_url``) return absolute URLs, which the loop checks
against the API's own origin before sending credentials there.

A pager whose next request follows from the answer's headers alone (``link_header``:
``from_headers``) has that request sent as soon as the answer is in, before its body is
decoded: the provider prepares the next page while this one is decoded and written. Still one
request in flight at a time, never one the serial loop would not have made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import ProviderError
from .spec import Paging
from .templates import get_path
from .transport import num

__all__ = ["Request", "make_pager", "pages"]


@dataclass(frozen=True)
class Request:
    url: str | httpx.URL
    params: dict[str, str] | None
    followed: bool = False  # the URL came from the provider (check its origin)


class _Single:
    def next(self, request: Request, response: httpx.Response, body: Any, records: list[Any]) -> Request | None:
        return None


class _Cursor:
    def __init__(self, paging: Paging, display: str) -> None:
        self.p, self.display = paging, display
        self.cursor: str | None = None

    def next(self, request: Request, response: httpx.Response, body: Any, records: list[Any]) -> Request | None:
        p = self.p
        if p.next_cursor_path is not None:
            nxt = get_path(body, p.next_cursor_path)
            last = nxt is None or nxt == ""
        else:
            nxt = get_path(records[-1], p.cursor_record_path) if records else None
            last = not records or nxt is None
        if p.has_more_path is not None and get_path(body, p.has_more_path) is False:
            last = True
        if last:
            return None
        if str(nxt) == self.cursor:
            raise ProviderError(f"{self.display} returned the same page cursor twice; stopping to avoid a loop.")
        self.cursor = str(nxt)
        return Request(request.url, {**(request.params or {}), p.cursor_param or "cursor": self.cursor})


class _Offset:
    def __init__(self, paging: Paging, display: str) -> None:
        self.p, self.display, self.offset = paging, display, 0

    def first(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, self.p.offset_param or "offset": "0"}

    def next(self, request: Request, response: httpx.Response, body: Any, records: list[Any]) -> Request | None:
        p, n = self.p, len(records)
        has_more = get_path(body, p.has_more_path) if p.has_more_path else None
        total = num(get_path(body, p.total_path)) if p.total_path else None
        nxt = num(get_path(body, p.next_offset_path)) if p.next_offset_path else None
        next_offset = int(nxt) if nxt is not None else self.offset + n
        if n == 0:
            last = True
        elif isinstance(has_more, bool):
            last = not has_more
        elif total is not None:
            last = next_offset >= total
        elif p.next_offset_path:
            last = nxt is None
        else:  # no signal declared: a short page is the last one
            last = p.limit is not None and n < p.limit
        if last:
            return None
        if next_offset <= self.offset:
            raise ProviderError(f"{self.display} returned a paging offset that does not advance; stopping.")
        self.offset = next_offset
        return Request(request.url, {**(request.params or {}), p.offset_param or "offset": str(next_offset)})


class _PageNumber:
    def __init__(self, paging: Paging, display: str) -> None:
        self.p, self.page = paging, paging.page_start

    def first(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, self.p.page_param or "page": str(self.page)}

    def next(self, request: Request, response: httpx.Response, body: Any, records: list[Any]) -> Request | None:
        p, n = self.p, len(records)
        has_more = get_path(body, p.has_more_path) if p.has_more_path else None
        page_count = num(get_path(body, p.page_count_path)) if p.page_count_path else None
        total = num(get_path(body, p.total_path)) if p.total_path else None
        pages_done = self.page - p.page_start + 1
        if n == 0:
            last = True
        elif isinstance(has_more, bool):
            last = not has_more
        elif page_count is not None:
            last = pages_done >= page_count
        elif total is not None and p.limit:
            last = pages_done * p.limit >= total
        else:
            last = p.limit is not None and n < p.limit
        if last:
            return None
        self.page += 1
        return Request(request.url, {**(request.params or {}), p.page_param or "page": str(self.page)})


class _FollowUrl:
    """``link_header`` (RFC 8288 ``rel="next"``) and ``next_url`` (a URL in the body)."""

    def __init__(self, paging: Paging, display: str) -> None:
        self.p, self.display = paging, display
        self.from_headers = paging.kind == "link_header"

    def next(self, request: Request, response: httpx.Response, body: Any, records: list[Any]) -> Request | None:
        if self.from_headers:
            nxt = response.links.get("next", {}).get("url")
        else:
            assert self.p.next_url_path is not None
            nxt = get_path(body, self.p.next_url_path)
        if not nxt or not isinstance(nxt, str):
            return None
        next_url = response.request.url.join(nxt)  # relative links are allowed
        if next_url == response.request.url:
            raise ProviderError(f"{self.display} returned the same next-page link twice; stopping to avoid a loop.")
        return Request(next_url, None, followed=True)  # the next URL carries its own query


_PAGERS: dict[str, Callable[[Paging, str], Any]] = {
    "none": lambda p, d: _Single(),
    "cursor": _Cursor,
    "offset": _Offset,
    "page_number": _PageNumber,
    "link_header": _FollowUrl,
    "next_url": _FollowUrl,
}


def make_pager(paging: Paging, display: str) -> Any:
    return _PAGERS[paging.kind](paging, display)


Fetch = Callable[[str | httpx.URL, dict[str, str] | None, bool], Awaitable[httpx.Response]]


async def pages(
    paging: Paging,
    url: str,
    params: dict[str, str],
    *,
    fetch: Fetch,
    body_of: Callable[[httpx.Response], Any],
    records_of: Callable[[Any], list[Any]],
    display: str,
) -> AsyncGenerator[tuple[list[Any], bool]]:
    """Yield ``(raw records, is_last)`` per provider page. ``fetch(url, params, followed)`` makes
    one GET (checking a followed URL's origin) and answers the response; ``body_of(response)``
    decodes it (raising the read path's errors)."""
    pager = make_pager(paging, display)
    query = dict(params)
    if paging.limit_param and paging.limit:
        query[paging.limit_param] = str(paging.limit)
    if hasattr(pager, "first"):
        query = pager.first(query)
    early = getattr(pager, "from_headers", False)
    request: Request | None = Request(url, query)
    ahead: asyncio.Task[httpx.Response] | None = None  # the next page's fetch, already sent
    try:
        while request is not None:
            if ahead is not None:
                response, ahead = await ahead, None
            else:
                response = await fetch(request.url, request.params, request.followed)
            known = early and response.is_success  # else the body says what went wrong
            following = pager.next(request, response, None, []) if known else None
            if following is not None:
                ahead = asyncio.ensure_future(fetch(following.url, following.params, following.followed))
                await asyncio.sleep(0)  # let it send its request before this page is decoded
            body = body_of(response)
            records = records_of(body)
            request = following if known else pager.next(request, response, body, records)
            yield records, request is None
    finally:
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead
