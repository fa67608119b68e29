"""Webhooks to the partner (DESIGN §11), delivered to a real HTTP receiver and verified with the
``standardwebhooks`` package (an independent implementation of the standard)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from conftest import BFF, auth, running_bff
from sandbox_flows import connect_bank
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bff.settings import Settings
from bff.testing import serve_in_thread
from bff.webhooks import BACKOFF_SECONDS, RetryDecision, pinned_request, sign


@dataclasses.dataclass
class Receiver:
    """A partner's endpoint: records every request; answers 500 ``fail`` times, or hangs."""

    fail: int = 0
    hang: bool = False
    requests: list[tuple[dict[str, str], bytes]] = dataclasses.field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        if self.hang:  # past the BFF's 10 s limit, and no longer: stopping the server waits for it
            await asyncio.sleep(12.5)
        if self.fail > 0:
            self.fail -= 1
            return Response("boom", status_code=500)
        return Response(status_code=204)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@contextlib.contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    app = Starlette(routes=[Route("/hooks", receiver.endpoint, methods=["POST"])])
    with serve_in_thread(app) as base:
        yield f"{base}/hooks"


@pytest.fixture
async def wbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    settings = settings_factory(sandbox_enabled=True, webhook_allow_private=True)
    async with running_bff(settings) as bff:
        yield bff


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def verify(secret: str, headers: dict[str, str], body: bytes) -> Any:
    return Webhook(secret).verify(body, headers)


async def configure(bff: BFF, partner_token: str, url: str, **body: Any) -> dict[str, Any]:
    answer = await bff.client.put("/api/partner/webhook", json={"url": url, **body}, headers=auth(partner_token))
    assert answer.status_code in (200, 201), answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_failing_twice_then_ok_gives_three_attempts_with_one_webhook_id(wbff: BFF, monkeypatch: Any) -> None:
    monkeypatch.setattr("bff.webhooks.BACKOFF_SECONDS", (0.2, 0.2, 1, 1, 1, 1))
    receiver = Receiver(fail=2)
    with receiving(receiver) as url:
        _, partner_token = await wbff.partner("hooks")
        created = await configure(wbff, partner_token, url, events=["connection.created"])
        assert created["secret"].startswith("whsec_") and created["events"] == ["connection.created"]
        minted = await wbff.integrate(partner_token, "cust-9")
        connection = await connect_bank(wbff.client, minted["token"])
        await until(lambda: len(receiver.requests) == 3)
        ids = {headers["webhook-id"] for headers, _ in receiver.requests}
        assert len(ids) == 1
        for headers, body in receiver.requests:
            verify(created["secret"], headers, body)
        event = receiver.events()[-1]
        assert event["type"] == "connection.created"
        assert event["data"]["server_id"] == connection["id"]
        assert event["data"]["account_id"] == minted["account_id"] and event["data"]["external_id"] == "cust-9"

        deliveries = (await wbff.client.get("/api/partner/webhook/deliveries", headers=auth(partner_token))).json()
        assert deliveries["count"] == 1
        delivery = deliveries["results"][0]
        assert delivery["status"] == "delivered" and delivery["webhook_id"] in ids
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 204]


async def test_tampered_body_fails_verification_and_rotated_secret_is_used_at_once(wbff: BFF) -> None:
    receiver = Receiver()
    with receiving(receiver) as url:
        _, partner_token = await wbff.partner("hooks")
        first = await configure(wbff, partner_token, url)
        again = await configure(wbff, partner_token, url, events=["connection.created", "connection.deleted"])
        assert "secret" not in again  # shown on creation and rotation only
        shown = (await wbff.client.get("/api/partner/webhook", headers=auth(partner_token))).json()
        assert "secret" not in shown and shown["url"] == url
        minted = await wbff.integrate(partner_token, "cust-1")
        await connect_bank(wbff.client, minted["token"])
        await until(lambda: len(receiver.requests) == 1)
        headers, body = receiver.requests[0]
        verify(first["secret"], headers, body)
        with pytest.raises(WebhookVerificationError):
            verify(first["secret"], headers, body.replace(b"cust-1", b"cust-2"))

        rotated = (await wbff.client.post("/api/partner/webhook/rotate-secret", headers=auth(partner_token))).json()
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != first["secret"]
        second = await connect_bank(wbff.client, minted["token"])
        deleted = await wbff.client.delete(f"/api/server/{second['id']}", headers=auth(minted["token"]))
        assert deleted.status_code == 204
        await until(lambda: len(receiver.requests) == 3)
        for headers, body in receiver.requests[1:]:
            verify(rotated["secret"], headers, body)
            with pytest.raises(WebhookVerificationError):
                verify(first["secret"], headers, body)
        assert [e["type"] for e in receiver.events()] == [
            "connection.created",
            "connection.created",
            "connection.deleted",
        ]
        assert receiver.events()[2]["data"]["server_id"] == second["id"]


async def test_health_changes_and_sync_finished_events(wbff: BFF) -> None:
    receiver = Receiver()
    with receiving(receiver) as url:
        _, partner_token = await wbff.partner("hooks")
        secret = (await configure(wbff, partner_token, url, events=["connection.health_changed", "sync.finished"]))[
            "secret"
        ]
        minted = await wbff.integrate(partner_token, "cust-1")
        connection = await connect_bank(wbff.client, minted["token"])
        answer = await wbff.client.post(f"/api/server/{connection['id']}/sync?wait=60", headers=auth(minted["token"]))
        assert answer.status_code == 200, answer.text
        run_id = answer.json()["run"]["id"]
        await until(lambda: len(receiver.requests) == 2)
        for headers, body in receiver.requests:
            verify(secret, headers, body)
        by_type = {e["type"]: e for e in receiver.events()}
        assert by_type["connection.health_changed"]["data"] | {"name": None} == {
            "server_id": connection["id"],
            "from": "OK",
            "to": "HEALTHY",
            "detail": None,
            "connector": "sandbox_bank",
            "name": None,
            "account_id": minted["account_id"],
            "external_id": "cust-1",
        }
        finished = by_type["sync.finished"]["data"]
        assert finished["pipeline_run_id"] == run_id and finished["status"] == "succeeded"
        assert finished["records"] == {"transactions": 200} and finished["error"] is None
        assert finished["server_id"] == connection["id"] and finished["external_id"] == "cust-1"


async def test_private_addresses_are_refused_unless_allowed(settings_factory: Callable[..., Settings]) -> None:
    receiver = Receiver()
    with receiving(receiver) as url:
        async with running_bff(settings_factory()) as bff:
            partner_id, partner_token = await bff.partner("hooks")
            await configure(bff, partner_token, url)
            delivery = await bff.services.webhooks.emit(partner_id, "connection.created", {"server_id": 1})
            await until_attempted(bff, delivery.id)
            deliveries = (await bff.client.get("/api/partner/webhook/deliveries", headers=auth(partner_token))).json()
            assert deliveries["results"][0]["status"] == "retrying"
            attempt = deliveries["results"][0]["attempts"][0]
            assert attempt["status_code"] is None and "loopback" in attempt["error"]
            assert receiver.requests == []
            for bad in ("ftp://example.com/x", "http://user:pw@example.com/", "not a url", "https://"):
                answer = await bff.client.put("/api/partner/webhook", json={"url": bad}, headers=auth(partner_token))
                assert answer.status_code == 400 and "url" in answer.json()["errors"], bad
            answer = await bff.client.put(
                "/api/partner/webhook", json={"url": url, "events": ["sync.started"]}, headers=auth(partner_token)
            )
            assert answer.status_code == 400 and answer.json()["errors"].keys() == {"events"}


async def until_attempted(bff: BFF, delivery_id: int) -> None:
    for _ in range(400):
        delivery = await bff.services.webhooks.table.get_delivery(delivery_id)
        if delivery is not None and delivery.attempts:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no attempt")


async def test_redelivery_sends_the_same_webhook_id_again(wbff: BFF) -> None:
    receiver = Receiver()
    with receiving(receiver) as url:
        partner_id, partner_token = await wbff.partner("hooks")
        secret = (await configure(wbff, partner_token, url))["secret"]
        delivery = await wbff.services.webhooks.emit(partner_id, "connection.created", {"server_id": 7})
        await until(lambda: len(receiver.requests) == 1)
        for _ in range(400):  # the first attempt is recorded (a redelivery during it is a known race)
            if (await wbff.services.webhooks.table.get_delivery(delivery.id)).status == "delivered":
                break
            await asyncio.sleep(0.05)
        answer = await wbff.client.post(
            f"/api/partner/webhook/deliveries/{delivery.id}/redeliver", headers=auth(partner_token)
        )
        assert answer.status_code == 202, answer.text
        await until(lambda: len(receiver.requests) == 2)
        assert receiver.requests[0][0]["webhook-id"] == receiver.requests[1][0]["webhook-id"] == delivery.message_id
        verify(secret, *receiver.requests[1])
        missing = await wbff.client.post(
            "/api/partner/webhook/deliveries/999999/redeliver", headers=auth(partner_token)
        )
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_a_receiver_that_hangs_is_cut_at_ten_seconds(wbff: BFF) -> None:
    receiver = Receiver(hang=True)
    with receiving(receiver) as url:
        partner_id, partner_token = await wbff.partner("hooks")
        await configure(wbff, partner_token, url)
        config = await wbff.services.webhooks.table.get(partner_id)
        began = time.monotonic()
        status, error = await wbff.services.webhooks._attempt(config, "msg_test", b"{}")
        took = time.monotonic() - began
        assert status is None and error == "No answer within 10 s."
        assert 9.5 <= took < 12


async def test_delete_stops_deliveries_and_the_secret_is_never_logged(
    wbff: BFF, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver()
    with receiving(receiver) as url:
        partner_id, partner_token = await wbff.partner("hooks")
        secret = (await configure(wbff, partner_token, url))["secret"]
        config = await wbff.services.webhooks.table.get(partner_id)
        assert secret not in repr(config) and "**********" in repr(config)
        await wbff.services.webhooks.emit(partner_id, "connection.created", {"server_id": 7})
        await until(lambda: len(receiver.requests) == 1)
        assert (await wbff.client.delete("/api/partner/webhook", headers=auth(partner_token))).status_code == 204
        assert await wbff.services.webhooks.emit(partner_id, "connection.created", {"server_id": 8}) is None
        gone = await wbff.client.delete("/api/partner/webhook", headers=auth(partner_token))
        assert gone.status_code == 404 and gone.json()["code"] == "webhook_not_configured"
        assert secret not in caplog.text and secret.removeprefix("whsec_") not in caplog.text


def test_signature_matches_the_standard_and_backoff_schedule() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    # The test vector of the Standard Webhooks specification, and the package's own signer.
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    stamp = datetime.datetime.fromtimestamp(1614265330, datetime.UTC)
    assert signature == Webhook(secret).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", stamp, body.decode())
    assert BACKOFF_SECONDS == (5, 300, 1800, 7200, 18000, 36000)
    assert [RetryDecision.after(n, 0).retry_at for n in range(1, 8)] == [5, 300, 1800, 7200, 18000, 36000, None]


def test_pinned_request_keeps_the_name_in_host_and_sni() -> None:
    url, headers, extensions = pinned_request("https://hooks.example.com/in?a=1", "93.184.216.34", 443)
    assert url == "https://93.184.216.34:443/in?a=1"
    assert headers == {"Host": "hooks.example.com"} and extensions == {"sni_hostname": "hooks.example.com"}
    url, headers, _ = pinned_request("http://hooks.example.com:8080/in", "2606:2800::1", 8080)
    assert url == "http://[2606:2800::1]:8080/in" and headers == {"Host": "hooks.example.com:8080"}


async def _queued_run(bff: BFF, partner_token: str) -> tuple[Any, dict[str, Any]]:
    """A connected bank (health OK) and a queued run of it that no worker was asked to start."""
    minted = await bff.integrate(partner_token, "cust-1")
    connection = await connect_bank(bff.client, minted["token"])
    run = await bff.services.store.runs.create(connection["id"], minted["account_id"], task_id="t-outbox", tables=None)
    return run, connection


async def _end(bff: BFF, run: Any) -> Any:
    from bff import lifecycle

    return await lifecycle.conclude_run(
        bff.services.store,
        bff.services.events,
        run.id,
        run.connection_id,
        lifecycle.Event.SYNC_SUCCEEDED,
        status="succeeded",
        records={"transactions": 1},
        detail=None,
    )


async def test_a_runs_end_and_its_webhook_events_are_one_transaction(wbff: BFF, monkeypatch: Any) -> None:
    """The deliveries of a run's end (its health change and sync.finished) are written in the
    transaction that ends it: when writing them fails, the run has not ended either (its retry or
    the stalled-run recovery ends it again); when the end is committed, so are they."""
    receiver = Receiver()
    with receiving(receiver) as url:
        _, partner_token = await wbff.partner("outbox")
        await configure(wbff, partner_token, url, events=["connection.health_changed", "sync.finished"])
        run, connection = await _queued_run(wbff, partner_token)
        webhooks = wbff.services.webhooks

        async def crash(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the process stopped while writing the event")

        monkeypatch.setattr(webhooks.table, "create_delivery", crash)
        with pytest.raises(RuntimeError):
            await _end(wbff, run)
        monkeypatch.undo()
        assert (await wbff.services.store.runs.get(run.id)).status == "queued"
        assert (await wbff.services.store.connections.get_by_id(connection["id"])).health_status == "OK"
        assert (await webhooks.deliveries(await _partner_id(wbff, run), offset=0, limit=10))[0] == 0

        ended = await _end(wbff, run)
        assert ended is not None and ended.status == "succeeded"
        await until(lambda: len(receiver.requests) == 2)
        by_type = {e["type"]: e["data"] for e in receiver.events()}
        assert by_type["connection.health_changed"]["to"] == "HEALTHY"
        assert by_type["sync.finished"]["pipeline_run_id"] == run.id
        assert by_type["sync.finished"]["records"] == {"transactions": 1}
        assert by_type["sync.finished"]["connector"] == "sandbox_bank"
        assert await _end(wbff, run) is None  # ended once: no second set of events
        await asyncio.sleep(0.3)
        assert len(receiver.requests) == 2


async def _partner_id(bff: BFF, run: Any) -> int:
    account = await bff.services.store.sub_accounts.get_by_id(run.sub_account_id)
    return int(account.partner_id)


async def test_deliveries_whose_job_was_never_queued_are_queued_by_the_tick(wbff: BFF, monkeypatch: Any) -> None:
    """The process stops after the run's end is committed but before its deliveries' jobs are
    queued: the deliveries are there, and the scheduler tick's sweep queues them (once)."""
    receiver = Receiver()
    with receiving(receiver) as url:
        _, partner_token = await wbff.partner("outbox-tick")
        await configure(wbff, partner_token, url, events=["sync.finished"])
        run, _ = await _queued_run(wbff, partner_token)
        webhooks = wbff.services.webhooks

        async def stopped(delivery_ids: Any) -> None:
            return None

        monkeypatch.setattr(webhooks, "queue_deliveries", stopped)
        await _end(wbff, run)
        monkeypatch.undo()
        count, deliveries = await webhooks.deliveries(await _partner_id(wbff, run), offset=0, limit=10)
        assert count == 1 and deliveries[0]["status"] == "pending"
        assert await webhooks.queue_unqueued() == []  # younger than a minute: its job may be on its way
        queued = await webhooks.queue_unqueued(after=0)
        assert queued == [deliveries[0]["id"]]
        await until(lambda: len(receiver.requests) == 1)
        assert receiver.events()[0]["data"]["pipeline_run_id"] == run.id
        assert await webhooks.queue_unqueued(after=0) == []  # it has its job (and was delivered)
