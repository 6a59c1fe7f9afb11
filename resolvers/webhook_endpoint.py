"""Reading and changing merchants' webhook endpoints for the API."""

import uuid
from collections.abc import Sequence
from datetime import timedelta

from app.errors import InvalidArgument
from app.models.webhook_endpoint import WebhookEndpoint
from app.services.webhook_endpoint import (
    RecentDelivery,
    create_webhook_endpoint,
    delete_endpoint,
    redeliver,
    rotate_secret,
    send_test_event,
    set_endpoint_enabled,
    update_endpoint,
)
from resolvers.context import Context
from resolvers.ids import decode_id

MAX_RECENT_DELIVERIES = 100


async def for_merchant(ctx: Context, merchant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return await ctx.loaders.webhook.webhook_endpoints_by_merchant_id.load(merchant_id)


async def deliveries(ctx: Context, endpoint_id: uuid.UUID, first: int) -> list[RecentDelivery]:
    if not 1 <= first <= MAX_RECENT_DELIVERIES:
        raise InvalidArgument(f"first must be 1-{MAX_RECENT_DELIVERIES}", field="first")
    return await ctx.loaders.webhook.recent_deliveries_by_endpoint_id.load((endpoint_id, first))


async def create(ctx: Context, *, merchant_global_id: str, url: str) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint in its own unit of work; returns it with its new signing secret."""
    async with ctx.change() as (uow, by):
        _, merchant_id = decode_id(merchant_global_id, expected="Merchant")
        return await create_webhook_endpoint(
            uow,
            merchant_id=merchant_id,
            url=url,
            box=ctx.credential_box(),
            policy=ctx.settings.url_policy,
            **by,
        )


async def rotate(
    ctx: Context, *, global_id: str, reason: str, grace: timedelta
) -> tuple[WebhookEndpoint, str]:
    """Replace an endpoint's signing secret, the old one signing too for `grace`; returns the
    endpoint with the new secret."""
    async with ctx.change() as (uow, by):
        _, endpoint_id = decode_id(global_id, expected="WebhookEndpoint")
        return await rotate_secret(
            uow, endpoint_id=endpoint_id, reason=reason, box=ctx.credential_box(), grace=grace, **by
        )


async def set_enabled(
    ctx: Context, *, global_id: str, enabled: bool, reason: str
) -> WebhookEndpoint:
    async with ctx.change() as (uow, by):
        _, endpoint_id = decode_id(global_id, expected="WebhookEndpoint")
        return await set_endpoint_enabled(
            uow,
            endpoint_id=endpoint_id,
            enabled=enabled,
            reason=reason,
            policy=ctx.settings.url_policy,
            **by,
        )


async def update(
    ctx: Context,
    *,
    global_id: str,
    reason: str,
    url: str | None,
    enabled: bool | None,
    event_types: Sequence[str] | None,
    set_event_types: bool,
) -> WebhookEndpoint:
    async with ctx.change() as (uow, by):
        _, endpoint_id = decode_id(global_id, expected="WebhookEndpoint")
        return await update_endpoint(
            uow,
            endpoint_id=endpoint_id,
            reason=reason,
            policy=ctx.settings.url_policy,
            url=url,
            enabled=enabled,
            event_types=event_types,
            set_event_types=set_event_types,
            **by,
        )


async def delete(ctx: Context, *, global_id: str, reason: str) -> WebhookEndpoint:
    async with ctx.change() as (uow, by):
        _, endpoint_id = decode_id(global_id, expected="WebhookEndpoint")
        return await delete_endpoint(uow, endpoint_id=endpoint_id, reason=reason, **by)


async def send_test(ctx: Context, *, global_id: str) -> tuple[WebhookEndpoint, RecentDelivery]:
    """Queue a ping for one endpoint; returns the endpoint and the new delivery."""
    async with ctx.change() as (uow, by):
        _, endpoint_id = decode_id(global_id, expected="WebhookEndpoint")
        sent = await send_test_event(
            uow, endpoint_id=endpoint_id, policy=ctx.settings.url_policy, **by
        )
        endpoint = await uow.session.get(WebhookEndpoint, sent.delivery.endpoint_id)
    if endpoint is None:
        raise RuntimeError("the endpoint of a delivery just queued is gone")
    return endpoint, sent


async def redeliver_delivery(
    ctx: Context, *, global_id: str, reason: str
) -> tuple[WebhookEndpoint, RecentDelivery]:
    """Queue a new delivery of a delivery's event; returns the endpoint and the new delivery."""
    async with ctx.change() as (uow, by):
        _, delivery_id = decode_id(global_id, expected="WebhookDelivery")
        sent = await redeliver(uow, delivery_id=delivery_id, reason=reason, **by)
        endpoint = await uow.session.get(WebhookEndpoint, sent.delivery.endpoint_id)
    if endpoint is None:
        raise RuntimeError("the endpoint of a delivery just queued is gone")
    return endpoint, sent
