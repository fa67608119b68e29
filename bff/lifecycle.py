"""The connection's health state machine (DESIGN §4): its states, what each state allows, and
the one way a connection's ``health_status`` changes.

Two tables, read together:

* :data:`STATES` — per state, what a connection in it may do (request a sync, be synced by the
  schedule, call its provider for writeback, show its configuration step), and how the widget
  shows it (still waiting for a sign-in or a check; failed; unfinished setup). The predicates
  (:func:`can_sync`, :func:`can_write`, :func:`is_pending`, …) read it, and so does the test that
  checks the widget's own state sets (``widget/connect.js``, ``widget/peliqan-status.js``).
* :data:`TRANSITIONS` — per :class:`Event`, the states it applies from and the state it leads to.
  From any other state the event leaves the connection as it is (a run that ends on a connection
  disabled meanwhile keeps it ``DISABLED``, detail included). The rule is applied inside the
  store's ``UPDATE`` (``CASE WHEN old = ANY(sources)``), on the locked row: a concurrent change
  can never be overwritten by a transition that no longer applies.

:func:`transition` is the only writer (:func:`conclude_run` at the end of a sync run): it stores
the new state (with the caller's detail, log lines and other changes, in one transaction), logs
it on ``bff.lifecycle`` and, when the state really changed, calls ``events.health_changed``
(:mod:`bff.events`: webhooks, then the schedule).
``connect`` and ``reauthorise`` land on ``CONFIG_SELECT`` instead when the connector has a
configuration step and no choice was saved yet: that step is never skipped, and a saved choice is
never asked for again.

Rejected stored credentials are one event everywhere (:attr:`Event.CREDENTIALS_REJECTED`): the
connection goes to ``ERROR`` and the API answers ``409 connection_unauthorised`` (a sync run, a
writeback, the configuration options). ``422 credentials_rejected`` is only for credentials the
caller has just sent (connect, re-authorise): those were never stored.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .store import UNSET

if TYPE_CHECKING:
    from .events import Events
    from .store import HealthChange, Run, Store

__all__ = [
    "STATES",
    "TRANSITIONS",
    "Event",
    "Health",
    "can_configure",
    "can_schedule",
    "can_sync",
    "can_write",
    "is_pending",
    "refusal",
    "syncs_on_entry",
    "target",
    "transition",
]

logger = logging.getLogger("bff.lifecycle")


class Health(enum.StrEnum):
    AUTHORIZING = "AUTHORIZING"
    CONFIG_SELECT = "CONFIG_SELECT"
    CHECKING = "CHECKING"
    OK = "OK"
    HEALTHY = "HEALTHY"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    ERROR = "ERROR"
    RE_AUTHORISING = "RE_AUTHORISING"
    RE_AUTHORISED = "RE_AUTHORISED"
    DISABLED = "DISABLED"
    RE_ENABLED = "RE_ENABLED"


@dataclasses.dataclass(frozen=True)
class Traits:
    sync: bool  # a sync may be requested (API, SDK)
    schedule: bool  # the schedule syncs it
    write: bool  # writeback and the proxy may call its provider
    configure: bool  # its configuration step (options, choice) may be shown and saved
    pending: bool  # unfinished setup: waits for a consent or a choice (counts toward the cap)
    waiting: bool  # a sign-in or a check is under way: the widget waits for it to end
    failed: bool  # the widget reports the connect as failed
    fresh: bool  # (new) credentials that work: entering it syncs at once and schedules afresh


def _traits(flags: str) -> Traits:
    """One row of :data:`STATES`: a letter where the state allows it, ``.`` where not."""
    return Traits(*(letter != "." for letter in flags.replace(" ", "")))


H = Health
#                                    sync, schedule, write, configure, pending, waiting, failed, fresh
STATES: Mapping[Health, Traits] = {
    H.AUTHORIZING: _traits(".  .  .  .  P  W  .  ."),
    H.CONFIG_SELECT: _traits(".  .  .  C  P  .  .  ."),
    H.CHECKING: _traits("S  .  .  C  .  W  .  ."),
    H.OK: _traits("S  s  W  C  .  .  .  F"),
    H.HEALTHY: _traits("S  s  W  C  .  .  .  ."),
    H.COMPLETED_WITH_ERRORS: _traits("S  s  W  C  .  .  .  ."),
    H.ERROR: _traits("S  s  W  C  .  .  X  ."),
    H.RE_AUTHORISING: _traits("S  .  .  .  .  W  .  ."),
    H.RE_AUTHORISED: _traits("S  s  W  C  .  .  .  F"),
    H.DISABLED: _traits(".  .  .  C  .  .  X  ."),
    H.RE_ENABLED: _traits("S  s  W  C  .  .  .  F"),
}


class Event(enum.StrEnum):
    CONNECTED = "connected"  # first credentials tested, or first OAuth tokens stored
    REAUTHORISED = "reauthorised"  # new credentials or tokens stored for a connection that had some
    SIGN_IN_STARTED = "sign_in_started"  # an OAuth re-authorisation was opened
    SIGN_IN_FAILED = "sign_in_failed"  # the provider refused the consent, or the code exchange failed
    CONFIG_SAVED = "config_saved"  # the configuration step's choice was saved
    CREDENTIALS_REJECTED = "credentials_rejected"  # the provider rejected the stored credentials
    SYNC_SUCCEEDED = "sync_succeeded"
    SYNC_PARTLY_FAILED = "sync_partly_failed"
    SYNC_FAILED = "sync_failed"
    DISABLED = "disabled"
    ENABLED = "enabled"


ANY: frozenset[Health] = frozenset(Health)
NOT_DISABLED = ANY - {H.DISABLED}

# event → (the states it applies from, the state it leads to); from any other state: no change.
TRANSITIONS: Mapping[Event, tuple[frozenset[Health], Health]] = {
    Event.CONNECTED: (ANY, H.OK),
    Event.REAUTHORISED: (ANY, H.RE_AUTHORISED),
    Event.SIGN_IN_STARTED: (ANY, H.RE_AUTHORISING),
    Event.SIGN_IN_FAILED: (ANY, H.ERROR),
    Event.CONFIG_SAVED: (frozenset({H.CONFIG_SELECT}), H.OK),
    Event.CREDENTIALS_REJECTED: (NOT_DISABLED, H.ERROR),
    Event.SYNC_SUCCEEDED: (NOT_DISABLED, H.HEALTHY),
    Event.SYNC_PARTLY_FAILED: (NOT_DISABLED, H.COMPLETED_WITH_ERRORS),
    Event.SYNC_FAILED: (NOT_DISABLED, H.ERROR),
    Event.DISABLED: (NOT_DISABLED, H.DISABLED),
    Event.ENABLED: (frozenset({H.DISABLED}), H.RE_ENABLED),
}
# Events that store credentials: without a saved configuration choice they stop at CONFIG_SELECT.
_AUTHORISING = frozenset({Event.CONNECTED, Event.REAUTHORISED})


def _traits_of(health: str) -> Traits | None:
    try:
        return STATES[Health(health)]
    except ValueError:
        return None


def can_sync(health: str) -> bool:
    traits = _traits_of(health)
    return traits is not None and traits.sync


def can_schedule(health: str) -> bool:
    traits = _traits_of(health)
    return traits is not None and traits.schedule


def can_write(health: str) -> bool:
    traits = _traits_of(health)
    return traits is not None and traits.write


def can_configure(health: str) -> bool:
    traits = _traits_of(health)
    return traits is not None and traits.configure


def is_pending(health: str) -> bool:
    traits = _traits_of(health)
    return traits is not None and traits.pending


def syncs_on_entry(health: str) -> bool:
    traits = _traits_of(health)
    return traits is not None and traits.fresh


def refusal(health: str, allowed: bool) -> str | None:
    """The API code for a refused action: ``connection_disabled`` or ``connection_not_ready``."""
    if allowed:
        return None
    return "connection_disabled" if health == H.DISABLED else "connection_not_ready"


def applies(event: Event, current: str) -> bool:
    return current in TRANSITIONS[event][0]


def target(event: Event, current: str | None = None, *, choice_missing: bool = False) -> Health:
    """Where ``event`` takes a connection in ``current`` (None: a new connection)."""
    sources, to = TRANSITIONS[event]
    if current is not None and current not in sources:
        return Health(current)
    if event in _AUTHORISING and choice_missing:
        return H.CONFIG_SELECT
    return to


async def transition(
    store: Store,
    events: Events,
    connection_id: int,
    event: Event,
    *,
    detail: Any = None,
    keep_detail: bool = False,
    choice_missing: bool = False,
    logs: Sequence[tuple[str, str]] = (),
    **changes: Any,
) -> Health | None:
    """Apply ``event`` to a stored connection: the new state (and ``detail``, unless ``keep_detail``),
    ``changes`` (other columns) and ``logs`` in one write; then ``events.health_changed`` if the
    state changed. The state after it; None if the connection is gone. From a state the event
    does not apply to, state and detail stay."""
    change = await store.connections.update(
        connection_id,
        health_status=target(event, choice_missing=choice_missing).value,
        health_from=sorted(TRANSITIONS[event][0]),
        detail=UNSET if keep_detail else detail,
        logs=logs,
        **changes,
    )
    if change is None:
        return None
    await _changed(events, change, event)
    return Health(change.new)


async def _changed(events: Events, change: HealthChange, event: Event) -> None:
    if change.old != change.new:
        logger.info("connection %s: %s → %s (%s)", change.connection_id, change.old, change.new, event.value)
        await events.health_changed(change)


async def conclude_run(
    store: Store,
    events: Events,
    run_id: int,
    connection_id: int,
    event: Event,
    *,
    status: str,
    records: Mapping[str, int] | None,
    detail: str | None,
    logs: Sequence[tuple[str, str]] = (),
) -> Run | None:
    """End a run and apply its ``event`` to the connection, with the events' outbox rows of both
    in the same transaction (``RunStore.finish``, ``Events.run_ending``); then ``Events.run_ended``.
    The ended run; None when it had already ended."""
    ended, change, written = await store.runs.finish(
        run_id,
        status=status,
        records=records,
        error=detail,
        connection_id=connection_id,
        health_status=target(event).value,
        health_from=sorted(TRANSITIONS[event][0]),
        detail=detail,
        logs=logs,
        outbox=events.run_ending,
    )
    if ended is None:
        return None
    if change is not None and change.old != change.new:
        logger.info("connection %s: %s → %s (%s)", change.connection_id, change.old, change.new, event.value)
    await events.run_ended(ended, change, written or ())
    return ended
