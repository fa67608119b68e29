"""Sandbox Chat: an API-key chat app (Slack-like) with channels and messages.

``Authorization: Bearer sandbox-chat-key``. Channels are fixed; messages are
paged with an ``after`` cursor like CRM contacts, and ``POST /messages``
``{channel, text}`` posts one (the channel by id, name or ``#name``).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .data import BASE_TS, MINUTE, Record, Table, iso
from .writes import Wrap, WriteError, invalid, json_body, only, text

if TYPE_CHECKING:
    from .app import Sandbox

CHAT_KEY = "sandbox-chat-key"
MESSAGE_COUNT = 60
MAX_TEXT = 4000
CHANNELS: tuple[tuple[str, str, str], ...] = (
    ("ch_general", "general", "Company-wide announcements"),
    ("ch_qa", "qa", "Data quality alerts"),
    ("ch_sales", "sales", "Deals and leads"),
    ("ch_support", "support", "Customer questions"),
    ("ch_random", "random", "Everything else"),
)
CHAT_ME = {"workspace": "Sandbox Chat", "user": "bff-bot"}
_LINES = (
    "Morning all",
    "The nightly export finished",
    "Who owns the Copperleaf renewal?",
    "Invoice run is done",
    "Lunch at 12:30?",
    "New lead from the webinar",
    "Dashboard numbers look off today",
    "Deployed the fix",
)


def messages_table() -> Table:
    rows = []
    for i in range(1, MESSAGE_COUNT + 1):
        channel = CHANNELS[(i * 3) % len(CHANNELS)][0]
        ts = BASE_TS + i * MINUTE
        rows.append(
            (
                {
                    "id": f"m_{i:04d}",
                    "channel": channel,
                    "user": "U_SANDBOX",
                    "text": _LINES[i % len(_LINES)],
                    "created_at": iso(ts),
                    "updated_at": iso(ts),
                },
                ts,
            )
        )
    return Table(rows)


class SandboxChat:
    """The chat provider's routes (one instance per sandbox)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.messages = sandbox.data.kept("chat.messages", messages_table())

    def routes(self, api: Wrap) -> list[BaseRoute]:
        def guarded(key: str, handler: Any) -> Any:
            async def run(request: Request) -> tuple[Response, int]:
                try:
                    self._require(request)
                    result: tuple[Response, int] = await handler(request)
                    return result
                except WriteError as exc:
                    return exc.response(), 0

            return api(key, run)

        return [
            Route("/chat/api/me", guarded("chat.me", self.me), methods=["GET"]),
            Route("/chat/api/channels", guarded("chat.channels", self.channels), methods=["GET"]),
            Route("/chat/api/messages", guarded("chat.messages", self.list_messages), methods=["GET"]),
            Route("/chat/api/messages", guarded("chat.messages.write", self.post_message), methods=["POST"]),
            Route("/chat/api/messages/{id}", guarded("chat.messages", self.get_message), methods=["GET"]),
        ]

    def _require(self, request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(key.encode(), CHAT_KEY.encode())
        if not valid or "chat" in self.sandbox.revoked:
            raise WriteError(401, "invalid_auth", "The API key is missing or not valid.")

    async def me(self, request: Request) -> tuple[Response, int]:
        return JSONResponse(CHAT_ME), 0

    async def channels(self, request: Request) -> tuple[Response, int]:
        rows = [{"id": cid, "name": name, "topic": topic, "created_at": iso(BASE_TS)} for cid, name, topic in CHANNELS]
        return JSONResponse({"channels": rows}), len(rows)

    async def list_messages(self, request: Request) -> tuple[Response, int]:
        from .app import _decode_cursor, _encode_cursor, _page_size, _updated_after

        table = self.messages
        limit = _page_size(request, "limit")
        start = table.index_after_time(_updated_after(request))
        cursor = request.query_params.get("after")
        if cursor:
            start = max(start, table.index_after_key(_decode_cursor(cursor)))
        channel = request.query_params.get("channel")
        records: list[Record] = table.records[start:]
        if channel:
            wanted = self._channel_id(channel)
            records = [r for r in records if r["channel"] == wanted]
        page = records[:limit]
        body: dict[str, Any] = {"messages": page}
        if len(records) > limit:
            last = page[-1]
            body["paging"] = {"next": {"after": _encode_cursor(table.keys[table.records.index(last)])}}
        return JSONResponse(body), len(page)

    async def get_message(self, request: Request) -> tuple[Response, int]:
        record = self.messages.find(request.path_params["id"])
        if record is None:
            raise WriteError(404, "message_not_found", f"There is no message {request.path_params['id']}.")
        return JSONResponse(record), 1

    async def post_message(self, request: Request) -> tuple[Response, int]:
        body = await json_body(request)
        only(body, ("channel", "text"), "message")
        channel = self._channel_id(text(body, "channel", required=True) or "")
        message = text(body, "text", required=True, max_length=MAX_TEXT)
        ts = max(self.messages.last_stamp() + 1, int(self.sandbox.clock()))
        record = {
            "id": f"m_{self.sandbox.data.next_id('chat.messages', MESSAGE_COUNT):04d}",
            "channel": channel,
            "user": "U_SANDBOX",
            "text": message,
            "created_at": iso(ts),
        }
        self.messages.append(record, ts)
        return JSONResponse(record, status_code=201), 1

    @staticmethod
    def _channel_id(raw: str) -> str:
        name = raw.removeprefix("#").lower()
        for cid, cname, _ in CHANNELS:
            if name in (cid, cname):
                return cid
        raise invalid("channel", f"there is no channel {raw!r} (channels: {', '.join(c[1] for c in CHANNELS)})")
