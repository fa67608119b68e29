"""Deterministic fixture data and the sorted tables the sandbox APIs page over."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

Record = dict[str, Any]
Key = tuple[int, str]  # (updated_at as epoch seconds, id)

BASE_TS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
MINUTE = 60

CONTACT_COUNT = 1250
DEAL_COUNT = 300
INVOICES_PER_DIVISION = 500
TRANSACTION_COUNT = 200
REFRESH_BATCH = 10
# ``scale`` (BFF_SANDBOX_SCALE) multiplies every count above; 1 is the fixtures the tests expect.

DIVISIONS: tuple[tuple[int, str], ...] = (
    (101, "Acme Holding"),
    (102, "Acme Retail"),
    (103, "Acme Services"),
)

# The accounting app's entity types, as Exact Online numbers them in its own ``deleted`` list:
# ``name`` lower-cased is the table that holds that entity's records.
ENTITY_TYPES: tuple[tuple[int, str], ...] = ((20, "Invoices"),)
INVOICE_ENTITY = 20

_FIRST_NAMES = (
    "Anna",
    "Bram",
    "Carla",
    "Daan",
    "Eva",
    "Finn",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Katrien",
    "Lars",
    "Mila",
    "Niels",
    "Olivia",
    "Pieter",
    "Quinten",
    "Roos",
    "Sven",
    "Tess",
)
_LAST_NAMES = (
    "Jansen",
    "de Vries",
    "Bakker",
    "Visser",
    "Smit",
    "Meijer",
    "Mulder",
    "de Boer",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "Dekker",
    "Brouwer",
    "Dijkstra",
    "Kok",
    "Jacobs",
    "Vermeulen",
    "Willems",
    "Maes",
    "Claes",
    "Goossens",
    "Wouters",
    "Martens",
    "Leclercq",
)
_COMPANIES = (
    "Northwind Trading",
    "Blue Harbor",
    "Copperleaf",
    "Dunewood Labs",
    "Elmstone",
    "Fjord Analytics",
    "Granite & Co",
    "Hollowbrook",
    "Ironbark Systems",
    "Juniper Foods",
    "Kestrel Logistics",
    "Lumen Studio",
    "Maple Ridge",
    "Nimbus Health",
    "Oakline Retail",
)
_DEAL_PRODUCTS = (
    "Annual licence",
    "Onboarding package",
    "Support renewal",
    "Seat expansion",
    "Data migration",
    "Training day",
    "Enterprise upgrade",
)
DEAL_STAGES = (
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
)
_INVOICE_STATUSES = ("draft", "open", "open", "paid", "paid", "paid", "overdue")
_TRANSACTION_PAYEES = (
    "Albert Heijn",
    "NS Reizen",
    "Coolblue",
    "Eneco",
    "KPN",
    "Bol.com",
    "Shell",
    "Gemeente Utrecht",
    "Jumbo",
    "Ziggo",
    "HEMA",
    "Belastingdienst",
)


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> float:
    """ISO-8601 date-time to epoch seconds; naive values are taken as UTC."""
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _day(start: date, offset: int) -> str:
    return (start + timedelta(days=offset)).isoformat()


def _money(cents: int) -> float:
    return round(cents / 100, 2)


def _slug(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


Journal = Callable[[str, Any], None]


class Table:
    """Records kept sorted by (updated_at, id) with a parallel list of sort keys.

    Every change goes through ``pop_front``, ``remove`` or ``append``, and is told to ``journal``
    (``op, argument``) when one is attached: :meth:`replay` of those brings a fresh table to the same state.
    """

    __slots__ = ("records", "keys", "journal")

    def __init__(self, rows: Iterable[tuple[Record, int]]) -> None:
        pairs = sorted(rows, key=lambda pair: (pair[1], pair[0]["id"]))
        self.records: list[Record] = [record for record, _ in pairs]
        self.keys: list[Key] = [(ts, record["id"]) for record, ts in pairs]
        self.journal: Journal | None = None

    def replay(self, changes: Iterable[tuple[str, Any]]) -> None:
        for op, body in changes:
            if op == "pop_front":
                self.pop_front(int(body))
            elif op == "remove":
                if self.find(str(body)) is not None:
                    self.remove(str(body))
            elif op == "append":
                record, ts = body
                if not self.keys or (int(ts), record["id"]) > self.keys[-1]:
                    self.append(record, int(ts))

    def __len__(self) -> int:
        return len(self.records)

    def index_after_time(self, after: float | None) -> int:
        """First position with updated_at strictly later than ``after``."""
        if after is None:
            return 0
        return bisect_right(self.keys, after, key=itemgetter(0))

    def index_after_key(self, key: Key) -> int:
        return bisect_right(self.keys, key)

    def last_stamp(self) -> int:
        return self.keys[-1][0] if self.keys else BASE_TS

    def pop_front(self, count: int) -> list[Record]:
        taken = self.records[:count]
        del self.records[:count]
        del self.keys[:count]
        if self.journal is not None:
            self.journal("pop_front", count)
        return taken

    def find(self, record_id: str) -> Record | None:
        return next((r for r in self.records if r["id"] == record_id), None)

    def remove(self, record_id: str) -> Record:
        """Take a record out (a write deletes it, or re-appends it with a newer stamp)."""
        for i, record in enumerate(self.records):
            if record["id"] == record_id:
                del self.records[i]
                del self.keys[i]
                if self.journal is not None:
                    self.journal("remove", record_id)
                return record
        raise KeyError(record_id)

    def append(self, record: Record, ts: int) -> None:
        # Callers only ever append strictly newer stamps, which keeps the order.
        if self.keys and (ts, record["id"]) <= self.keys[-1]:
            raise ValueError("appended record must sort after every existing one")
        record["updated_at"] = iso(ts)
        self.records.append(record)
        self.keys.append((ts, record["id"]))
        if self.journal is not None:
            self.journal("append", [record, ts])


def _stamp(index: int) -> int:
    return BASE_TS + index * MINUTE


def make_contact(i: int, count: int = CONTACT_COUNT) -> tuple[Record, int]:
    first = _FIRST_NAMES[(i - 1) % len(_FIRST_NAMES)]
    last = _LAST_NAMES[(i * 7) % len(_LAST_NAMES)]
    company = _COMPANIES[(i * 11) % len(_COMPANIES)]
    email = f"{_slug(first)}.{_slug(last)}.{i}@{_slug(company)}.example"
    created = BASE_TS - (count + 1 - i) * 3 * 3600
    record = {
        "id": f"c_{i:04d}",
        "email": email,
        "first_name": first,
        "last_name": last,
        "company": company,
        "created_at": iso(created),
        "updated_at": iso(_stamp(i)),
    }
    return record, _stamp(i)


def make_deal(i: int, count: int = DEAL_COUNT, contact_count: int = CONTACT_COUNT) -> tuple[Record, int]:
    company = _COMPANIES[(i * 5) % len(_COMPANIES)]
    product = _DEAL_PRODUCTS[i % len(_DEAL_PRODUCTS)]
    created = BASE_TS - (count + 1 - i) * 24 * 3600
    record = {
        "id": f"d_{i:03d}",
        "name": f"{company}: {product}",
        "amount": _money(((i * 104_729) % 4_950_000) + 50_000),
        "stage": DEAL_STAGES[(i * 3) % len(DEAL_STAGES)],
        "contact_id": f"c_{((i * 37) % contact_count) + 1:04d}",
        "created_at": iso(created),
        "updated_at": iso(_stamp(i)),
    }
    return record, _stamp(i)


def make_invoice(division: int, n: int, position: int) -> tuple[Record, int]:
    # `position` numbers invoices across the whole resource (division 101 first),
    # so "record i of the resource" has updated_at = base + i minutes.
    record = {
        "id": f"inv_{division}_{n:04d}",
        "division": division,
        "number": f"{division}-2025-{n:05d}",
        "customer": _COMPANIES[(n * 7 + division) % len(_COMPANIES)],
        "amount": _money(((n * 7_919 + division * 31) % 1_500_000) + 2_500),
        "currency": "EUR",
        "status": _INVOICE_STATUSES[(n + division) % len(_INVOICE_STATUSES)],
        "issued_on": _day(date(2025, 1, 1), (n * 17) % 365),
        "updated_at": iso(_stamp(position)),
    }
    return record, _stamp(position)


def make_transaction(i: int) -> Record:
    payee = _TRANSACTION_PAYEES[(i * 5) % len(_TRANSACTION_PAYEES)]
    incoming = i % 9 == 0
    cents = ((i * 7_919) % 25_000) + 150
    return {
        "id": f"t_{i:04d}",
        "account_id": "acc_1",
        "amount": _money(cents * 20 if incoming else -cents),
        "currency": "EUR",
        "description": f"Payment from customer {i}" if incoming else f"{payee} ref {1000 + i}",
        "made_on": _day(date(2025, 7, 1), i // 2),
    }


def contacts_table(scale: int = 1) -> Table:
    count = CONTACT_COUNT * scale
    return Table(make_contact(i, count) for i in range(1, count + 1))


def deals_table(scale: int = 1) -> Table:
    count = DEAL_COUNT * scale
    return Table(make_deal(i, count, CONTACT_COUNT * scale) for i in range(1, count + 1))


def invoice_tables(scale: int = 1) -> dict[int, Table]:
    per_division = INVOICES_PER_DIVISION * scale
    tables = {}
    for d, (code, _) in enumerate(DIVISIONS):
        first = d * per_division
        tables[code] = Table(make_invoice(code, n, first + n) for n in range(1, per_division + 1))
    return tables


def transactions_table(scale: int = 1) -> Table:
    rows = []
    for i in range(1, TRANSACTION_COUNT * scale + 1):
        record = make_transaction(i)
        record["updated_at"] = iso(_stamp(i))
        rows.append((record, _stamp(i)))
    return Table(rows)
