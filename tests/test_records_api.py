"""Writeback over a connection (DESIGN §12): every action on each sandbox, errors, idempotency, refresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import BFF, auth, running_bff
from records_helpers import Customer, accounting, connect_chat, crm, customer, stats
from sync_helpers import all_rows, logs, tables

from bff.sandbox import SandboxOptions, create_sandbox_app
from bff.sandbox.data import make_contact
from bff.settings import Settings
from bff.testing import serve_in_thread


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory(sandbox_enabled=True)) as instance:
        yield instance


@pytest.fixture
async def who(sbff: BFF) -> Customer:
    return await customer(sbff)


def url(connection_id: int, rest: str) -> str:
    return f"/api/server/{connection_id}/{rest}"


async def test_objects_lists_actions_and_fields(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    body = (await sbff.client.get(url(cid, "objects"), headers=who.headers)).json()
    objects = {o["name"]: o for o in body["results"]}
    assert set(objects) == {"contact", "deal"} and body["count"] == 2
    contact = objects["contact"]
    assert set(contact["actions"]) == {"add", "update", "delete", "upsert", "get", "search"}
    assert contact["actions"]["add"]["required"] == ["email"]
    assert contact["actions"]["search"]["match_fields"] == ["email"]
    assert contact["actions"]["upsert"]["strategy"] == "search"
    assert [f["name"] for f in contact["fields"]] == ["email", "first_name", "last_name", "company"]
    assert contact["table"] == "contacts"


async def test_crm_contact_every_action(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    h = who.headers
    added = await sbff.client.post(
        url(cid, "records/contact"),
        json={"email": "john@acme.com", "first_name": "John", "last_name": "Doe"},
        headers=h,
    )
    assert added.status_code == 201, added.text
    new_id = added.json()["id"]
    assert new_id == "c_1251" and added.json()["record"]["email"] == "john@acme.com"

    got = await sbff.client.get(url(cid, f"records/contact/{new_id}"), headers=h)
    assert got.status_code == 200 and got.json() == {
        "id": new_id,
        "record": added.json()["record"] | {"updated_at": got.json()["record"]["updated_at"]},
    }

    updated = await sbff.client.patch(url(cid, f"records/contact/{new_id}"), json={"company": "Acme"}, headers=h)
    assert updated.status_code == 200 and updated.json()["record"]["company"] == "Acme"

    found = (await sbff.client.get(url(cid, "records/contact?email=JOHN@acme.com"), headers=h)).json()
    assert found["count"] == 1 and found["results"][0]["id"] == new_id

    upsert_update = await sbff.client.put(
        url(cid, "records/contact?match=email"), json={"email": "john@acme.com", "last_name": "Doe-Smith"}, headers=h
    )
    assert upsert_update.status_code == 200 and upsert_update.json()["id"] == new_id
    assert upsert_update.json()["record"]["last_name"] == "Doe-Smith"
    upsert_create = await sbff.client.put(
        url(cid, "records/contact?match=email"), json={"email": "jane@acme.com"}, headers=h
    )
    assert upsert_create.status_code == 201 and upsert_create.json()["id"] == "c_1252"

    deleted = await sbff.client.delete(url(cid, f"records/contact/{new_id}"), headers=h)
    assert deleted.status_code == 204 and deleted.content == b""
    gone = await sbff.client.get(url(cid, f"records/contact/{new_id}"), headers=h)
    assert gone.status_code == 422 and gone.json()["code"] == "provider_rejected"
    assert gone.json()["errors"]["provider_status"] == "404"


async def test_crm_deal_add_update_delete(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    h = who.headers
    added = await sbff.client.post(
        url(cid, "records/deal"), json={"name": "Big one", "amount": 1200.5, "contact_id": "c_0001"}, headers=h
    )
    assert added.status_code == 201 and added.json()["record"]["stage"] == "appointmentscheduled"
    deal_id = added.json()["id"]
    bad_stage = await sbff.client.patch(url(cid, f"records/deal/{deal_id}"), json={"stage": "won"}, headers=h)
    assert bad_stage.status_code == 422 and "stage" in bad_stage.json()["errors"]["provider_message"]
    ok = await sbff.client.patch(url(cid, f"records/deal/{deal_id}"), json={"stage": "closedwon"}, headers=h)
    assert ok.status_code == 200 and ok.json()["record"]["stage"] == "closedwon"
    assert (await sbff.client.delete(url(cid, f"records/deal/{deal_id}"), headers=h)).status_code == 204


async def test_validation_happens_before_any_provider_call(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    before = await stats(sbff)
    missing = await sbff.client.post(url(cid, "records/contact"), json={"first_name": "No mail"}, headers=who.headers)
    assert missing.status_code == 400 and missing.json()["code"] == "validation_error"
    assert missing.json()["errors"] == {"email": "This field is required."}
    unknown = await sbff.client.post(
        url(cid, "records/contact"), json={"email": "a@b.co", "shoe_size": 44}, headers=who.headers
    )
    assert unknown.status_code == 400 and "shoe_size" in unknown.json()["errors"]
    wrong_type = await sbff.client.post(
        url(cid, "records/deal"), json={"name": "x", "amount": "lots"}, headers=who.headers
    )
    assert wrong_type.status_code == 400 and wrong_type.json()["errors"] == {"amount": "Must be a number."}
    bad_search = await sbff.client.get(url(cid, "records/contact?company=Acme"), headers=who.headers)
    assert bad_search.status_code == 400 and "company" in bad_search.json()["errors"]
    no_match = await sbff.client.put(url(cid, "records/contact"), json={"email": "a@b.co"}, headers=who.headers)
    assert no_match.status_code == 400 and "match" in no_match.json()["errors"]
    assert (await stats(sbff))["calls"] == before["calls"]


async def test_unknown_object_or_action_is_404(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    nope = await sbff.client.post(url(cid, "records/invoice"), json={"x": 1}, headers=who.headers)
    assert nope.status_code == 404 and nope.json()["code"] == "object_not_supported"
    chat = int((await connect_chat(sbff, who))["id"])
    no_delete = await sbff.client.delete(url(chat, "records/message/m_0001"), headers=who.headers)
    assert no_delete.status_code == 404 and no_delete.json()["code"] == "object_not_supported"


async def test_provider_validation_errors_become_422_with_the_message(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    bad = await sbff.client.post(url(cid, "records/contact"), json={"email": "not-an-address"}, headers=who.headers)
    assert bad.status_code == 422 and bad.json()["code"] == "provider_rejected"
    assert bad.json()["errors"]["provider_status"] == "400"
    assert "not a valid e-mail address" in bad.json()["errors"]["provider_message"]
    dupe = await sbff.client.post(
        url(cid, "records/contact"), json={"email": make_contact(1)[0]["email"]}, headers=who.headers
    )
    assert dupe.status_code == 422 and dupe.json()["errors"]["provider_status"] == "409"


async def test_accounting_invoices_per_division(sbff: BFF, who: Customer) -> None:
    cid = await accounting(sbff, who)
    h = who.headers
    added = await sbff.client.post(
        url(cid, "records/invoice"), json={"division": 102, "customer": "Wood Solutions", "amount": 99.95}, headers=h
    )
    assert added.status_code == 201, added.text
    record = added.json()["record"]
    assert added.json()["id"] == "inv_102_0501" and record["division"] == 102 and "division" in record
    assert record["status"] == "draft" and record["currency"] == "EUR"
    no_division = await sbff.client.post(url(cid, "records/invoice"), json={"customer": "x", "amount": 1}, headers=h)
    assert no_division.status_code == 400 and no_division.json()["errors"] == {"division": "This field is required."}
    zero = await sbff.client.post(
        url(cid, "records/invoice"), json={"division": 101, "customer": "x", "amount": 0}, headers=h
    )
    assert zero.status_code == 422 and "amount" in zero.json()["errors"]["provider_message"]
    paid = await sbff.client.patch(url(cid, "records/invoice/inv_102_0501"), json={"status": "paid"}, headers=h)
    assert paid.status_code == 200 and paid.json()["record"]["status"] == "paid"
    got = await sbff.client.get(url(cid, "records/invoice/inv_102_0501"), headers=h)
    assert got.json()["record"]["status"] == "paid"
    assert (await sbff.client.delete(url(cid, "records/invoice/inv_102_0501"), headers=h)).status_code == 204


async def test_chat_message_add(sbff: BFF, who: Customer) -> None:
    cid = int((await connect_chat(sbff, who))["id"])
    sent = await sbff.client.post(
        url(cid, "records/message"), json={"channel": "QA", "text": "Data quality alert"}, headers=who.headers
    )
    assert sent.status_code == 201 and sent.json()["record"]["channel"] == "ch_qa"
    assert sent.json()["record"]["text"] == "Data quality alert"
    nowhere = await sbff.client.post(
        url(cid, "records/message"), json={"channel": "#nope", "text": "x"}, headers=who.headers
    )
    assert nowhere.status_code == 422 and "no channel" in nowhere.json()["errors"]["provider_message"]
    got = await sbff.client.get(url(cid, f"records/message/{sent.json()['id']}"), headers=who.headers)
    assert got.json()["record"]["text"] == "Data quality alert"


async def test_integrate_token_is_not_allowed(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    for method, path in (("GET", "objects"), ("POST", "records/contact"), ("GET", "proxy/me")):
        answer = await sbff.client.request(
            method, url(cid, path), json={"email": "a@b.co"}, headers=auth(who.integrate)
        )
        assert answer.status_code == 403 and answer.json()["code"] == "token_not_allowed", (method, path)


async def test_other_customers_connections_are_404(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    other = await customer(sbff, "cust-2")
    answer = await sbff.client.post(url(cid, "records/contact"), json={"email": "a@b.co"}, headers=other.headers)
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


async def test_disabled_and_unauthorised_connections_are_409(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    await sbff.services.store.connections.update(cid, health_status="DISABLED")
    disabled = await sbff.client.post(url(cid, "records/contact"), json={"email": "a@b.co"}, headers=who.headers)
    assert disabled.status_code == 409 and disabled.json()["code"] == "connection_disabled"
    await sbff.services.store.connections.update(cid, health_status="HEALTHY")
    assert (await sbff.client.post("/sandbox/_control/revoke", json={"provider": "crm"})).status_code == 200
    refused = await sbff.client.post(url(cid, "records/contact"), json={"email": "a@b.co"}, headers=who.headers)
    assert refused.status_code == 409 and refused.json()["code"] == "connection_unauthorised"
    health = (await sbff.client.get(url(cid, "health"), headers=who.headers)).json()
    assert health["health_status"] == "ERROR"


async def test_idempotency_key_replays_without_a_second_call(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    h = {**who.headers, "Idempotency-Key": "order-42"}
    first = await sbff.client.post(url(cid, "records/contact"), json={"email": "once@acme.com"}, headers=h)
    calls = (await stats(sbff))["requests"]["crm.contacts.write"]
    again = await sbff.client.post(url(cid, "records/contact"), json={"email": "once@acme.com"}, headers=h)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert (await stats(sbff))["requests"]["crm.contacts.write"] == calls == 1
    reused = await sbff.client.post(url(cid, "records/contact"), json={"email": "other@acme.com"}, headers=h)
    assert reused.status_code == 409 and reused.json()["code"] == "idempotency_key_reused"
    # Per connection: the same key on another connection is a new request.
    cid2 = await crm(sbff, who)
    elsewhere = await sbff.client.post(url(cid2, "records/contact"), json={"email": "once@acme.com"}, headers=h)
    assert elsewhere.status_code == 422  # a new call: the sandbox already has that e-mail
    # A rejected answer is kept too; a validation error (no provider call) is not.
    h2 = {**who.headers, "Idempotency-Key": "bad-1"}
    bad = await sbff.client.post(url(cid, "records/contact"), json={"email": "broken"}, headers=h2)
    replay = await sbff.client.post(url(cid, "records/contact"), json={"email": "broken"}, headers=h2)
    assert bad.status_code == replay.status_code == 422 and replay.headers["idempotent-replayed"] == "true"


async def test_writes_are_logged_without_field_values(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    await sbff.client.post(url(cid, "records/contact"), json={"email": "secret-person@acme.com"}, headers=who.headers)
    await sbff.client.post(url(cid, "records/contact"), json={"email": "invalid"}, headers=who.headers)
    await sbff.services.writeback.log.flush()  # log lines are stored in batches, off the request path
    lines = [entry["message"] for entry in await logs(sbff, who.integrate, cid)]
    assert "Writeback: add contact → 201." in lines and "Writeback: add contact → 422." in lines
    assert not any("secret-person" in line or "invalid" in line for line in lines)


async def test_refresh_after_five_writes_gives_one_sync_and_the_rows(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    runner = sbff.services.sync
    for i in range(5):
        answer = await sbff.client.post(
            url(cid, "records/contact?refresh=true"), json={"email": f"r{i}@acme.com"}, headers=who.headers
        )
        assert answer.status_code == 201 and answer.json()["refresh_queued"] is True
    writeback = sbff.services.writeback
    await writeback.refresh.idle()
    await runner.wait(cid)
    runs = (await sbff.client.get(url(cid, "runs"), headers=who.headers)).json()
    assert runs["count"] == 1 and runs["results"][0]["status"] == "succeeded"
    assert runs["results"][0]["tables"] == ["contacts"]
    contacts = (await tables(sbff.client, who.identity))["contacts"]
    emails = {row["email"] for row in await all_rows(sbff.client, who.identity, contacts["id"])}
    assert {f"r{i}@acme.com" for i in range(5)} <= emails and len(emails) == 1255


async def test_refresh_coalesces_across_two_app_instances(settings_factory: Callable[..., Settings]) -> None:
    """Two web processes on one database (with their workers), one provider: five refresh=true
    writes spread over both still give exactly one sync, and it sees every written message."""
    with serve_in_thread(create_sandbox_app(SandboxOptions.from_env({"BFF_SANDBOX_CONTROLS": "open"}))) as sandbox:
        settings = settings_factory(sandbox_enabled=True, sandbox_external_url=sandbox)
        async with running_bff(settings) as one, running_bff(settings) as two:
            who = await customer(one)
            cid = int((await connect_chat(one, who))["id"])
            for i in range(5):
                instance = (one, two)[i % 2]
                answer = await instance.client.post(
                    url(cid, "records/message?refresh=true"),
                    json={"channel": "general", "text": f"refresh {i}"},
                    headers=who.headers,
                )
                assert answer.status_code == 201 and answer.json()["refresh_queued"] is True, answer.text
            await two.services.writeback.refresh.idle(cid)  # waits for jobs of every process
            await one.services.sync.wait(cid)
            runs = (await one.client.get(url(cid, "runs"), headers=who.headers)).json()
            assert runs["count"] == 1 and runs["results"][0]["status"] == "succeeded", runs
            assert runs["results"][0]["tables"] == ["messages"]
            messages = (await tables(two.client, who.identity))["messages"]
            texts = {row["text"] for row in await all_rows(two.client, who.identity, messages["id"])}
            assert {f"refresh {i}" for i in range(5)} <= texts


@pytest.fixture
async def limited(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    settings = settings_factory(sandbox_enabled=True, sandbox_env={"BFF_SANDBOX_429_EVERY": "1"})
    async with running_bff(settings) as instance:
        yield instance


async def test_timeout_true_gives_up_after_two_retries(limited: BFF) -> None:
    who = await customer(limited)
    # Every call is rate limited, so connecting (which tests the key) would fail: store the connection directly.
    cid = await _chat_connection(limited, who)
    await limited.client.post("/sandbox/_control/reset-stats")
    started = time.monotonic()
    answer = await limited.client.post(
        url(cid, "records/message?timeout=true"), json={"channel": "qa", "text": "hi"}, headers=who.headers
    )
    took = time.monotonic() - started
    assert answer.status_code == 429 and answer.json()["code"] == "provider_rate_limited"
    assert answer.headers["retry-after"] == "1"
    assert took < 30
    assert (await stats(limited))["calls"] == 3  # the call and 2 retries

    await limited.client.post("/sandbox/_control/reset-stats")
    patient = asyncio.create_task(
        limited.client.post(url(cid, "records/message"), json={"channel": "qa", "text": "hi"}, headers=who.headers)
    )
    await asyncio.sleep(3.6)
    assert not patient.done() and (await stats(limited))["calls"] >= 4  # the default policy keeps trying
    patient.cancel()


async def _chat_connection(bff: BFF, who: Customer) -> int:
    from bff import connections as rt
    from bff.lifecycle import Health

    svc = bff.services
    connection = await svc.store.connections.create(
        who.account_id, "sandbox_chat", "Sandbox Chat", health_status=Health.OK
    )
    await rt.save_secrets(svc, connection.id, rt.Secrets({"api_key": "sandbox-chat-key"}))
    return int(connection.id)


@pytest.fixture
async def failing(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    env = {"BFF_SANDBOX_FAIL_EVERY": "1", "BFF_SANDBOX_FAIL_MATCH": "/chat/api/messages"}
    async with running_bff(settings_factory(sandbox_enabled=True, sandbox_env=env)) as instance:
        yield instance


async def test_provider_5xx_past_the_budget_is_502_and_frees_the_idempotency_key(failing: BFF) -> None:
    who = await customer(failing)
    cid = int((await connect_chat(failing, who))["id"])
    h = {**who.headers, "Idempotency-Key": "retry-me"}
    broken = await failing.client.post(
        url(cid, "records/message?timeout=true"), json={"channel": "qa", "text": "x"}, headers=h
    )
    assert broken.status_code == 502 and broken.json()["code"] == "provider_error"
    assert (await stats(failing))["requests"]["chat.messages.write"] == 2  # the call and the short policy's one retry
    again = await failing.client.post(
        url(cid, "records/message?timeout=true"), json={"channel": "qa", "text": "x"}, headers=h
    )
    assert again.status_code == 502 and "idempotent-replayed" not in again.headers  # tried again, not replayed


async def test_error_mapping_of_the_retry_policy() -> None:
    from bff.connectors import ConfigRequired, RetriesExhausted
    from bff.errors import connector_error

    timeout = connector_error(RetriesExhausted("gave up", cause="timeout"))
    assert (timeout.status, timeout.code) == (504, "provider_timeout")
    limited = connector_error(RetriesExhausted("gave up", cause="rate_limited", retry_after="7"))
    assert (limited.status, limited.code, limited.headers) == (429, "provider_rate_limited", {"Retry-After": "7"})
    connection = connector_error(RetriesExhausted("gave up", cause="connection"))
    assert (connection.status, connection.code) == (502, "provider_error")
    assert connector_error(ConfigRequired("choose")).code == "connection_not_ready"


async def test_idempotency_key_rules(sbff: BFF, who: Customer) -> None:
    cid = await crm(sbff, who)
    long_key = await sbff.client.post(
        url(cid, "records/contact"), json={"email": "a@b.co"}, headers={**who.headers, "Idempotency-Key": "k" * 256}
    )
    assert long_key.status_code == 400 and "Idempotency-Key" in long_key.json()["errors"]
    invalid = await sbff.client.post(
        url(cid, "records/contact"), json={"first_name": "x"}, headers={**who.headers, "Idempotency-Key": "v-1"}
    )
    assert invalid.status_code == 400
    fixed = await sbff.client.post(
        url(cid, "records/contact"), json={"email": "fixed@acme.com"}, headers={**who.headers, "Idempotency-Key": "v-1"}
    )
    assert fixed.status_code == 201  # a validation error never used the key up


async def test_idempotency_store_reservations_and_expiry(sbff: BFF, who: Customer) -> None:
    from bff.idempotency import KEY_TTL, STALE_RESERVATION, StoredAnswer
    from bff.store.idempotency import PgIdempotencyStore

    cid = await crm(sbff, who)
    now = [1_900_000_000.0]
    keys = PgIdempotencyStore(sbff.services.store, clock=lambda: now[0])
    assert (await keys.begin(cid, "k", "f1")).reserved
    assert (await keys.begin(cid, "k", "f1")).in_use  # the first request is still running
    assert (await keys.begin(cid, "k", "f2")).reused
    now[0] += STALE_RESERVATION + 1
    assert (await keys.begin(cid, "k", "f1")).reserved  # taken over from a request that died
    await keys.finish(cid, "k", StoredAnswer(201, {"id": "c_1"}))
    replay = (await keys.begin(cid, "k", "f1")).replay
    assert replay is not None and replay.status == 201 and replay.body == {"id": "c_1"}
    now[0] += KEY_TTL + 1
    assert (await keys.begin(cid, "k", "f1")).reserved  # forgotten after 24 hours
    await keys.release(cid, "k")
    assert (await keys.begin(cid, "k", "f9")).reserved
