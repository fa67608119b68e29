"""The one exception tree (bff.errors): its drawing tells the truth, and each domain error
carries its own answer."""

from __future__ import annotations

import importlib
import pkgutil

import bff
from bff.errors import BFFError, Conflict, Invalid, connector_error


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


def test_the_docstring_draws_every_error_class() -> None:
    for module in pkgutil.walk_packages(bff.__path__, "bff."):
        if not module.name.startswith(("bff.sandbox", "bff.store.migrations")):
            importlib.import_module(module.name)
    drawn = bff.errors.__doc__ or ""
    missing = [cls.__name__ for cls in all_subclasses(BFFError) if f" {cls.__name__} " not in drawn]
    assert missing == []


def test_domain_errors_carry_their_answer() -> None:
    from bff.query_tables import FilterValueRejected, NameTaken, QueryInvalid
    from bff.services.sync import ConnectionNotReady, UnknownTables
    from bff.store import ExternalIdTaken, RunAlreadyActive

    running = RunAlreadyActive(7)
    assert isinstance(running, Conflict) and running.status == 409
    assert running.body() == {
        "detail": "A sync of this connection is already running; wait for it to finish.",
        "code": "sync_already_running",
        "pipeline_run_id": 7,
    }
    assert ExternalIdTaken(3, "cust-1").body()["id"] == 3
    assert ConnectionNotReady("connection_disabled", "off").body() == {"detail": "off", "code": "connection_disabled"}
    unknown = UnknownTables(["x"], ["a", "b"])
    assert isinstance(unknown, Invalid) and unknown.status == 400 and unknown.code == "validation_error"
    assert unknown.errors == {"tables": "Unknown table(s): x. This connection has: a, b."}
    assert QueryInvalid("syntax").body() == {
        "detail": "The query was refused: syntax",
        "code": "query_invalid",
        "errors": {"query": "syntax"},
    }
    assert NameTaken("n").status == 409 and NameTaken("n").errors == {"name": "Already in use."}
    assert FilterValueRejected("bad date", ["filter__day__equal"]).errors == {"filter__day__equal": "bad date"}
    assert FilterValueRejected("bad date", []).errors == {"filter": "bad date"}


def test_one_mapping_for_connector_errors() -> None:
    from bff.connectors import CredentialsRejected, ProviderError

    rejected = CredentialsRejected("Sandbox refused the key.")
    assert connector_error(rejected).code == "connection_unauthorised"
    assert connector_error(rejected, new_credentials=True).code == "credentials_rejected"
    down = connector_error(ProviderError("503"), unreachable="Could not load the options")
    assert (down.status, down.code, down.detail) == (502, "provider_unavailable", "Could not load the options: 503")
    assert connector_error(ProviderError("503")).code == "provider_error"
