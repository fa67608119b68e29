"""The writer against the real connectors' documented requests and answers (mock transports).

Each test pins the exact method, URL, headers and body the provider documents
(pages cited in the definitions' ``docs``), and reads ids from the documented answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from bff.connectors import ConnectorSession, OAuthTokens, ProviderRejected, RetryPolicy, load_connectors
from bff.connectors.writer import FieldErrors, ObjectNotSupported, UpsertAmbiguous, Writer, encode_form

pytestmark = pytest.mark.asyncio

Handler = Callable[[httpx.Request], httpx.Response]
TOKENS = OAuthTokens(access_token="at-123456", refresh_token="rt-123456", expires_at=None)


def writer(
    name: str, handler: Handler, credentials: dict[str, str] | None = None, seen: list[httpx.Request] | None = None
) -> Writer:
    def record(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return handler(request)

    connector = load_connectors()[name]
    session = ConnectorSession(
        connector,
        http=httpx.AsyncClient(transport=httpx.MockTransport(record)),
        credentials=credentials or {},
        config={},
        context={"sandbox": "http://bff.test/sandbox"},
        policy=RetryPolicy.short(),
        tokens=TOKENS if connector.auth_type == "oauth2" else None,
    )
    return Writer(session)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


async def test_hubspot_contact_add_update_delete_search_upsert() -> None:
    seen: list[httpx.Request] = []

    def hubspot(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/crm/v3/objects/contacts":
            return httpx.Response(201, json={"id": "512", "properties": body(request)["properties"], "archived": False})
        if request.method == "PATCH":
            return httpx.Response(200, json={"id": path.rsplit("/", 1)[1], "properties": body(request)["properties"]})
        if request.method == "DELETE":
            return httpx.Response(204)
        if path == "/crm/v3/objects/contacts/search":
            email = body(request)["filterGroups"][0]["filters"][0]["value"]
            hits = [{"id": "512", "properties": {"email": email}}] if email == "john@acme.com" else []
            return httpx.Response(200, json={"total": len(hits), "results": hits})
        return httpx.Response(
            404, json={"status": "error", "message": "Object not found.", "category": "OBJECT_NOT_FOUND"}
        )

    w = writer("hubspot", hubspot, seen=seen)
    added = await w.add("contact", {"email": "john@acme.com", "firstname": "John", "lastname": "Doe"})
    assert (added.created, added.id) == (True, "512")
    request = seen[-1]
    assert request.method == "POST" and str(request.url) == "https://api.hubapi.com/crm/v3/objects/contacts"
    assert (
        request.headers["authorization"] == "Bearer at-123456" and request.headers["content-type"] == "application/json"
    )
    assert body(request) == {"properties": {"email": "john@acme.com", "firstname": "John", "lastname": "Doe"}}

    await w.update("contact", "512", {"company": "Acme"})
    assert seen[-1].method == "PATCH" and seen[-1].url.path == "/crm/v3/objects/contacts/512"
    assert body(seen[-1]) == {"properties": {"company": "Acme"}}

    deleted = await w.delete("contact", "512")
    assert (
        not deleted.created
        and deleted.record is None
        and seen[-1].method == "DELETE"
        and seen[-1].url.path == "/crm/v3/objects/contacts/512"
    )

    found = await w.search("contact", {"email": "john@acme.com"})
    assert found == [{"id": "512", "properties": {"email": "john@acme.com"}}]
    assert seen[-1].method == "POST" and seen[-1].url.path == "/crm/v3/objects/contacts/search"
    assert body(seen[-1])["filterGroups"] == [
        {"filters": [{"propertyName": "email", "operator": "EQ", "value": "john@acme.com"}]}
    ]

    updated = await w.upsert("contact", {"email": "john@acme.com", "lastname": "Smith"}, "email")
    assert not updated.created and seen[-1].method == "PATCH" and seen[-1].url.path.endswith("/512")
    created = await w.upsert("contact", {"email": "new@acme.com"}, "email")
    assert created.created and seen[-1].method == "POST" and seen[-1].url.path == "/crm/v3/objects/contacts"

    with pytest.raises(ProviderRejected) as info:
        await w.get("contact", "999")
    assert info.value.status == 404 and info.value.message == "Object not found."
    assert seen[-1].url.params["properties"] == "email,firstname,lastname,company,phone"


async def test_pipedrive_person() -> None:
    seen: list[httpx.Request] = []

    def pipedrive(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"success": True, "data": {"id": 77, **body(request)}})
        if request.method == "PUT":
            return httpx.Response(200, json={"success": True, "data": {"id": 77, "name": body(request)["name"]}})
        if request.url.path.endswith("/persons/search"):
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "data": {
                        "items": [
                            {
                                "result_score": 1.0,
                                "item": {"id": 77, "type": "person", "name": "John Doe", "emails": ["john@acme.com"]},
                            },
                            {
                                "result_score": 0.9,
                                "item": {"id": 78, "type": "person", "name": "John Doe", "emails": ["john@acme.com"]},
                            },
                        ]
                    },
                },
            )
        return httpx.Response(400, json={"success": False, "error": "Name must be given."})

    w = writer("pipedrive", pipedrive, {"company_domain": "acme", "api_token": "pd-token-1"}, seen)
    added = await w.add("person", {"name": "John Doe", "email": "john@acme.com"})
    assert (added.created, added.id) == (True, "77") and added.record["name"] == "John Doe"
    r = seen[-1]
    assert str(r.url) == "https://acme.pipedrive.com/api/v1/persons" and r.method == "POST"
    assert r.headers["x-api-token"] == "pd-token-1" and body(r) == {"name": "John Doe", "email": "john@acme.com"}
    await w.update("person", "77", {"name": "Jane"})
    assert seen[-1].method == "PUT" and seen[-1].url.path == "/api/v1/persons/77"
    found = await w.search("person", {"email": "john@acme.com"})
    assert [p["id"] for p in found] == [77, 78]
    assert dict(seen[-1].url.params) == {"term": "john@acme.com", "fields": "email", "exact_match": "true"}
    with pytest.raises(UpsertAmbiguous):
        await w.upsert("person", {"name": "John Doe", "email": "john@acme.com"}, "email")
    with pytest.raises(FieldErrors) as missing:
        await w.add("person", {"email": "x@y.z"})
    assert missing.value.errors == {"name": "This field is required."}


async def test_stripe_customer_is_form_encoded() -> None:
    seen: list[httpx.Request] = []

    def stripe(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": "cus_1", "object": "customer", "deleted": True})
        if request.method == "GET":
            data = [{"id": "cus_1", "object": "customer", "email": request.url.params["email"]}]
            return httpx.Response(200, json={"object": "list", "data": data, "has_more": False})
        if request.url.path == "/v1/customers/cus_missing":
            return httpx.Response(
                404, json={"error": {"type": "invalid_request_error", "message": "No such customer: 'cus_missing'"}}
            )
        return httpx.Response(200, json={"id": "cus_1", "object": "customer", "email": "john@acme.com"})

    w = writer("stripe", stripe, {"secret_key": "sk_test_abcdef"}, seen)
    added = await w.add(
        "customer", {"email": "john@acme.com", "name": "John Doe", "metadata": {"external_id": "wood_123"}}
    )
    assert added.id == "cus_1"
    r = seen[-1]
    assert r.method == "POST" and str(r.url) == "https://api.stripe.com/v1/customers"
    assert (
        r.headers["content-type"] == "application/x-www-form-urlencoded"
        and r.headers["authorization"] == "Bearer sk_test_abcdef"
    )
    assert parse_qsl(r.content.decode()) == [
        ("email", "john@acme.com"),
        ("name", "John Doe"),
        ("metadata[external_id]", "wood_123"),
    ]
    await w.update("customer", "cus_1", {"description": "VIP"})
    assert (
        seen[-1].method == "POST"
        and seen[-1].url.path == "/v1/customers/cus_1"
        and seen[-1].content == b"description=VIP"
    )
    assert (await w.delete("customer", "cus_1")).record is None and seen[-1].method == "DELETE"
    assert (await w.search("customer", {"email": "john@acme.com"}))[0]["id"] == "cus_1"
    assert seen[-1].url.path == "/v1/customers" and seen[-1].url.params["email"] == "john@acme.com"
    with pytest.raises(ProviderRejected) as info:
        await w.update("customer", "cus_missing", {"name": "x"})
    assert info.value.message == "No such customer: 'cus_missing'"


async def test_slack_post_message() -> None:
    seen: list[httpx.Request] = []

    def slack(request: httpx.Request) -> httpx.Response:
        sent = body(request)
        if sent["channel"] == "#nowhere":
            return httpx.Response(200, json={"ok": False, "error": "channel_not_found"})
        return httpx.Response(
            200,
            json={
                "ok": True,
                "channel": "C123",
                "ts": "1503435956.000247",
                "message": {"text": sent["text"], "type": "message", "ts": "1503435956.000247"},
            },
        )

    w = writer("slack", slack, seen=seen)
    sent = await w.add("message", {"channel": "QA", "text": "Data quality alert"})
    assert (sent.created, sent.id) == (True, "1503435956.000247")
    r = seen[-1]
    assert r.method == "POST" and str(r.url) == "https://slack.com/api/chat.postMessage"
    assert r.headers["authorization"] == "Bearer at-123456" and body(r) == {
        "channel": "QA",
        "text": "Data quality alert",
    }
    with pytest.raises(ProviderRejected) as info:
        await w.add("message", {"channel": "#nowhere", "text": "x"})
    assert info.value.message == "channel_not_found"
    with pytest.raises(ObjectNotSupported):
        await w.delete("message", "1503435956.000247")


async def test_exact_online_sales_invoice_add() -> None:
    seen: list[httpx.Request] = []

    def exact(request: httpx.Request) -> httpx.Response:
        sent = body(request)
        if not sent.get("SalesInvoiceLines"):
            return httpx.Response(
                400, json={"error": {"code": "", "message": {"lang": "", "value": "Mandatory: Lines"}}}
            )
        return httpx.Response(
            201, json={"d": {"InvoiceID": "a1b2c3d4-0000-0000-0000-000000000001", "InvoiceNumber": 25000001, **sent}}
        )

    w = writer("exact_online", exact, credentials={"country": "nl", "starting_year": "2024"}, seen=seen)
    fields = {
        "division": 3200000,
        "OrderedBy": "b7c2…",
        "Journal": "70",
        "SalesInvoiceLines": [{"Item": "9a8b…", "Quantity": 2}],
    }
    added = await w.add("sales_invoice", fields)
    assert (added.created, added.id) == (True, "a1b2c3d4-0000-0000-0000-000000000001")
    r = seen[-1]
    assert r.method == "POST" and str(r.url) == "https://start.exactonline.nl/api/v1/3200000/salesinvoice/SalesInvoices"
    assert r.headers["accept"] == "application/json" and r.headers["content-type"] == "application/json"
    assert body(r) == {"OrderedBy": "b7c2…", "Journal": "70", "SalesInvoiceLines": [{"Item": "9a8b…", "Quantity": 2}]}
    with pytest.raises(ProviderRejected) as info:
        await w.add("sales_invoice", {**fields, "SalesInvoiceLines": []})
    assert info.value.message == "Mandatory: Lines"


async def test_encode_form_nests_like_stripe() -> None:
    assert encode_form({"a": 1, "b": True, "m": {"k": "v"}, "l": ["x", {"p": 2}], "n": None}) == (
        "a=1&b=true&m%5Bk%5D=v&l%5B0%5D=x&l%5B1%5D%5Bp%5D=2&n="
    )


async def test_secrets_are_scrubbed_from_provider_messages() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"message": "bad token sk_test_abcdef in request"})

    w = writer("stripe", echo, {"secret_key": "sk_test_abcdef"})
    with pytest.raises(ProviderRejected) as info:
        await w.add("customer", {"email": "a@b.co"})
    assert "sk_test_abcdef" not in str(info.value) and "***" in (info.value.message or "")


async def test_slack_auth_errors_in_a_200_mean_rejected_credentials() -> None:
    from bff.connectors import CredentialsRejected

    def slack(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": False, "error": "token_revoked"})

    w = writer("slack", slack)
    with pytest.raises(CredentialsRejected):
        await w.add("message", {"channel": "QA", "text": "x"})
