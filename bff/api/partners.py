"""Partner endpoints (partner token): sub-accounts and the tokens minted for them."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from ..auth import require_partner, require_partner_with_sub_account, services
from ..errors import BFFError, not_found, validation_error
from ..http import Pagination, api_route, parse_id, query_bool, read_json, require_str
from ..shapes import sub_account_dict
from ..store import Partner, SubAccount
from ..tokens import MintedToken

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Control (Cc), format (Cf: bidi overrides, zero-width joiners and spaces, BOM), surrogate (Cs),
# private-use (Co), unassigned (Cn) and line/paragraph separators (Zl, Zp): invisible or
# reorderable text that would let two customers look alike in a partner's dashboard.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties; unicodedata does not expose it): what
# renders as nothing, such as U+034F, the variation selectors (U+FE00.., U+E0100..) and the Hangul
# fillers (U+115F, U+1160, U+3164, U+FFA0); plus U+2800, the braille blank, which shows as a space.
_INVISIBLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
EXTERNAL_ID_MAX_LENGTH = 255


_INVISIBLE_CHAR = re.compile("[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in _INVISIBLE) + "]")


def _refused_char(char: str) -> bool:
    category = unicodedata.category(char)
    return (
        category in _REFUSED_CATEGORIES
        or (category == "Zs" and char != " ")  # spaces that look like " " but are not
        or _INVISIBLE_CHAR.match(char) is not None
    )


def normalise_external_id(raw: str) -> str:
    """NFC-normalised and stripped; raises ValueError naming the problem for characters that are
    invisible, control, look like a space, or a combining mark with nothing to combine with."""
    value = unicodedata.normalize("NFC", raw).strip()
    if not value or len(value) > EXTERNAL_ID_MAX_LENGTH:
        raise ValueError(f"Must be 1 to {EXTERNAL_ID_MAX_LENGTH} characters.")
    if value.isascii() and value.isprintable():
        return value  # the common case: nothing invisible, no control character, no mark (on the mint path)
    for char in value:
        if _refused_char(char):
            raise ValueError(
                f"Must not contain control, invisible, space-like or text-direction characters (found U+{ord(char):04X})."
            )
    if unicodedata.category(value[0]).startswith("M"):
        raise ValueError(f"Must not start with a combining mark (found U+{ord(value[0]):04X}).")
    return value


def parse_sub_account_fields(data: dict[str, Any], *, external_id_required: bool = True) -> tuple[str, dict[str, str]]:
    """Validate the create fields; every problem is reported per field at once."""
    errors: dict[str, str] = {}
    raw_external_id = data.get("external_id")
    external_id = ""
    if raw_external_id is None or raw_external_id == "":
        if external_id_required:
            errors["external_id"] = "This field is required: your own unique id for this customer."
    elif isinstance(raw_external_id, bool) or not isinstance(raw_external_id, (str, int)):
        errors["external_id"] = "Must be a string (or an integer)."
    else:
        try:
            external_id = normalise_external_id(str(raw_external_id))
        except ValueError as exc:
            errors["external_id"] = str(exc)
    fields: dict[str, str] = {}
    for name in ("first_name", "last_name", "company_name"):
        value = require_str(data, name, errors)
        if value is not None:
            fields[name] = value
    email = require_str(data, "email", errors, max_length=254)
    if email is not None:
        if _EMAIL.match(email):
            fields["email"] = email
        else:
            errors["email"] = "Must be an email address."
    language = require_str(data, "language", errors, max_length=10)
    if language is not None:
        if _LANGUAGE.match(language):
            fields["language"] = language
        else:
            errors["language"] = "Must be a language code such as `en` or `nl`."
    if errors:
        raise validation_error(errors)
    return external_id, fields


async def lookup_sub_account(request: Request, partner: Partner) -> SubAccount:
    """``?account_id=`` or ``?external_id=``; another partner's ids are simply not found."""
    params = request.query_params
    account_id, external_id = params.get("account_id"), params.get("external_id")
    if not account_id and not external_id:
        raise validation_error(
            {"account_id": "Pass `account_id` or `external_id`."},
            detail="Say which sub-account: account_id or external_id.",
        )
    partners = services(request).partners
    if account_id:
        account = await partners.find_sub_account(partner, account_id=parse_id(account_id, "account_id"))
    else:
        try:
            external_id = normalise_external_id(external_id or "")
        except ValueError as exc:
            raise validation_error({"external_id": str(exc)}) from None
        account = await partners.find_sub_account(partner, external_id=external_id)
    if account is None:
        raise not_found("No such sub-account.")
    return account


def token_response(minted: MintedToken, account: SubAccount) -> JSONResponse:
    """Integrate and identity tokens share one answer shape; never cached."""
    return JSONResponse(
        {
            "token": minted.token,
            "expires_in": minted.expires_in,
            "expires_at": minted.expires_at,
            "account_id": account.id,
            "external_id": account.external_id,
        },
        headers={"Cache-Control": "no-store"},
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
    external_id, fields = parse_sub_account_fields(await read_json(request))
    account = await services(request).partners.create_sub_account(partner, external_id, fields)
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
            external_id, fields = parse_sub_account_fields(data)
    except BFFError:
        await require_partner(request)  # a bad token is told so before anything about the body
        raise
    if by_query:
        partner = await require_partner(request)
        return integrate_response(request, partner, await lookup_sub_account(request, partner))
    # The hot path (a partner's back-end minting for a customer): partner and sub-account in one query.
    partner, account = await require_partner_with_sub_account(request, external_id)
    if account is None:
        account = await services(request).partners.provision(partner, external_id, fields)
    return integrate_response(request, partner, account)


async def integrate_existing(request: Request) -> JSONResponse:
    """Mint an integrate token for an existing sub-account (``?account_id=`` or ``?external_id=``)."""
    partner = await require_partner(request)
    return integrate_response(request, partner, await lookup_sub_account(request, partner))


async def identity_token(request: Request) -> JSONResponse:
    """Mint an identity token (expiring by default, ``expire=false`` until revoked)."""
    partner = await require_partner(request)
    expire = query_bool(request, "expire", default=True)
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
    data = await read_json(request, required=False)
    unknown = [key for key in data if key != "keep_customer_tokens"]
    keep = data.get("keep_customer_tokens", False)
    if unknown or not isinstance(keep, bool):
        raise validation_error(
            {key: "Unknown field; send keep_customer_tokens or nothing." for key in unknown}
            | ({} if isinstance(keep, bool) else {"keep_customer_tokens": "Must be true or false."})
        )
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
    from ..settings import SettingsError, normalise_origin

    partner = await require_partner(request)
    data = await read_json(request)
    raw = data.get("origins")
    if not isinstance(raw, list) or len(raw) > 50 or not all(isinstance(o, str) and len(o) <= 300 for o in raw):
        raise validation_error({"origins": "Send a list of at most 50 origins, like https://app.example.com."})
    try:
        origins = [normalise_origin(origin) for origin in raw]
    except SettingsError as exc:
        raise validation_error({"origins": str(exc)}) from None
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
