"""One logical provider call through the retry policy, and small helpers shared by the engine."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from .errors import RetriesExhausted
from .retry import Cause, LongWait, RetryPolicy
from .templates import get_path

__all__ = ["USER_AGENT", "LogFn", "basic_auth", "num", "provider_message", "send", "short", "url_path"]

USER_AGENT = "bff-connectors/0.1 (+https://github.com/)"

LogFn = Callable[[str, str], None]


def basic_auth(user: str, password: str | None) -> str:
    raw = f"{user}:{password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def short(text: Any, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def provider_message(body: Any) -> str | None:
    """A short error message from common provider error shapes."""
    if not isinstance(body, dict):
        return None
    for key in ("message", "error_description", "error", "detail"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("message") or value.get("code")
        if isinstance(value, str) and value.strip():
            return short(value)
    err = get_path(body, ("error", "message", "value"))  # OData v2 (Exact Online)
    return short(err) if isinstance(err, str) else None


def url_path(url: str | httpx.URL) -> str:
    try:
        return httpx.URL(str(url)).path or "/"
    except Exception:  # noqa: BLE001 - only used for log lines
        return "?"


def num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str],
    data: Mapping[str, str] | None = None,
    content: bytes | None = None,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[Any]],
    clock: Callable[[], float],
    timeout: float,
    log: LogFn,
    label: str,
    display: str,
) -> httpx.Response:
    """One logical API call through the retry policy; returns any non-retryable answer."""
    retries: dict[Cause, int] = {}
    waited: dict[Cause, float] = {}
    while True:
        retry_after: str | None = None
        status: int | None = None
        try:
            response = await http.request(
                method, url, params=params, headers=headers, data=data, content=content, timeout=timeout
            )
        except httpx.TimeoutException:
            cause = Cause.TIMEOUT
        except httpx.RequestError:  # connect/read errors, RemoteProtocolError (chunked encoding), decoding, …
            cause = Cause.CONNECTION
        else:
            status = response.status_code
            if status == 429:
                cause = Cause.RATE_LIMITED
            elif status >= 500:
                cause = Cause.SERVER_ERROR
            else:
                return response
            retry_after = response.headers.get("Retry-After")
        n = retries.get(cause, 0)
        w = waited.get(cause, 0.0)
        decision = policy.decide(cause, n, w, retry_after, now=clock())
        if not decision.retry:
            log("error", f"{label}: {decision.reason} [{method} {url_path(url)}]")
            raise RetriesExhausted(
                decision.reason,
                detail=f"{display} kept failing: {decision.reason}.",
                status=status,
                cause=cause.value,
                retry_after=retry_after,
            )
        log("warning", f"{label}: {decision.reason} [{method} {url_path(url)}]")
        if policy.long_wait is not None and decision.delay > policy.long_wait:
            raise LongWait(decision.delay, decision.reason)  # the caller frees its worker instead of sleeping
        await sleep(decision.delay)
        retries[cause] = n + 1
        waited[cause] = w + decision.delay
