"""The in-process sandbox, reached the way a provider on the network is: timeouts included."""

from __future__ import annotations

import asyncio

import httpx


async def answer_within_timeout(transport: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
    """``transport``'s answer to ``request``, or ``httpx.ReadTimeout`` once the request's read
    timeout has passed without one, as from a server on the network. ``httpx.ASGITransport``
    ignores timeouts: without this, ``BFF_SANDBOX_LATENCY_MS`` longer than a caller's timeout would
    be waited out instead of timing out. (The app answers in one piece, so the first byte and the
    whole answer arrive together.)"""
    timeouts = request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    if read is None:
        return await transport.handle_async_request(request)
    try:
        async with asyncio.timeout(read):
            return await transport.handle_async_request(request)
    except TimeoutError:
        raise httpx.ReadTimeout(f"No answer within the read timeout ({read:g} s).", request=request) from None
