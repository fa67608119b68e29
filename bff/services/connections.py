"""Connections of a sub-account: add (credentials tested, or an OAuth sign-in started), the
CONFIG_SELECT step, re-authorisation, delete, and the public shape (no secrets, ever).

Every health change goes through :mod:`bff.lifecycle`; OAuth sign-ins through
:class:`bff.services.oauth_flows.OAuthFlows`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import connections as rt
from .. import lifecycle
from ..connectors import ConnectorError, CredentialsRejected
from ..connectors.definitions import Connector
from ..errors import ApiError, connector_error, validation_error
from ..lifecycle import Event, Health
from ..shapes import log_dict, run_dict
from ..store import UNSET, Connection, SubAccount, Unset, iso
from ..throttle import CONNECTIONS_CREATED, FAILED_CREDENTIALS, Throttle
from .oauth_flows import choice_missing

if TYPE_CHECKING:
    from . import Services

# Unfinished connections (waiting for a consent or a choice) one sub-account may hold at once.
MAX_PENDING_CONNECTIONS = 20


@dataclasses.dataclass(frozen=True)
class SignIn:
    """An OAuth sign-in to open: the start page's URL and the one-time ticket (nonce)."""

    url: str
    nonce: str


NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


def parse_credentials(connector: Connector, data: dict[str, Any]) -> dict[str, str]:
    """The connect-form fields, each checked; errors are reported per field."""
    errors: dict[str, str] = {}
    credentials: dict[str, str] = {}
    for field in connector.connect_form:
        value = data.get(field.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if field.required:
                errors[field.name] = f"{field.label} is required."
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors[field.name] = f"{field.label} must be text."
            continue
        text_value = str(value).strip() if not field.secret else str(value)
        if len(text_value) > 4096:
            errors[field.name] = f"{field.label} is too long."
            continue
        if field.type == "number" and not NUMBER.fullmatch(text_value):
            errors[field.name] = f"{field.label} must be a number."
            continue
        if field.options and text_value not in {option.value for option in field.options}:
            errors[field.name] = f"Choose one of the offered values for {field.label}."
            continue
        credentials[field.name] = text_value
    if errors:
        raise validation_error(errors, detail="Some connection details are missing or invalid.")
    return credentials


# Rows held are counted in the customer's database (a COUNT over each table): a list of
# connections reuses a count while the connection's last run is the same one and the count is
# younger than this, so a panel polling every few seconds does not scan every table each time.
# A finished run is a new marker (a fresh count at once); rows a customer writes with SQL show
# within this many seconds.
HELD_COUNT_SECONDS = 10.0
HELD_COUNT_CACHE_SIZE = 10_000


class Connections:
    def __init__(self, services: Services) -> None:
        self.services = services
        # (sub-account, connection) → (last run marker, when counted, rows held)
        self._held: dict[tuple[int, int], tuple[object, float, int]] = {}

    async def _rows_held(self, account: SubAccount, markers: dict[int, object]) -> dict[int, int]:
        now = time.monotonic()
        held: dict[int, int] = {}
        stale = []
        for connection_id, marker in markers.items():
            cached = self._held.get((account.id, connection_id))
            if cached is not None and cached[0] == marker and now - cached[1] < HELD_COUNT_SECONDS:
                held[connection_id] = cached[2]
            else:
                stale.append(connection_id)
        if stale:
            counted = await self.services.warehouse.live_counts(account.id, stale)
            if len(self._held) + len(stale) > HELD_COUNT_CACHE_SIZE:
                self._held.clear()
            for connection_id in stale:
                held[connection_id] = counted.get(connection_id, 0)
                self._held[account.id, connection_id] = (markers[connection_id], now, held[connection_id])
        return held

    @property
    def _throttle(self) -> Throttle:
        return Throttle(self.services.store, self.services.clock)

    # -- the public shape ------------------------------------------------------------------

    async def views(self, account: SubAccount, connections: Sequence[Connection]) -> list[dict[str, Any]]:
        """The public shape of connections (never credentials or provider tokens); the last run of
        every one of them comes in one query; the rows they hold in two more (their tables, then one count
        over all of them), unless counted since their last run (``HELD_COUNT_SECONDS``)."""
        ids = [c.id for c in connections]
        runs = await self.services.store.runs.last_of(ids)
        held = await self._rows_held(
            account, {i: (r.id, r.status, r.finished_at) if (r := runs.get(i)) else None for i in ids}
        )
        connectors = self.services.connectors
        views = []
        for connection in connections:
            connector = connectors.get(connection.connector)
            last_run = runs.get(connection.id)
            views.append(
                {
                    "id": connection.id,
                    "name": connection.name,
                    "servertype_id": connector.id if connector else None,
                    "connector": connection.connector,
                    "health_status": connection.health_status,
                    "detail": connection.detail,
                    "config": connection.config,
                    "created_at": iso(connection.created_at),
                    "last_run": run_dict(last_run) if last_run else None,
                    "live_count": held[connection.id],  # rows held (deleted ones not counted), see _rows_held
                    "sync_frequency": connection.sync_frequency,
                    "table_frequencies": connection.table_frequencies,
                    "tables": connection.selected_tables,
                    "next_sync_at": iso(connection.next_sync_at),
                    "account_id": account.id,
                    "external_id": account.external_id,
                }
            )
        return views

    async def view(self, account: SubAccount, connection: Connection) -> dict[str, Any]:
        return (await self.views(account, [connection]))[0]

    async def page(self, account: SubAccount, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """A page of the sub-account's connections in their public shape, and how many there are."""
        connections = await self.services.store.connections.list_for(account.id)
        return len(connections), await self.views(account, connections[offset : offset + limit])

    async def logs(self, connection: Connection, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """A page of the connection's log lines, newest first, and how many there are."""
        count, lines = await self.services.store.runs.list_logs(connection.id, offset=offset, limit=limit)
        return count, [log_dict(line) for line in lines]

    async def reload(self, account: SubAccount, connection: Connection) -> Connection:
        updated = await self.services.store.connections.get(account.id, connection.id)
        if updated is None:
            raise ApiError(404, "not_found", "No such connection.")
        return updated

    # -- adding -------------------------------------------------------------------------------

    async def create(
        self, account: SubAccount, connector: Connector, name: str, data: dict[str, Any], *, strict: bool = False
    ) -> tuple[Connection, SignIn | None]:
        """A new connection: OAuth2 ones start ``AUTHORIZING`` with a sign-in to open; the others
        only once the provider accepted the connect form's credentials in ``data``."""
        svc = self.services
        await self._refuse_too_many_pending(account)
        await self._throttle.take(CONNECTIONS_CREATED, str(account.id))
        if connector.auth_type == "oauth2":
            if rt.oauth_client(svc, connector) is None:
                raise ApiError(
                    400, "oauth_app_not_configured", f"{connector.display_name} has no OAuth app configured."
                )
            # The connect form's values (Exact Online's country and starting year) are kept with
            # the tokens to come: the sign-in's URLs and the reads may name them.
            form = parse_credentials(connector, data)
            connection = await svc.store.connections.create(
                account.id,
                connector.name,
                name,
                Health.AUTHORIZING,
                seal=(lambda connection_id: rt.seal_secrets(svc, connection_id, rt.Secrets(form))) if form else None,
            )
            await svc.events.connection_created(account, connection)
            url, nonce = await svc.oauth.start(account, connection, connector, purpose="connect", strict=strict)
            return connection, SignIn(url, nonce)
        credentials = parse_credentials(connector, data)
        await self.check_credentials(account, connector, credentials)
        status = lifecycle.target(Event.CONNECTED, choice_missing=connector.config_select is not None)
        connection = await svc.store.connections.create(
            account.id,
            connector.name,
            name,
            status,
            seal=lambda connection_id: rt.seal_secrets(svc, connection_id, rt.Secrets(credentials)),
        )
        await svc.store.runs.add_log(
            connection.id, "info", f"Connected to {connector.display_name}; credentials verified."
        )
        await svc.events.connection_created(account, connection)
        return connection, None

    async def check_credentials(
        self,
        account: SubAccount,
        connector: Connector,
        credentials: dict[str, str],
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        """Test credentials at the provider, unless this customer had too many rejected lately
        (counted across processes): the BFF must not become a password-guessing proxy."""
        limits = self._throttle
        key = f"{account.id}:{connector.name}"
        await limits.check(FAILED_CREDENTIALS, key)
        try:
            await rt.session_for(self.services, connector, credentials=credentials, config=config).test()
        except ConnectorError as exc:
            if isinstance(exc, CredentialsRejected):
                await limits.hit(FAILED_CREDENTIALS, key)
            raise connector_error(
                exc, new_credentials=True, unreachable="Could not reach the provider to check the credentials"
            ) from None

    async def _refuse_too_many_pending(self, account: SubAccount) -> None:
        """A customer cannot pile up unfinished connections (each is a live consent link and a row)."""
        connections = await self.services.store.connections.list_for(account.id)
        pending = sum(1 for connection in connections if lifecycle.is_pending(connection.health_status))
        if pending >= MAX_PENDING_CONNECTIONS:
            raise ApiError(
                429,
                "too_many_pending_connections",
                f"This account has {pending} unfinished connections (waiting for consent or a choice). "
                "Finish or delete some before adding more.",
            )

    async def delete(self, account: SubAccount, connection: Connection) -> None:
        """The connection, its secrets, runs, logs and warehouse tables; the partner is told."""
        if await self.services.sync.delete_connection(account.id, connection.id):
            await self.services.events.connection_deleted(account, connection)

    # -- CONFIG_SELECT ------------------------------------------------------------------------

    def config_connector(self, connection: Connection) -> Connector:
        """The connector, if this connection has a configuration step it may take now."""
        connector = self.services.connectors[connection.connector]
        if connector.config_select is None:
            raise ApiError(400, "no_config_step", f"{connector.display_name} has no configuration step.")
        if not lifecycle.can_configure(connection.health_status):
            raise ApiError(409, "connection_not_ready", "Finish authorising the connection first.")
        return connector

    async def config_options(self, connection: Connection) -> list[dict[str, Any]]:
        """The provider's choices; stored credentials it rejects move the connection to ERROR
        (the same event as in a sync or a writeback)."""
        svc = self.services
        try:
            return await rt.session_for_connection(svc, connection).config_options()
        except ConnectorError as exc:
            error = connector_error(exc, unreachable="Could not load the options")
            if isinstance(exc, CredentialsRejected):
                await lifecycle.transition(
                    svc.store,
                    svc.events,
                    connection.id,
                    Event.CREDENTIALS_REJECTED,
                    detail=error.detail,
                    logs=[("warning", error.detail)],
                )
            raise error from None

    async def save_config(self, account: SubAccount, connection: Connection, chosen: Any) -> Connection:
        """Store the CONFIG_SELECT choice (checked against what the provider offers now)."""
        connector = self.config_connector(connection)
        select = connector.config_select
        assert select is not None
        if isinstance(chosen, (str, int)) and not isinstance(chosen, bool):
            chosen = [chosen]
        if (
            not isinstance(chosen, list)
            or not chosen
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in chosen)
        ):
            raise validation_error({select.field: f"Choose at least one of the {select.label.lower()}."})
        values = list(dict.fromkeys(str(v) for v in chosen))
        if not select.multiple and len(values) > 1:
            raise validation_error({select.field: "Choose exactly one."})
        offered = {str(option["value"]) for option in await self.config_options(connection)}
        unknown = [v for v in values if v not in offered]
        if unknown:
            raise validation_error({select.field: f"Not offered by the provider: {', '.join(unknown)}."})
        await lifecycle.transition(
            self.services.store,
            self.services.events,
            connection.id,
            Event.CONFIG_SAVED,
            config={**connection.config, select.field: values},
            logs=[("info", f"{select.label} selected: {', '.join(values)}.")],
        )
        return await self.reload(account, connection)

    # -- re-authorisation ---------------------------------------------------------------------

    async def start_reauthorising(
        self, account: SubAccount, connection: Connection, connector: Connector, *, strict: bool = False
    ) -> SignIn:
        """OAuth2: a new sign-in. One never finished (``AUTHORIZING``, the window was closed) ends
        like a first connect (CONFIG_SELECT or OK), not as a re-authorisation."""
        svc = self.services
        if connection.health_status == Health.AUTHORIZING:
            url, nonce = await svc.oauth.start(account, connection, connector, purpose="connect", strict=strict)
        else:
            url, nonce = await svc.oauth.start(account, connection, connector, purpose="reauthorise", strict=strict)
            await lifecycle.transition(svc.store, svc.events, connection.id, Event.SIGN_IN_STARTED, keep_detail=True)
        return SignIn(url, nonce)

    async def replace_credentials(
        self, account: SubAccount, connection: Connection, connector: Connector, credentials: dict[str, str]
    ) -> Connection:
        """Key/login: new credentials, tested, then stored with the state change in one write."""
        svc = self.services
        await self.check_credentials(account, connector, credentials, config=connection.config)
        await lifecycle.transition(
            svc.store,
            svc.events,
            connection.id,
            Event.REAUTHORISED,
            choice_missing=choice_missing(connector, connection),
            secrets=rt.seal_secrets(svc, connection.id, rt.Secrets(credentials)),
            logs=[("info", "Credentials replaced and verified.")],
        )
        return await self.reload(account, connection)

    # -- schedule and lifecycle ------------------------------------------------------------------

    async def change(
        self,
        account: SubAccount,
        connection: Connection,
        *,
        name: str | None = None,
        sync_frequency: int | None | Unset = UNSET,
        table_frequencies: dict[str, int] | None = None,
        selected_tables: list[str] | None | Unset = UNSET,
    ) -> Connection:
        """Rename the connection, change its schedule or its table selection (checked by the
        caller); the schedule is planned again and the change logged."""
        svc = self.services
        await svc.store.connections.update(
            connection.id,
            name=name,
            sync_frequency=sync_frequency,
            table_frequencies=table_frequencies,
            selected_tables=selected_tables,
        )
        updated = await self.reload(account, connection)
        if name is not None and name != connection.name:
            # Its schema in the customer's database follows (query tables over it keep working).
            schema = await svc.warehouse.rename_connection(account.id, connection.id, name)
            if schema is not None:
                await svc.store.runs.add_log(
                    connection.id, "info", f"Renamed; its tables are now in schema {schema!r}."
                )
        if selected_tables is not UNSET:
            chosen = "every table" if selected_tables is None else ", ".join(selected_tables)
            await svc.store.runs.add_log(connection.id, "info", f"Tables to sync: {chosen}.")
        if sync_frequency is not UNSET or table_frequencies is not None or selected_tables is not UNSET:
            updated = await svc.schedules.schedule_changed(updated)
            await svc.store.runs.add_log(connection.id, "info", f"Schedule changed: {describe_schedule(updated)}.")
        return updated

    async def disable(self, account: SubAccount, connection: Connection) -> Connection:
        """``DISABLED``: no scheduled runs and no manual syncs until enabled again. A run already
        going finishes; the connection stays disabled."""
        svc = self.services
        if lifecycle.applies(Event.DISABLED, connection.health_status):
            await lifecycle.transition(
                svc.store,
                svc.events,
                connection.id,
                Event.DISABLED,
                detail="Disabled: nothing syncs until the connection is enabled again.",
                logs=[("info", "Connection disabled.")],
            )
        return await self.reload(account, connection)

    async def enable(self, account: SubAccount, connection: Connection) -> Connection:
        """``RE_ENABLED``, then the normal flow: a sync at once and the schedule again."""
        svc = self.services
        if not lifecycle.applies(Event.ENABLED, connection.health_status):
            raise ApiError(409, "connection_not_disabled", "This connection is not disabled.")
        await lifecycle.transition(
            svc.store, svc.events, connection.id, Event.ENABLED, logs=[("info", "Connection enabled again.")]
        )
        return await self.reload(account, connection)


def describe_schedule(connection: Connection) -> str:
    every = "on demand only" if connection.sync_frequency is None else f"every {connection.sync_frequency} s"
    if not connection.table_frequencies:
        return every
    tables = ", ".join(f"{t} every {s} s" for t, s in sorted(connection.table_frequencies.items()))
    return f"{every}; {tables}"
