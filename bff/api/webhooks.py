"""Partner endpoints for the webhook (DESIGN §11): configure, rotate the secret, see and
redeliver deliveries. The secret is in the answer of the first ``PUT`` and of a rotation only."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..auth import require_partner, services
from ..contract.requests import WebhookSettings
from ..errors import ApiError
from ..http import api_route, parse_body
from ..store import iso
from ..store.webhooks import WebhookConfig
from ..webhooks import EVENT_TYPES
from .paging import Pagination

NO_STORE = {"Cache-Control": "no-store"}


def config_dict(config: WebhookConfig, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "url": config.url,
        "events": config.events,
        "created_at": iso(config.created_at),
        "updated_at": iso(config.updated_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


async def put_webhook(request: Request) -> JSONResponse:
    """Set the webhook URL and events; ``secret`` is returned when the webhook is created."""
    partner = await require_partner(request)
    settings = await parse_body(request, WebhookSettings)
    events = list(settings.events or EVENT_TYPES)
    config, secret = await services(request).webhooks.configure(partner.id, settings.url, events)
    return JSONResponse(config_dict(config, secret), status_code=201 if secret else 200, headers=NO_STORE)


async def get_webhook(request: Request) -> JSONResponse:
    """The webhook's URL and events (never its secret)."""
    partner = await require_partner(request)
    config = await services(request).webhooks.config(partner.id)
    if config is None:
        raise ApiError(404, "webhook_not_configured", "No webhook is configured; PUT /api/partner/webhook sets one.")
    return JSONResponse(config_dict(config))


async def delete_webhook(request: Request) -> Response:
    partner = await require_partner(request)
    if not await services(request).webhooks.remove(partner.id):
        raise ApiError(404, "webhook_not_configured", "No webhook is configured.")
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    """A new secret, used for every attempt from now on (retries of older events included)."""
    partner = await require_partner(request)
    rotated = await services(request).webhooks.rotate_secret(partner.id)
    if rotated is None:
        raise ApiError(404, "webhook_not_configured", "No webhook is configured; PUT /api/partner/webhook sets one.")
    config, secret = rotated
    return JSONResponse(config_dict(config, secret), headers=NO_STORE)


async def list_deliveries(request: Request) -> JSONResponse:
    """Deliveries, newest first, each with every attempt."""
    partner = await require_partner(request)
    page = Pagination(request, default_size=20)
    count, results = await services(request).webhooks.deliveries(partner.id, offset=page.offset, limit=page.limit)
    return JSONResponse(page.envelope(count, results))


async def redeliver(request: Request) -> JSONResponse:
    """Send a delivery again (same ``webhook-id``), with a fresh series of retries."""
    partner = await require_partner(request)
    delivery_id = request.path_params["delivery_id"]
    delivery = await services(request).webhooks.redeliver(partner.id, delivery_id)
    if delivery is None:
        raise ApiError(404, "not_found", "No such delivery.")
    return JSONResponse(
        {"id": delivery.id, "webhook_id": delivery.message_id, "status": delivery.status}, status_code=202
    )


def routes() -> list[BaseRoute]:
    return [
        *api_route("/api/partner/webhook", put_webhook, methods=["PUT"]),
        *api_route("/api/partner/webhook", get_webhook, methods=["GET"]),
        *api_route("/api/partner/webhook", delete_webhook, methods=["DELETE"]),
        *api_route("/api/partner/webhook/rotate-secret", rotate_secret, methods=["POST"]),
        *api_route("/api/partner/webhook/deliveries", list_deliveries, methods=["GET"]),
        *api_route("/api/partner/webhook/deliveries/{delivery_id:int}/redeliver", redeliver, methods=["POST"]),
    ]
