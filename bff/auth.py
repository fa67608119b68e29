"""Turn an ``Authorization`` header into a verified partner or sub-account."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request

from .errors import not_found, token_not_allowed
from .http import header
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
    connection: Connection | None = None  # only when asked for (``connection_id``) and the sub-account's own


def services(request: Request) -> Services:
    """The process's services, from the app serving ``request`` (:class:`bff.app.ApiApp`): the one
    way to them from a request."""
    return request.app.services  # type: ignore[no-any-return]


async def authenticate(
    request: Request,
    accept: tuple[TokenKind, ...],
    *,
    connection_id: int | None = None,
    meanwhile: Callable[[Claims], Awaitable[None]] | None = None,
) -> Caller:
    """The verified caller; with ``connection_id``, that connection of the caller's sub-account too
    (looked up in the same round trip as the partner and sub-account).

    ``meanwhile`` (e.g. counting a rate limit) runs while the caller is looked up, only for a
    token whose signature verified; its error comes after the caller's own (revoked, deleted).
    """
    svc = services(request)
    claims = svc.tokens.verify(parse_authorization(request.headers.get("authorization")), accept=accept)
    lookup = svc.store.partners.caller(
        claims.partner_id, claims.sub_account_id, connection_id if claims.kind != "partner" else None
    )
    side: BaseException | None = None
    if meanwhile is None:
        partner, account, connection = await lookup
    else:
        found, done = await asyncio.gather(lookup, meanwhile(claims), return_exceptions=True)
        if isinstance(found, BaseException):
            raise found
        partner, account, connection = found
        side = done if isinstance(done, BaseException) else None
    if claims.kind == "partner":
        caller = Caller(claims, partner=_check_partner(claims, partner))
    elif partner is None:
        raise token_error(401, "token_invalid", "The partner this token belongs to no longer exists.")
    else:
        assert claims.sub_account_id is not None
        if account is None:
            raise token_error(401, "token_invalid", "The sub-account this token belongs to no longer exists.")
        if claims.generation != account.token_generation:
            raise token_error(401, "token_revoked", "This token has been revoked; mint a new one.")
        if claims.partner_generation < partner.customer_token_floor:
            raise token_error(
                401,
                "token_revoked",
                "The partner token this token was minted with has been rotated or revoked; mint a new one.",
            )
        if claims.script_run_id is not None and not await _script_run_live(svc, claims.script_run_id):
            raise token_error(401, "token_expired", "This script run has ended; its token no longer works.")
        caller = Caller(claims, partner=partner, sub_account=account, connection=connection)
    if side is not None:
        raise side
    return caller


async def _script_run_live(svc: Services, run_id: int) -> bool:
    return await svc.scripts.table.run_status(run_id) == "running"


async def require_back_end(request: Request, *, what: str) -> Caller:
    """An identity token (the partner's back-end, or a script's run); the browser's integrate
    token gets ``403 token_not_allowed``. ``what`` finishes "… take identity tokens"."""
    return identity_only(await authenticate(request, SUB_ACCOUNT_KINDS), what=what)


def identity_only(caller: Caller, *, what: str) -> Caller:
    """The one ``403 token_not_allowed`` for the browser's integrate token on a back-end surface."""
    if caller.claims.kind != "identity":
        raise token_not_allowed(f"{what} take identity tokens from your back-end, never the browser's integrate token.")
    return caller


def _check_partner(claims: Claims, partner: Partner | None) -> Partner:
    if partner is None:
        raise token_error(401, "token_invalid", "The partner this token belongs to no longer exists.")
    if claims.generation != partner.token_generation:
        raise token_error(
            401,
            "token_revoked",
            "This partner token has been revoked (the partner's tokens were rotated or revoked);"
            " use the partner's current token.",
        )
    return partner


async def require_partner_with_sub_account(request: Request, external_id: str) -> tuple[Partner, SubAccount | None]:
    """:func:`require_partner` and the partner's sub-account ``external_id`` (if it exists), in one query."""
    svc = services(request)
    claims = svc.tokens.verify(parse_authorization(header(request, b"authorization")), accept=("partner",))
    partner, account = await svc.store.partners.with_sub_account(claims.partner_id, external_id)
    return _check_partner(claims, partner), account


async def require_partner(request: Request) -> Partner:
    caller = await authenticate(request, ("partner",))
    assert caller.partner is not None
    return caller.partner


async def require_sub_account(request: Request) -> SubAccount:
    caller = await authenticate(request, SUB_ACCOUNT_KINDS)
    assert caller.sub_account is not None
    return caller.sub_account


async def require_identity(
    request: Request, *, meanwhile: Callable[[Claims], Awaitable[None]] | None = None
) -> SubAccount:
    """Back-end-only surfaces (the warehouse read API): an identity token, never the browser's
    integrate token (DESIGN §3), and at most so many reads per token (counted in the database).
    ``meanwhile`` as in :func:`authenticate` (its result may be used only once this returns)."""
    from .throttle import WAREHOUSE_READS, Throttle

    svc = services(request)

    async def count_read(claims: Claims) -> None:
        if claims.kind == "identity":  # an integrate token is refused below; it uses up nothing
            token = parse_authorization(request.headers.get("authorization"))
            key = hashlib.sha256(token.encode()).hexdigest()[:32]
            if meanwhile is None:
                await Throttle(svc.store, svc.clock).take(WAREHOUSE_READS, key)
            else:
                await _all(Throttle(svc.store, svc.clock).take(WAREHOUSE_READS, key), meanwhile(claims))

    caller = identity_only(await authenticate(request, SUB_ACCOUNT_KINDS, meanwhile=count_read), what="Warehouse reads")
    assert caller.sub_account is not None
    return caller.sub_account


async def _all(*steps: Awaitable[None]) -> None:
    """Run ``steps`` at once; the first one's error wins (the throttle's before the others)."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def require_connection(request: Request) -> tuple[SubAccount, Connection]:
    """The caller's sub-account and the connection ``{id}`` in the path, if it is theirs.

    Another sub-account's connection ids give exactly the same 404 as ids that
    do not exist: no hint that they do.
    """
    caller = await authenticate(request, SUB_ACCOUNT_KINDS, connection_id=path_connection_id(request))
    assert caller.sub_account is not None
    if caller.connection is None:
        raise not_found("No such connection.")
    return caller.sub_account, caller.connection


def path_connection_id(request: Request) -> int | None:
    """The connection id ``{id}`` in the path (None when it is not a number)."""
    raw = request.path_params.get("id")
    if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
        return int(raw)
    return None
