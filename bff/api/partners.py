"""Partner endpoints (partner token): sub-accounts and the tokens minted for them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from ..auth import require_partner, require_partner_with_sub_account, services
from ..contract.queries import IdentityQuery, WhichSubAccount
from ..contract.requests import PartnerOrigins, RotateToken, SubAccountFields
from ..errors import BFFError, not_found
from ..http import NoStoreJSONAnswer, api_route, parse_body, parse_query, read_json, validated
from ..shapes import sub_account_dict
from ..store import Partner, SubAccount
from ..tokens import MintedToken
from .paging import Pagination


async def lookup_sub_account(request: Request, partner: Partner) -> SubAccount:
    """``?account_id=`` or ``?external_id=``; another partner's ids are simply not found."""
    which = parse_query(request, WhichSubAccount)
    partners = services(request).partners
    if which.account_id is not None:
        account = await partners.find_sub_account(partner, account_id=which.account_id)
    else:
        account = await partners.find_sub_account(partner, external_id=which.external_id)
    if account is None:
        raise not_found("No such sub-account.")
    return account


def token_response(minted: MintedToken, account: SubAccount) -> JSONResponse:
    """Integrate and identity tokens share one answer shape; never cached."""
    return NoStoreJSONAnswer(
        {
            "token": minted.token,
            "expires_in": minted.expires_in,
            "expires_at": minted.expires_at,
            "account_id": account.id,
            "external_id": account.external_id,
        }
    )


def integrate_response(request: Request, partner: Partner, account: SubAccount) -> JSONResponse:
    minted = services(request).tokens.mint_integrate_token(
        partner_id=partner.id,
        sub_account_id=account.id,
        generation=account.token_generation,
        partner_generation=partner.token_generation,
    )
    return token_response(minted, account)


async def create_sub_account(request: Request) -> JSONResponse:
    """Create a sub-account for one of the partner's customers."""
    partner = await require_partner(request)
    fields = await parse_body(request, SubAccountFields)
    account = await services(request).partners.create_sub_account(partner, str(fields.external_id), fields.profile())
    return JSONResponse(sub_account_dict(account), status_code=201)


async def list_sub_accounts(request: Request) -> JSONResponse:
    """List the partner's sub-accounts, paged."""
    partner = await require_partner(request)
    page = Pagination(request)
    count, accounts = await services(request).partners.sub_accounts(partner, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, [sub_account_dict(a) for a in accounts]))


async def integrate_provision(request: Request) -> JSONResponse:
    """Mint an integrate token, provisioning the sub-account on first use."""
    try:
        data = await read_json(request, required=False)
        by_query = not data and bool(request.query_params.get("account_id") or request.query_params.get("external_id"))
        if not by_query:
            fields = validated(SubAccountFields, data)
    except BFFError:
        await require_partner(request)  # a bad token is told so before anything about the body
        raise
    if by_query:
        partner = await require_partner(request)
        return integrate_response(request, partner, await lookup_sub_account(request, partner))
    # The hot path (a partner's back-end minting for a customer): partner and sub-account in one query.
    partner, account = await require_partner_with_sub_account(request, str(fields.external_id))
    if account is None:
        account = await services(request).partners.provision(partner, str(fields.external_id), fields.profile())
    return integrate_response(request, partner, account)


async def integrate_existing(request: Request) -> JSONResponse:
    """Mint an integrate token for an existing sub-account (``?account_id=`` or ``?external_id=``)."""
    partner = await require_partner(request)
    return integrate_response(request, partner, await lookup_sub_account(request, partner))


async def identity_token(request: Request) -> JSONResponse:
    """Mint an identity token (expiring by default, ``expire=false`` until revoked)."""
    partner = await require_partner(request)
    expire = parse_query(request, IdentityQuery).expire is not False
    account = await lookup_sub_account(request, partner)
    minted = services(request).tokens.mint_identity_token(
        partner_id=partner.id,
        sub_account_id=account.id,
        generation=account.token_generation,
        partner_generation=partner.token_generation,
        expire=expire,
    )
    return token_response(minted, account)


async def revoke_tokens(request: Request) -> JSONResponse:
    """Revoke every identity and integrate token of a sub-account."""
    partner = await require_partner(request)
    raw_id = request.path_params["account_id"]
    account = await services(request).partners.revoke_sub_account_tokens(partner, raw_id)
    if account is None:
        raise not_found("No such sub-account.")
    return JSONResponse({"account_id": account.id, "external_id": account.external_id, "revoked": True})


# -- the partner itself: its token's lifecycle and its origins ------------------------------------


def partner_dict(partner: Partner) -> dict[str, Any]:
    return {"id": partner.id, "name": partner.name, "origins": list(partner.origins)}


async def get_partner(request: Request) -> JSONResponse:
    """The calling partner: id, name and the browser origins allowed to embed the widget."""
    partner = await require_partner(request)
    return JSONResponse(partner_dict(await services(request).partners.with_origins(partner)))


async def rotate_partner_token(request: Request) -> JSONResponse:
    """A new partner token; the one used for this call (and every older one) stops working at once,
    and so does every integrate and identity token minted with them, unless the body says
    ``{"keep_customer_tokens": true}``."""
    partner = await require_partner(request)
    keep = (await parse_body(request, RotateToken, required=False)).keep_customer_tokens
    rotated, token = await services(request).partners.rotate_token(partner, keep_customer_tokens=keep)
    return JSONResponse({**partner_dict(rotated), "token": token}, headers={"Cache-Control": "no-store"})


async def revoke_partner_tokens(request: Request) -> JSONResponse:
    """Stop every token of this partner (this one too) and every token minted with them;
    `bff partner rotate-token` mints a new one."""
    partner = await require_partner(request)
    revoked = await services(request).partners.revoke_tokens(partner)
    return JSONResponse({**partner_dict(revoked), "revoked": True})


async def set_partner_origins(request: Request) -> JSONResponse:
    """Replace the browser origins allowed to embed the widget (and to get CORS answers)."""
    partner = await require_partner(request)
    origins = (await parse_body(request, PartnerOrigins)).origins
    updated = await services(request).partners.set_origins(partner, origins)
    return JSONResponse(partner_dict(updated))


def routes() -> list[BaseRoute]:
    return [
        # Minting first: the router tries routes in order, and these are called the most.
        *api_route("/api/partner/sub-account/integrate/", integrate_provision, methods=["POST"]),
        *api_route("/api/sub-account/integrate/", integrate_existing, methods=["POST"]),
        *api_route("/api/partner", get_partner, methods=["GET"]),
        *api_route("/api/partner/rotate-token", rotate_partner_token, methods=["POST"]),
        *api_route("/api/partner/revoke", revoke_partner_tokens, methods=["POST"]),
        *api_route("/api/partner/origins", set_partner_origins, methods=["PUT"]),
        *api_route("/api/partner/sub-account/", create_sub_account, methods=["POST"]),
        *api_route("/api/sub-account/", create_sub_account, methods=["POST"], name="create_sub_account_alias"),
        *api_route("/api/partner/sub-accounts", list_sub_accounts, methods=["GET"]),
        *api_route("/api/sub-accounts", list_sub_accounts, methods=["GET"], name="list_sub_accounts_alias"),
        *api_route("/api/partner/sub-account/identity/", identity_token, methods=["GET"]),
        *api_route("/api/sub-account/identity/", identity_token, methods=["GET"], name="identity_token_alias"),
        *api_route("/api/partner/sub-account/{account_id:int}/revoke-tokens", revoke_tokens, methods=["POST"]),
        *api_route(
            "/api/sub-account/{account_id:int}/revoke-tokens",
            revoke_tokens,
            methods=["POST"],
            name="revoke_tokens_alias",
        ),
    ]
