"""Per-instance mutable state: fixture tables, stats, fault-injection counters, revocations."""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterator
from functools import cached_property
from itertools import islice
from typing import Any

from . import data
from .data import MINUTE, Key, Record, Table
from .options import SandboxOptions
from .store import SandboxStore

PROVIDERS = ("crm", "accounting", "bank", "chat")
TOUCHABLE = ("crm.contacts", "crm.deals", "accounting.invoices", "bank.transactions")
DELETABLE = ("crm.contacts", "accounting.invoices")
STAT_KEYS = (
    "crm.me",
    "crm.contacts",
    "crm.deals",
    "accounting.me",
    "accounting.divisions",
    "accounting.invoices",
    "bank.accounts",
    "bank.transactions",
    "crm.contacts.write",
    "crm.contacts.deleted",
    "crm.deals.write",
    "accounting.invoices.write",
    "accounting.deleted",
    "accounting.entitytypes",
    "chat.me",
    "chat.channels",
    "chat.messages",
    "chat.messages.write",
)
EDITED = " (edited)"
DELETED_CONTACTS = "crm.contacts.deleted"
# The human-visible field that a touch marks as edited.
_EDIT_FIELD = {
    "crm.contacts": "last_name",
    "crm.deals": "name",
    "accounting.invoices": "customer",
    "bank.transactions": "description",
}


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.records_served: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.rate_limited = 0
        self.failed = 0
        self.calls = 0  # every data-API call, reads and writes, including the ones answered 429/500

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "records_served": dict(self.records_served),
            "rate_limited": self.rate_limited,
            "failed": self.failed,
            "calls": self.calls,
        }


class Faults:
    """Decides, per data-API call, whether to answer 429 or 500 instead of data."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.fail_calls = 0

    def verdict(self, path: str) -> str | None:
        """Return "rate_limited", "failed" or None for the call on ``path``."""
        options = self.options
        if options.rate_limit_every and (options.rate_limit_match is None or options.rate_limit_match in path):
            self.calls += 1
            if self.calls % options.rate_limit_every == 0:
                return "rate_limited"
        if not options.fail_every:
            return None
        if options.fail_match is not None and options.fail_match not in path:
            return None
        # Counted after the rate limiter, so both knobs together still yield 500s.
        self.fail_calls += 1
        if self.fail_calls % options.fail_every == 0:
            return "failed"
        return None


class SandboxData:
    """The fixture tables, each built on first use (a scaled-up sandbox only builds what is read),
    with the changes kept in ``store`` replayed onto them (so a restart changes nothing)."""

    def __init__(self, scale: int = 1, store: SandboxStore | None = None) -> None:
        self.scale = scale
        self.store = store or SandboxStore(None, scale=scale)

    def kept(self, name: str, table: Table) -> Table:
        """``table`` (fresh fixtures) with the changes made to it so far; later ones are kept too."""
        table.replay(self.store.changes(name))
        table.journal = lambda op, body: self.store.record_change(name, op, body)
        return table

    def next_id(self, name: str, fixtures: int) -> int:
        """The number of the next record written to ``name``, whose fixtures are 1…``fixtures``."""
        return self.store.take_number(name, fixtures + 1)

    @cached_property
    def contacts(self) -> Table:
        return self.kept("crm.contacts", data.contacts_table(self.scale))

    @cached_property
    def deals(self) -> Table:
        return self.kept("crm.deals", data.deals_table(self.scale))

    @cached_property
    def invoices(self) -> dict[int, Table]:
        tables = data.invoice_tables(self.scale)
        return {code: self.kept(f"accounting.invoices.{code}", table) for code, table in tables.items()}

    @cached_property
    def deleted_invoices(self) -> dict[int, Table]:
        """Per division, the invoices deleted there, oldest first: ``{id: invoice id, division,
        entitytype}`` with the time of the deletion as ``updated_at`` (the deleted list pages like
        the invoices do)."""
        return {code: self.kept(f"accounting.deleted.{code}", Table([])) for code, _ in data.DIVISIONS}

    def delete_invoice(self, record_id: str, now: float) -> None:
        """Remove an invoice and list it as deleted, at ``now`` but after every earlier deletion."""
        division = int(record_id.split("_")[1])
        self.invoices[division].remove(record_id)
        last = max(table.last_stamp() for table in self.deleted_invoices.values())
        entry = {"id": record_id, "division": division, "entitytype": data.INVOICE_ENTITY}
        self.deleted_invoices[division].append(entry, max(last + 1, int(now)))

    @cached_property
    def transactions(self) -> Table:
        return self.kept("bank.transactions", data.transactions_table(self.scale))

    @cached_property
    def deleted_contacts(self) -> list[tuple[str, int]]:
        """Deleted contacts, oldest first: (id, deleted_at stamp), for GET /crm/api/contacts/deleted."""
        return [(str(record_id), int(stamp)) for _, (record_id, stamp) in self.store.changes(DELETED_CONTACTS)]

    def delete_contact(self, record_id: str) -> None:
        """Remove a contact and remember when, so incremental syncs can learn about it."""
        self.contacts.remove(record_id)
        last = self.deleted_contacts[-1][1] if self.deleted_contacts else 0
        entry = (record_id, max(self.contacts.last_stamp(), last) + MINUTE)
        self.deleted_contacts.append(entry)
        self.store.record_change(DELETED_CONTACTS, "deleted", entry)

    def delete(self, resource: str, count: int, now: float) -> list[str]:
        """Delete the first ``count`` records of ``resource`` (in (updated_at, id) order)."""
        if resource == "accounting.invoices":
            merged = heapq.merge(*(_tagged(table.keys, code) for code, table in self.invoices.items()))
            ids = [record_id for (_, record_id), _ in islice(merged, count)]
            for record_id in ids:
                self.delete_invoice(record_id, now)
            return ids
        ids = [record["id"] for record in self.contacts.records[:count]]
        for record_id in ids:
            self.delete_contact(record_id)
        return ids

    def touch(self, resource: str, count: int) -> list[str]:
        field = _EDIT_FIELD[resource]
        if resource == "accounting.invoices":
            touched = self._touch_invoices(count, field)
        else:
            table = {
                "crm.contacts": self.contacts,
                "crm.deals": self.deals,
                "bank.transactions": self.transactions,
            }[resource]
            newest = table.last_stamp()
            touched = table.pop_front(count)
            for offset, record in enumerate(touched, start=1):
                _mark_edited(record, field)
                table.append(record, newest + offset * MINUTE)
        return [record["id"] for record in touched]

    def _touch_invoices(self, count: int, field: str) -> list[Record]:
        tables = self.invoices
        newest = max(table.last_stamp() for table in tables.values())
        # "The first N records" of the resource, in its global (updated_at, id) order;
        # they form a prefix of every division's own list.
        merged = heapq.merge(*(_tagged(table.keys, code) for code, table in tables.items()))
        order = [code for _, code in islice(merged, count)]
        popped = {code: deque(tables[code].pop_front(n)) for code, n in Counter(order).items()}
        touched = []
        for offset, code in enumerate(order, start=1):
            record = popped[code].popleft()
            _mark_edited(record, field)
            tables[code].append(record, newest + offset * MINUTE)
            touched.append(record)
        return touched

    def import_transactions(self, count: int) -> list[Record]:
        newest = self.transactions.last_stamp()
        added = []
        for offset in range(1, count + 1):
            record = data.make_transaction(self.next_id("bank.transactions", data.TRANSACTION_COUNT * self.scale))
            self.transactions.append(record, newest + offset * MINUTE)
            added.append(record)
        return added


def _tagged(keys: list[Key], code: int) -> Iterator[tuple[Key, int]]:
    return ((key, code) for key in keys)


def _mark_edited(record: Record, field: str) -> None:
    if not record[field].endswith(EDITED):
        record[field] += EDITED


__all__ = ["DELETABLE", "Faults", "PROVIDERS", "STAT_KEYS", "SandboxData", "Stats", "TOUCHABLE", "Table"]
