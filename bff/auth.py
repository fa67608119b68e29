"""Turn an ``Authorization`` header into a verified partner or sub-account."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

from starlette.requests import Request

from .errors import ApiError, not_found
from .store import Connection, Partner, SubAccount
from .tokens import Claims, TokenKind, parse_authorization, token_error

if TYPE_CHECKING:
    from .services import Services

SUB_ACCOUNT_KINDS: tuple[TokenKind, ...] = ("integrate", "identity")


@dataclasses.dataclass(frozen=True)
class Caller:
    claims: Claims
    partner: Partner | None = None
    sub_account: SubAccount | None = None


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def authenticate(request: Request, accept: tuple[TokenKind, ...]) -> Caller:
    svc = services(request)
    claims = svc.tokens.verify(parse_authorization(request.headers.get("authorization")), accept=accept)
    partner = await svc.store.get_partner(claims.partner_id)
    if partner is None:
        raise token_error(401, "token_invalid", "The partner this token belongs to no longer exists.")
    if claims.kind == "partner":
        if claims.generation != partner.token_generation:
            raise token_error(401, "token_revoked", "This partner token has been rotated; use the new one.")
        return Caller(claims, partner=partner)
    assert claims.sub_account_id is not None
    account = await svc.store.get_sub_account(partner.id, account_id=claims.sub_account_id)
    if account is None:
        raise token_error(401, "token_invalid", "The sub-account this token belongs to no longer exists.")
    if claims.generation != account.token_generation:
        raise token_error(401, "token_revoked", "This token has been revoked; mint a new one.")
    if claims.script_run_id is not None and not await _script_run_live(svc, claims.script_run_id):
        raise token_error(401, "token_expired", "This script run has ended; its token no longer works.")
    return Caller(claims, partner=partner, sub_account=account)


async def _script_run_live(svc: Services, run_id: int) -> bool:
    return await svc.scripts.table.run_status(run_id) == "running"


async def require_back_end(request: Request, *, what: str) -> Caller:
    """An identity token (the partner's back-end, or a script's run); the browser's integrate
    token gets ``403 token_not_allowed``. ``what`` finishes "… take identity tokens"."""
    caller = await authenticate(request, SUB_ACCOUNT_KINDS)
    if caller.claims.kind != "identity":
        raise ApiError(
            403,
            "token_not_allowed",
            f"{what} take identity tokens from your back-end, never the browser's integrate token.",
        )
    return caller


async def require_partner(request: Request) -> Partner:
    caller = await authenticate(request, ("partner",))
    assert caller.partner is not None
    return caller.partner


async def require_sub_account(request: Request) -> SubAccount:
    caller = await authenticate(request, SUB_ACCOUNT_KINDS)
    assert caller.sub_account is not None
    return caller.sub_account


async def require_identity(request: Request) -> SubAccount:
    """Back-end-only surfaces (the warehouse read API): an identity token, never the browser's
    integrate token (DESIGN §3), and at most so many reads per token (counted in the database)."""
    from .throttle import WAREHOUSE_READS, Throttle

    caller = await authenticate(request, SUB_ACCOUNT_KINDS)
    assert caller.sub_account is not None
    if caller.claims.kind != "identity":
        raise ApiError(
            403,
            "token_not_allowed",
            "The warehouse is read by your back-end with an identity token; the browser's integrate token cannot read it.",
        )
    token = parse_authorization(request.headers.get("authorization"))
    svc = services(request)
    await Throttle(svc.store, svc.clock).take(WAREHOUSE_READS, hashlib.sha256(token.encode()).hexdigest()[:32])
    return caller.sub_account


async def require_connection(request: Request) -> tuple[SubAccount, Connection]:
    """The caller's sub-account and the connection ``{id}`` in the path, if it is theirs.

    Another sub-account's connection ids give exactly the same 404 as ids that
    do not exist: no hint that they do.
    """
    account = await require_sub_account(request)
    raw = request.path_params.get("id")
    connection = None
    if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
        connection = await services(request).store.get_connection(account.id, int(raw))
    if connection is None:
        raise not_found("No such connection.")
    return account, connection
