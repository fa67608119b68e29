"""Writes to the sandbox providers: CRM contacts and deals, accounting invoices, chat messages.

Validation answers like real APIs do (``400`` with the offending field named,
``404`` for an unknown id, ``409`` for a duplicate e-mail). Every write gives the
record a strictly newer ``updated_at``, so the next incremental sync sees it.
Routes are wrapped by the sandbox's data-API plumbing, so the fault knobs,
latency and ``_control/stats`` apply to writes as to reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .data import CONTACT_COUNT, DEAL_COUNT, DEAL_STAGES, INVOICES_PER_DIVISION, Record, Table, iso

if TYPE_CHECKING:
    from .app import Sandbox

DataHandler = Callable[[Request], Awaitable[tuple[Response, int]]]
Wrap = Callable[[str, DataHandler], Callable[[Request], Awaitable[Response]]]

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
INVOICE_STATUSES = ("draft", "open", "paid", "overdue")
CONTACT_FIELDS = ("email", "first_name", "last_name", "company")
DEAL_FIELDS = ("name", "amount", "stage", "contact_id")
INVOICE_FIELDS = ("customer", "amount", "currency", "status", "issued_on")


class WriteError(Exception):
    def __init__(self, status: int, error: str, description: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.errors = status, error, description, errors

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.errors:
            body["errors"] = [{"field": k, "message": v} for k, v in self.errors.items()]
        return JSONResponse(body, status_code=self.status)


def invalid(field: str, message: str) -> WriteError:
    return WriteError(400, "validation_error", f"{field}: {message}", {field: message})


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise WriteError(400, "invalid_request", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise WriteError(400, "invalid_request", "The request body must be a JSON object.")
    return body


def only(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    for key in body:
        if key not in allowed:
            raise invalid(key, f"is not a {what} property (properties: {', '.join(allowed)})")


def text(body: dict[str, Any], field: str, *, required: bool = False, max_length: int = 200) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise invalid(field, "is required")
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if len(value) > max_length:
        raise invalid(field, f"must be at most {max_length} characters")
    return value


def amount(body: dict[str, Any], field: str, *, required: bool = False) -> float | None:
    value = body.get(field)
    if value is None:
        if required:
            raise invalid(field, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise invalid(field, "must be a number of at least 0")
    return round(float(value), 2)


def stamp(table: Table, clock: Callable[[], float]) -> int:
    """A write's updated_at: now, but always after every record already in the table."""
    return max(table.last_stamp() + 1, int(clock()))


def find(table: Table, record_id: str, what: str) -> Record:
    record = table.find(record_id)
    if record is None:
        raise WriteError(404, "not_found", f"There is no {what} {record_id}.")
    return record


class SandboxWrites:
    """Write routes of the CRM and accounting sandboxes (one instance per sandbox)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.data = sandbox.data  # nothing is read here: a table is built when a request needs it

    def routes(self, api: Wrap) -> list[BaseRoute]:
        def wrap(key: str, handler: DataHandler) -> Callable[[Request], Awaitable[Response]]:
            async def guarded(request: Request) -> tuple[Response, int]:
                try:
                    return await handler(request)
                except WriteError as exc:
                    return exc.response(), 0

            return api(key, guarded)

        return [
            Route("/crm/api/contacts", wrap("crm.contacts.write", self.add_contact), methods=["POST"]),
            Route("/crm/api/contacts/{id}", wrap("crm.contacts", self.get_contact), methods=["GET"]),
            Route("/crm/api/contacts/{id}", wrap("crm.contacts.write", self.update_contact), methods=["PATCH"]),
            Route("/crm/api/contacts/{id}", wrap("crm.contacts.write", self.delete_contact), methods=["DELETE"]),
            Route("/crm/api/deals", wrap("crm.deals.write", self.add_deal), methods=["POST"]),
            Route("/crm/api/deals/{id}", wrap("crm.deals", self.get_deal), methods=["GET"]),
            Route("/crm/api/deals/{id}", wrap("crm.deals.write", self.update_deal), methods=["PATCH"]),
            Route("/crm/api/deals/{id}", wrap("crm.deals.write", self.delete_deal), methods=["DELETE"]),
            Route(
                "/accounting/api/divisions/{code}/invoices",
                wrap("accounting.invoices.write", self.add_invoice),
                methods=["POST"],
            ),
            Route("/accounting/api/invoices/{id}", wrap("accounting.invoices", self.get_invoice), methods=["GET"]),
            Route(
                "/accounting/api/invoices/{id}",
                wrap("accounting.invoices.write", self.update_invoice),
                methods=["PATCH"],
            ),
            Route(
                "/accounting/api/invoices/{id}",
                wrap("accounting.invoices.write", self.delete_invoice),
                methods=["DELETE"],
            ),
        ]

    # -- CRM contacts --------------------------------------------------------

    def _contact_fields(self, body: dict[str, Any], *, creating: bool, record_id: str | None = None) -> dict[str, Any]:
        only(body, CONTACT_FIELDS, "contact")
        email = text(body, "email", required=creating)
        if email is not None:
            if not EMAIL.match(email):
                raise invalid("email", f"{email!r} is not a valid e-mail address")
            clash = next((r for r in self.data.contacts.records if r["email"].lower() == email.lower()), None)
            if clash is not None and clash["id"] != record_id:
                raise WriteError(409, "conflict", f"A contact with e-mail {email} already exists ({clash['id']}).")
        return {k: text(body, k) if k != "email" else email for k in CONTACT_FIELDS if k in body}

    async def add_contact(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        values = self._contact_fields(await json_body(request), creating=True)
        record_id = f"c_{self.data.next_id('crm.contacts', CONTACT_COUNT * self.data.scale):04d}"
        ts = stamp(self.data.contacts, self.sandbox.clock)
        record = {
            "id": record_id,
            "email": values["email"],
            "first_name": values.get("first_name"),
            "last_name": values.get("last_name"),
            "company": values.get("company"),
            "created_at": iso(ts),
        }
        self.data.contacts.append(record, ts)
        return JSONResponse(record, status_code=201), 1

    async def get_contact(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        return JSONResponse(find(self.data.contacts, request.path_params["id"], "contact")), 1

    async def update_contact(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        record_id = request.path_params["id"]
        find(self.data.contacts, record_id, "contact")
        values = self._contact_fields(await json_body(request), creating=False, record_id=record_id)
        return JSONResponse(self._rewrite(self.data.contacts, record_id, values)), 1

    async def delete_contact(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        find(self.data.contacts, request.path_params["id"], "contact")
        self.data.delete_contact(request.path_params["id"])
        return Response(status_code=204), 0

    # -- CRM deals -----------------------------------------------------------

    def _deal_fields(self, body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        only(body, DEAL_FIELDS, "deal")
        values: dict[str, Any] = {}
        if "name" in body or creating:
            values["name"] = text(body, "name", required=True)
        if "amount" in body:
            values["amount"] = amount(body, "amount")
        if "stage" in body or creating:
            stage = text(body, "stage") or "appointmentscheduled"
            if stage not in DEAL_STAGES:
                raise invalid("stage", f"must be one of {', '.join(DEAL_STAGES)}")
            values["stage"] = stage
        if body.get("contact_id") is not None:
            contact_id = text(body, "contact_id")
            if contact_id is not None and self.data.contacts.find(contact_id) is None:
                raise invalid("contact_id", f"there is no contact {contact_id}")
            values["contact_id"] = contact_id
        return values

    async def add_deal(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        values = self._deal_fields(await json_body(request), creating=True)
        record_id = f"d_{self.data.next_id('crm.deals', DEAL_COUNT * self.data.scale):03d}"
        ts = stamp(self.data.deals, self.sandbox.clock)
        record = {
            "id": record_id,
            "name": values["name"],
            "amount": values.get("amount") or 0.0,
            "stage": values["stage"],
            "contact_id": values.get("contact_id"),
            "created_at": iso(ts),
        }
        self.data.deals.append(record, ts)
        return JSONResponse(record, status_code=201), 1

    async def get_deal(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        return JSONResponse(find(self.data.deals, request.path_params["id"], "deal")), 1

    async def update_deal(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        record_id = request.path_params["id"]
        find(self.data.deals, record_id, "deal")
        values = self._deal_fields(await json_body(request), creating=False)
        return JSONResponse(self._rewrite(self.data.deals, record_id, values)), 1

    async def delete_deal(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_crm(request)
        find(self.data.deals, request.path_params["id"], "deal")
        self.data.deals.remove(request.path_params["id"])
        return Response(status_code=204), 0

    # -- accounting invoices -------------------------------------------------

    def _invoice_fields(self, body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        only(body, INVOICE_FIELDS, "invoice")
        values: dict[str, Any] = {}
        if "customer" in body or creating:
            values["customer"] = text(body, "customer", required=True)
        if "amount" in body or creating:
            total = amount(body, "amount", required=True)
            if total == 0:
                raise invalid("amount", "must be more than 0")
            values["amount"] = total
        if "currency" in body:
            currency = text(body, "currency")
            if currency is None or not re.fullmatch(r"[A-Z]{3}", currency):
                raise invalid("currency", "must be an ISO 4217 code such as EUR")
            values["currency"] = currency
        if "status" in body:
            status = text(body, "status")
            if status not in INVOICE_STATUSES:
                raise invalid("status", f"must be one of {', '.join(INVOICE_STATUSES)}")
            values["status"] = status
        if "issued_on" in body:
            issued = text(body, "issued_on")
            try:
                date.fromisoformat(issued or "")
            except ValueError:
                raise invalid("issued_on", "must be a date like 2026-01-31") from None
            values["issued_on"] = issued
        return values

    def _invoice_table(self, record_id: str) -> Table:
        for table in self.data.invoices.values():
            if table.find(record_id) is not None:
                return table
        raise WriteError(404, "not_found", f"There is no invoice {record_id}.")

    async def add_invoice(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_accounting(request)
        raw = request.path_params["code"]
        code = int(raw) if raw.isdigit() else -1
        table = self.data.invoices.get(code)
        if table is None:
            raise WriteError(404, "not_found", f"There is no division {raw}.")
        values = self._invoice_fields(await json_body(request), creating=True)
        n = self.data.next_id(f"accounting.invoices.{code}", INVOICES_PER_DIVISION * self.data.scale)
        ts = stamp(table, self.sandbox.clock)
        record = {
            "id": f"inv_{code}_{n:04d}",
            "division": code,
            "number": f"{code}-2026-{n:05d}",
            "customer": values["customer"],
            "amount": values["amount"],
            "currency": values.get("currency", "EUR"),
            "status": values.get("status", "draft"),
            "issued_on": values.get("issued_on", iso(int(self.sandbox.clock()))[:10]),
        }
        table.append(record, ts)
        return JSONResponse(record, status_code=201), 1

    async def get_invoice(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_accounting(request)
        record_id = request.path_params["id"]
        return JSONResponse(find(self._invoice_table(record_id), record_id, "invoice")), 1

    async def update_invoice(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_accounting(request)
        record_id = request.path_params["id"]
        table = self._invoice_table(record_id)
        values = self._invoice_fields(await json_body(request), creating=False)
        return JSONResponse(self._rewrite(table, record_id, values)), 1

    async def delete_invoice(self, request: Request) -> tuple[Response, int]:
        self.sandbox.require_accounting(request)
        record_id = request.path_params["id"]
        self._invoice_table(record_id)  # 404 when there is none
        self.data.delete_invoice(record_id, self.sandbox.clock())
        return Response(status_code=204), 0

    # -- shared --------------------------------------------------------------

    def _rewrite(self, table: Table, record_id: str, values: dict[str, Any]) -> Record:
        """Apply ``values`` and move the record to the end with a newer updated_at."""
        ts = stamp(table, self.sandbox.clock)
        record = table.remove(record_id)
        record.update(values)
        table.append(record, ts)
        return record
