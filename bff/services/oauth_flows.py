"""OAuth2 sign-ins (DESIGN §6): tickets, states with PKCE, the code exchange, the connection's health.

A sign-in has three steps, each one-time and bound to the one before it:

1. :meth:`OAuthFlows.start` — a one-time *ticket* (the nonce) for whoever asked (the connect
   iframe, a partner page), stored (hashed) like a state with the ``start:`` purpose prefix; never
   the provider's URL. Unless the caller asked for the strict hand-over, also a *link* ticket
   (``link:``) in the start page's URL, so that the URL works opened on its own (seed 002: the
   partner opens ``oauth_url`` in a new tab): that page names the partner, the customer and the
   connector, and goes on only when the person presses Continue.
2. :meth:`OAuthFlows.swap_ticket` / :meth:`OAuthFlows.swap_link` — the start page swaps a ticket
   (once; the sign-in's other ticket is used up with it) for a fresh *state* with a PKCE challenge
   and the provider's authorize URL; the route binds that browser with a cookie signed over the
   state's hash (RFC 9700 §4.7).
3. :meth:`OAuthFlows.complete` — the callback (after the route checked the cookie) uses the state
   up, exchanges the code and moves the connection (``bff.lifecycle``).

Only hashes of tickets and states are stored: a database leak yields no usable one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import connections as rt
from .. import lifecycle
from ..connectors import ConnectorError, OAuthError, build_authorize_url, exchange_code, new_pkce_pair
from ..connectors.definitions import Connector
from ..crypto import connection_aad
from ..errors import ApiError
from ..lifecycle import Event
from ..store import Connection, OAuthFlow, SubAccount
from ..store.oauth_flows import OAuthFlowStore

if TYPE_CHECKING:
    from . import Services

OAUTH_FLOW_MAX_AGE = 15 * 60
OAUTH_START_PATH = "/oauth/start"
# A ticket (the one-time nonce the starter holds) is stored like a state, with this purpose prefix:
# it can be swapped for a browser binding and a provider URL once, and never completes a flow itself.
TICKET_PREFIX = "start:"
# The link ticket in ``oauth_url`` (not strict): swapped once, by a person pressing Continue.
LINK_PREFIX = "link:"
LINK_MAX_AGE = 10 * 60
LINK_PARAM = "link"


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    """What the start page of a link tells the person before they continue."""

    partner: str
    customer: str
    connector: str
    reauthorise: bool


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def choice_missing(connector: Connector, connection: Connection) -> bool:
    """The connector has a CONFIG_SELECT step and this connection has no saved choice yet."""
    select = connector.config_select
    return select is not None and not connection.config.get(select.field)


@dataclasses.dataclass(frozen=True)
class SignInResult:
    """What the callback page shows and reports to the window that opened it."""

    ok: bool
    connection_id: int | None
    message: str
    status: int = 200


class OAuthFlows:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.flows = OAuthFlowStore(services.store)

    def _not_configured(self, connector: Connector) -> ApiError:
        return ApiError(400, "oauth_app_not_configured", f"{connector.display_name} has no OAuth app configured.")

    async def start(
        self, account: SubAccount, connection: Connection, connector: Connector, *, purpose: str, strict: bool = False
    ) -> tuple[str, str]:
        """The start page's URL and a one-time ticket (the nonce) for the caller, never the provider's URL.

        Not ``strict``: the URL carries a link ticket and works opened on its own, after the person
        pressed Continue on a page that names the partner, the customer and the connector. ``strict``:
        the URL is the bare start page, which goes on only with the nonce handed over by its opener.
        """
        svc = self.services
        if rt.oauth_client(svc, connector) is None:
            raise self._not_configured(connector)
        ticket = await self._ticket(account, connection, TICKET_PREFIX + purpose)
        url = svc.settings.public_url + OAUTH_START_PATH
        if not strict:
            url += f"?{LINK_PARAM}={await self._ticket(account, connection, LINK_PREFIX + purpose)}"
        return url, ticket

    async def _ticket(self, account: SubAccount, connection: Connection, purpose: str) -> str:
        ticket = secrets.token_urlsafe(32)
        await self.flows.create(
            state_hash(ticket), connection_id=connection.id, sub_account_id=account.id, purpose=purpose, verifier=None
        )
        return ticket

    def _spent(self) -> ApiError:
        return ApiError(
            400, "oauth_start_invalid", "This sign-in has expired or was already started. Start again from the app."
        )

    async def describe_link(self, link: str) -> LinkInfo | None:
        """Who asks, for whom and for what, while the link is unused and young; None otherwise."""
        svc = self.services
        flow = await self.flows.peek(state_hash(link), max_age=LINK_MAX_AGE)
        if flow is None or not flow.purpose.startswith(LINK_PREFIX):
            return None
        account = await svc.store.sub_accounts.get_by_id(flow.sub_account_id)
        connection = await svc.store.connections.get(flow.sub_account_id, flow.connection_id)
        partner = await svc.store.partners.get(account.partner_id) if account is not None else None
        if account is None or connection is None or partner is None:
            return None
        connector = svc.connectors[connection.connector]
        customer = (
            account.company_name
            or " ".join(n for n in (account.first_name, account.last_name) if n)
            or account.external_id
        )
        return LinkInfo(
            partner=partner.name,
            customer=customer,
            connector=connector.display_name,
            reauthorise=flow.purpose == LINK_PREFIX + "reauthorise",
        )

    async def swap_link(self, link: str) -> tuple[str, str]:
        """:meth:`swap_ticket` for the link ticket of ``oauth_url``, after the person pressed Continue."""
        flow = await self.flows.consume(state_hash(link), max_age=LINK_MAX_AGE)
        if flow is None or not flow.purpose.startswith(LINK_PREFIX):
            raise self._spent()
        return await self._begin(flow, flow.purpose.removeprefix(LINK_PREFIX))

    async def swap_ticket(self, ticket: str, *, opener: str, own_origin: str) -> tuple[str, str]:
        """(the provider's authorize URL, the new state's hash) for a ticket used now, once.
        ``opener`` is the origin the start page got the ticket from: ours, or one the ticket's
        partner registered."""
        svc = self.services
        flow = await self.flows.consume(state_hash(ticket), max_age=OAUTH_FLOW_MAX_AGE)
        if flow is None or not flow.purpose.startswith(TICKET_PREFIX):
            raise self._spent()
        account = await svc.store.sub_accounts.get_by_id(flow.sub_account_id)
        if (
            account is not None
            and opener != own_origin
            and not await svc.store.partners.has_origin(account.partner_id, opener)
        ):
            raise ApiError(
                403,
                "origin_not_allowed",
                "The sign-in was handed over by a page that is not registered for this partner.",
            )
        return await self._begin(flow, flow.purpose.removeprefix(TICKET_PREFIX))

    async def _begin(self, flow: OAuthFlow, purpose: str) -> tuple[str, str]:
        """A used ticket's sign-in begins: its other ticket is used up, a state made, the provider's URL built."""
        svc = self.services
        await self.flows.retire_tickets(flow.connection_id, (TICKET_PREFIX, LINK_PREFIX))
        account = await svc.store.sub_accounts.get_by_id(flow.sub_account_id)
        connection = await svc.store.connections.get(flow.sub_account_id, flow.connection_id)
        if account is None or connection is None:
            raise ApiError(400, "oauth_start_invalid", "This connection no longer exists. Start again from the app.")
        connector = svc.connectors[connection.connector]
        client = rt.oauth_client(svc, connector)
        if client is None:
            raise self._not_configured(connector)
        state = secrets.token_urlsafe(32)
        verifier, challenge = new_pkce_pair() if connector.oauth and connector.oauth.pkce else (None, None)
        sealed = svc.vault.encrypt(verifier.encode(), connection_aad(connection.id, "pkce")) if verifier else None
        await self.flows.create(
            state_hash(state), connection_id=connection.id, sub_account_id=account.id, purpose=purpose, verifier=sealed
        )
        url = build_authorize_url(
            connector, client=client, state=state, code_challenge=challenge, context=self._context(connection)
        )
        return url, state_hash(state)

    def _context(self, connection: Connection) -> dict[str, Any]:
        """What the connector's OAuth URLs may name: the deployment, the connection's choices and its form."""
        form = rt.open_secrets(self.services, connection).credentials
        return {**rt.context(self.services), "config": connection.config, "credentials": form}

    async def complete(self, state: str, params: Mapping[str, str]) -> SignInResult:
        """Use the state up (the route has checked this browser's binding) and finish the sign-in."""
        flow = await self.flows.consume(state_hash(state), max_age=OAUTH_FLOW_MAX_AGE)
        if flow is None or flow.purpose.startswith((TICKET_PREFIX, LINK_PREFIX)):
            return SignInResult(
                False,
                None,
                "This sign-in link has expired or was already used. Close this window and start again.",
                400,
            )
        return await self._finish(flow, params)

    async def _finish(self, flow: OAuthFlow, params: Mapping[str, str]) -> SignInResult:
        """The flow is this browser's and now used: exchange the code, store the tokens."""
        svc = self.services
        connection = await svc.store.connections.get(flow.sub_account_id, flow.connection_id)
        if connection is None:
            return SignInResult(False, None, "This connection no longer exists.", 400)
        connector = svc.connectors[connection.connector]
        if params.get("error"):
            reason = params.get("error_description") or params.get("error") or "unknown error"
            detail = (
                "Access was denied at the provider."
                if params.get("error") == "access_denied"
                else f"The provider reported an error: {reason[:200]}"
            )
            await lifecycle.transition(
                svc.store,
                svc.events,
                connection.id,
                Event.SIGN_IN_FAILED,
                detail=detail,
                logs=[("warning", f"Authorisation failed: {detail}")],
            )
            return SignInResult(False, connection.id, detail)
        code = params.get("code")
        if not code:
            return SignInResult(False, connection.id, "The provider sent no authorisation code.", 400)
        client = rt.oauth_client(svc, connector)
        assert client is not None
        verifier = (
            svc.vault.decrypt(flow.verifier, connection_aad(connection.id, "pkce")).decode() if flow.verifier else None
        )
        try:
            tokens = await exchange_code(
                connector,
                http=svc.http,
                client=client,
                code=code,
                code_verifier=verifier,
                context=self._context(connection),
                clock=svc.clock,
            )
        except (OAuthError, ConnectorError) as exc:
            detail = f"Could not complete authorisation: {exc.detail}"
            await lifecycle.transition(
                svc.store, svc.events, connection.id, Event.SIGN_IN_FAILED, detail=detail, logs=[("error", detail)]
            )
            return SignInResult(False, connection.id, detail)
        await lifecycle.transition(
            svc.store,
            svc.events,
            connection.id,
            Event.REAUTHORISED if flow.purpose == "reauthorise" else Event.CONNECTED,
            choice_missing=choice_missing(connector, connection),
            secrets=rt.seal_secrets(
                svc, connection.id, rt.Secrets(rt.open_secrets(svc, connection).credentials, tokens=tokens)
            ),
            logs=[("info", f"Authorised with {connector.display_name}.")],
        )
        return SignInResult(True, connection.id, f"{connector.display_name} is connected. You can close this window.")
