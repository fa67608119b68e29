"""The connection's health state machine (bff.lifecycle): its tables, the one writer, and the
widget's copies of the state sets checked against the Python table."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import auth, running_bff
from sandbox_flows import connect_bank

from bff import lifecycle
from bff.lifecycle import STATES, TRANSITIONS, Event, Health
from bff.settings import Settings
from bff.store import HealthChange

WIDGET = Path(__file__).resolve().parents[1] / "widget"


def states(predicate: Callable[[str], bool]) -> set[str]:
    return {state.value for state in Health if predicate(state)}


def js_set(path: Path, pattern: str) -> set[str]:
    """The quoted state names of the first array literal matched by ``pattern`` in ``path``."""
    found = re.search(pattern, path.read_text())
    assert found is not None, f"{pattern} not found in {path.name}"
    return set(re.findall(r"'([A-Z_]+)'", found.group(1)))


def test_every_state_has_one_row_and_every_event_one_rule() -> None:
    assert set(STATES) == set(Health)
    assert set(TRANSITIONS) == set(Event)


def test_the_widget_state_sets_match_the_table() -> None:
    connect = WIDGET / "connect-steps.js"  # the connect window's steps after a pick
    waiting = states(lambda s: STATES[Health(s)].waiting)
    assert js_set(connect, r"const WAITING = new Set\(\[([^\]]*)\]\)") == waiting
    assert js_set(connect, r"const FAILED = new Set\(\[([^\]]*)\]\)") == states(lambda s: STATES[Health(s)].failed)
    # The panel polls quickly while a connection waits for a sign-in or a check.
    assert js_set(WIDGET / "panel.js", r"const busy = [^\n]*?\[([^\]]*)\]\.includes") == waiting
    status = WIDGET / "peliqan-status.js"
    assert js_set(status, r"export const PENDING_SETUP = \[([^\]]*)\]") == states(lifecycle.is_pending)
    # Every state has words in every locale and a tone.
    labels = re.search(r"const LABELS = \{(.*?)\n\};", status.read_text(), re.S)
    assert labels is not None
    for locale in re.findall(r"\n  (\w\w): \{(.*?)\n  \}", labels.group(1), re.S):
        assert set(Health) <= set(re.findall(r"([A-Z_]+): '", locale[1])), locale[0]
    tones = re.search(r"const TONES = \{(.*?)\};", status.read_text(), re.S)
    assert tones is not None and set(Health) <= set(re.findall(r"([A-Z_]+): '", tones.group(1)))


def test_predicates_read_the_table() -> None:
    assert states(lifecycle.can_sync) == set(Health) - {"AUTHORIZING", "CONFIG_SELECT", "DISABLED"}
    assert states(lifecycle.can_write) == {
        "OK",
        "HEALTHY",
        "COMPLETED_WITH_ERRORS",
        "ERROR",
        "RE_AUTHORISED",
        "RE_ENABLED",
    }
    assert states(lifecycle.can_schedule) == states(lifecycle.can_write)
    assert states(lifecycle.can_configure) == set(Health) - {"AUTHORIZING", "RE_AUTHORISING"}
    assert states(lifecycle.is_pending) == {"AUTHORIZING", "CONFIG_SELECT"}
    assert states(lifecycle.syncs_on_entry) == {"OK", "RE_AUTHORISED", "RE_ENABLED"}
    assert not lifecycle.can_sync("SOMETHING_ELSE") and not lifecycle.is_pending("SOMETHING_ELSE")
    assert lifecycle.refusal("DISABLED", False) == "connection_disabled"
    assert lifecycle.refusal("AUTHORIZING", False) == "connection_not_ready"
    assert lifecycle.refusal("OK", True) is None


@pytest.mark.parametrize("event", [e for e in Event if e not in (Event.CONFIG_SAVED, Event.ENABLED)])
def test_targets(event: Event) -> None:
    sources, to = TRANSITIONS[event]
    for state in Health:
        assert lifecycle.target(event, state) == (to if state in sources else state)


def test_authorising_stops_at_the_config_step_without_a_saved_choice() -> None:
    for event in (Event.CONNECTED, Event.REAUTHORISED):
        assert lifecycle.target(event, "OK", choice_missing=True) == Health.CONFIG_SELECT
    assert lifecycle.target(Event.CONNECTED) == Health.OK
    assert lifecycle.target(Event.REAUTHORISED, "HEALTHY") == Health.RE_AUTHORISED
    # Only a transition that stores credentials is redirected.
    assert lifecycle.target(Event.SYNC_FAILED, "OK", choice_missing=True) == Health.ERROR
    assert lifecycle.target(Event.CONFIG_SAVED, "CONFIG_SELECT") == Health.OK
    assert lifecycle.target(Event.CONFIG_SAVED, "HEALTHY") == Health.HEALTHY
    assert lifecycle.target(Event.ENABLED, "DISABLED") == Health.RE_ENABLED
    assert lifecycle.target(Event.ENABLED, "OK") == Health.OK


async def test_transition_writes_logs_and_keeps_a_state_it_does_not_apply_to(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bff(settings_factory(sandbox_enabled=True)) as bff:
        _, partner_token = await bff.partner("p-lifecycle")
        token = str((await bff.integrate(partner_token, "cust-1"))["token"])
        cid = int((await connect_bank(bff.client, token))["id"])
        store = bff.services.store
        heard: list[tuple[str, str]] = []

        class Recording:
            """The events interface, recording what it is told."""

            async def health_changed(self, change: HealthChange) -> None:
                heard.append((change.old, change.new))

            async def run_finished(self, run: object) -> None:
                raise AssertionError("no run here")

            async def connection_created(self, account: object, connection: object) -> None:
                raise AssertionError("no connection created here")

            async def connection_deleted(self, account: object, connection: object) -> None:
                raise AssertionError("no connection deleted here")

        events = Recording()
        with caplog.at_level("INFO", logger="bff.lifecycle"):
            new = await lifecycle.transition(
                store, events, cid, Event.DISABLED, detail="paused", logs=[("info", "Connection disabled.")]
            )
        assert new == Health.DISABLED and heard == [("OK", "DISABLED")]
        assert "OK → DISABLED (disabled)" in caplog.text
        # A run ending on a disabled connection leaves it (and its detail) as it is: nobody is told.
        assert await lifecycle.transition(store, events, cid, Event.SYNC_FAILED, detail="boom") == Health.DISABLED
        server = (await bff.client.get(f"/api/server/{cid}", headers=auth(token))).json()
        assert server["health_status"] == "DISABLED" and server["detail"] == "paused" and len(heard) == 1
        logs = (await bff.client.get(f"/api/server/{cid}/logs", headers=auth(token))).json()["results"]
        assert logs[0]["message"] == "Connection disabled."
        assert await lifecycle.transition(store, events, cid, Event.ENABLED) == Health.RE_ENABLED
        assert heard[-1] == ("DISABLED", "RE_ENABLED")
        assert await lifecycle.transition(store, events, 10**9, Event.ENABLED) is None
