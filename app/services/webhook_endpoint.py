"""Webhook endpoint configuration: create with a generated secret, rotate, enable, update the
URL and the event types received, delete, send a test event, redeliver an event; list."""

import secrets
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from app.crypto import CredentialBox
from app.db import UnitOfWork
from app.enums import WebhookDeliveryStatus
from app.errors import InvalidState, NotFound, UrlNotAllowed, ValidationFailed
from app.models.merchant import Merchant
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.retry.events import PING_EVENT_TYPE
from app.services import audit
from app.services.lookup import configurable_row
from app.services.retry.pinning import sender_url
from app.tenancy import Principal
from app.urls import Target, UrlForbidden, UrlMalformed, UrlPolicy
from app.webhook_events import NAMES as WEBHOOK_EVENT_TYPES

# How long a rotated-out secret still signs deliveries, unless the caller says otherwise: a day
# for receivers to switch; zero (at once) when the old secret leaked.
DEFAULT_SECRET_GRACE = timedelta(hours=24)
MAX_SECRET_GRACE = timedelta(days=7)


def new_secret() -> str:
    """A signing secret: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def checked_url(url: str, policy: UrlPolicy) -> Target:
    """`check_url` (and the sender's reading of the URL, see `sender_url`), its refusals as
    the errors mutations answer: INVALID for what is not an http(s) URL, URL_NOT_ALLOWED for a
    destination the portal must not reach."""
    try:
        target, _ = sender_url(url, policy)
    except UrlMalformed as exc:
        raise ValidationFailed([("url", str(exc))]) from exc
    except UrlForbidden as exc:
        raise UrlNotAllowed(f"the URL is not allowed: {exc}", field="url") from exc
    return target


async def create_endpoint(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    url: str,
    secret: str,
    box: CredentialBox,
    policy: UrlPolicy,
    now: datetime,
) -> WebhookEndpoint:
    """Add a webhook endpoint whose URL `policy` allows; the secret is sealed and never
    audited."""
    merchant = (
        await uow.session.execute(select(Merchant).where(col(Merchant.id) == merchant_id))
    ).scalar_one_or_none()
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    principal.require_integrate(merchant_id)
    if len(secret) < 16:
        raise ValidationFailed([("secret", "must be at least 16 characters")])
    checked_url(url, policy)
    endpoint = WebhookEndpoint(
        merchant_id=merchant_id,
        url=url,
        secret_encrypted=box.seal({"secret": secret}),
        created_at=now,
    )
    uow.session.add(endpoint)
    await uow.session.flush()
    audit.record(
        uow,
        principal=principal,
        merchant_id=merchant_id,
        action="webhook_endpoint.create",
        entity_type="webhook_endpoint",
        entity_id=str(endpoint.id),
        before=None,
        after={"url": url},
        reason=None,
        now=now,
    )
    return endpoint


async def create_webhook_endpoint(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    url: str,
    box: CredentialBox,
    policy: UrlPolicy,
    now: datetime,
) -> tuple[WebhookEndpoint, str]:
    """Add an endpoint with a generated secret; the secret is returned to the caller once."""
    secret = new_secret()
    endpoint = await create_endpoint(
        uow,
        principal=principal,
        merchant_id=merchant_id,
        url=url,
        secret=secret,
        box=box,
        policy=policy,
        now=now,
    )
    return endpoint, secret


async def _configurable(
    uow: UnitOfWork, principal: Principal, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    """The endpoint, locked, if visible and the caller may configure its merchant."""
    return await configurable_row(
        uow,
        principal,
        WebhookEndpoint,
        endpoint_id,
        not_found="webhook endpoint not found",
        field="endpointId",
        integration=True,
    )


async def rotate_secret(
    uow: UnitOfWork,
    *,
    principal: Principal,
    endpoint_id: uuid.UUID,
    reason: str,
    box: CredentialBox,
    now: datetime,
    grace: timedelta = DEFAULT_SECRET_GRACE,
) -> tuple[WebhookEndpoint, str]:
    """Seal a new secret in place of the old one, audited without either. Until `now + grace`
    deliveries carry a signature with the old secret too (receivers switch without losing an
    event); a zero grace ends the old secret at once. Only the secret being replaced is kept:
    a second rotation within a grace period ends the first one's."""
    if not timedelta(0) <= grace <= MAX_SECRET_GRACE:
        hours = int(MAX_SECRET_GRACE.total_seconds() // 3600)
        raise ValidationFailed([("previousSecretValidHours", f"must be 0-{hours} hours")])
    endpoint = await _configurable(uow, principal, endpoint_id)
    reason = audit.clean_reason(reason)
    secret = new_secret()
    if grace > timedelta(0):
        endpoint.previous_secret_encrypted = endpoint.secret_encrypted
        endpoint.previous_secret_expires_at = now + grace
    else:
        endpoint.previous_secret_encrypted = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret_encrypted = box.seal({"secret": secret})
    expires = endpoint.previous_secret_expires_at
    audit.record(
        uow,
        principal=principal,
        merchant_id=endpoint.merchant_id,
        action="webhook_endpoint.rotate_secret",
        entity_type="webhook_endpoint",
        entity_id=str(endpoint.id),
        before=None,
        after={
            "url": endpoint.url,
            "secret_rotated_at": now.isoformat(),
            "previous_secret_expires_at": None if expires is None else expires.isoformat(),
        },
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return endpoint, secret


async def set_endpoint_enabled(
    uow: UnitOfWork,
    *,
    principal: Principal,
    endpoint_id: uuid.UUID,
    enabled: bool,
    reason: str,
    policy: UrlPolicy,
    now: datetime,
) -> WebhookEndpoint:
    """Enable or disable an endpoint, audited; setting the value it already has changes
    nothing and is not logged. Disabled endpoints receive no new events. Enabling checks the
    URL again: one stored before it became refused is not switched back on."""
    endpoint = await _configurable(uow, principal, endpoint_id)
    reason = audit.clean_reason(reason)
    if endpoint.enabled is enabled:
        return endpoint
    if enabled:
        checked_url(endpoint.url, policy)
    before = {"enabled": endpoint.enabled}
    endpoint.enabled = enabled
    audit.record(
        uow,
        principal=principal,
        merchant_id=endpoint.merchant_id,
        action="webhook_endpoint.enable" if enabled else "webhook_endpoint.disable",
        entity_type="webhook_endpoint",
        entity_id=str(endpoint.id),
        before=before,
        after={"enabled": enabled},
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return endpoint


@dataclass(frozen=True)
class RecentDelivery:
    """A delivery with the type of the event it carries."""

    delivery: WebhookDelivery
    event_type: str


async def recent_deliveries(
    session: AsyncSession, endpoint_ids: Sequence[uuid.UUID], *, first: int
) -> dict[uuid.UUID, list[RecentDelivery]]:
    """The newest `first` deliveries of each endpoint, newest first, in one query."""
    newest_first = (col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
    ranked = (
        select(
            WebhookDelivery,
            col(OutboxEvent.event_type).label("event_type"),
            func.row_number()
            .over(partition_by=col(WebhookDelivery.endpoint_id), order_by=newest_first)
            .label("rank"),
        )
        .join(
            OutboxEvent,
            (col(OutboxEvent.id) == col(WebhookDelivery.event_id))
            & (col(OutboxEvent.created_at) == col(WebhookDelivery.event_created_at)),
        )
        .where(col(WebhookDelivery.endpoint_id).in_(endpoint_ids))
        .subquery()
    )
    delivery = aliased(WebhookDelivery, ranked)
    rows = await session.execute(
        select(delivery, ranked.c.event_type)
        .where(ranked.c.rank <= first)
        .order_by(ranked.c.endpoint_id, ranked.c.rank)
    )
    grouped: dict[uuid.UUID, list[RecentDelivery]] = defaultdict(list)
    for row, event_type in rows.all():
        grouped[row.endpoint_id].append(RecentDelivery(delivery=row, event_type=event_type))
    return grouped


def checked_event_types(event_types: Sequence[str] | None) -> list[str] | None:
    """The event types an endpoint is to receive, deduplicated in the registry's order; None
    (every type) stays None. An unknown type or an empty list is refused on `eventTypes`."""
    if event_types is None:
        return None
    unknown = sorted({t for t in event_types if t not in WEBHOOK_EVENT_TYPES})
    if unknown:
        known = ", ".join(WEBHOOK_EVENT_TYPES)
        raise ValidationFailed(
            [("eventTypes", f"unknown event type {', '.join(unknown)}; known: {known}")]
        )
    if not event_types:
        raise ValidationFailed(
            [("eventTypes", "name at least one type (null receives all); disable it for none")]
        )
    return [t for t in WEBHOOK_EVENT_TYPES if t in set(event_types)]


def _settings(endpoint: WebhookEndpoint) -> dict[str, object]:
    return {"url": endpoint.url, "enabled": endpoint.enabled, "event_types": endpoint.event_types}


async def update_endpoint(
    uow: UnitOfWork,
    *,
    principal: Principal,
    endpoint_id: uuid.UUID,
    reason: str,
    policy: UrlPolicy,
    now: datetime,
    url: str | None = None,
    enabled: bool | None = None,
    event_types: Sequence[str] | None = None,
    set_event_types: bool = False,
) -> WebhookEndpoint:
    """Change an endpoint's URL, whether it is enabled, and the event types it receives (when
    `set_event_types`: None is every type), audited with the settings before and after; a
    change to what it already has is not logged. A new URL is checked, and so is the old one
    when the endpoint is switched back on. Deliveries already queued keep going to
    the endpoint, to its URL at the time of each try; a new type filter applies to the events
    fanned out from now on."""
    endpoint = await _configurable(uow, principal, endpoint_id)
    reason = audit.clean_reason(reason)
    types = checked_event_types(event_types) if set_event_types else endpoint.event_types
    new_url = endpoint.url if url is None else url
    new_enabled = endpoint.enabled if enabled is None else enabled
    if new_url != endpoint.url or (new_enabled and not endpoint.enabled):
        checked_url(new_url, policy)
    before = _settings(endpoint)
    endpoint.url, endpoint.enabled, endpoint.event_types = new_url, new_enabled, types
    after = _settings(endpoint)
    if after == before:
        return endpoint
    audit.record(
        uow,
        principal=principal,
        merchant_id=endpoint.merchant_id,
        action="webhook_endpoint.update",
        entity_type="webhook_endpoint",
        entity_id=str(endpoint.id),
        before={k: v for k, v in before.items() if after[k] != v},
        after={k: v for k, v in after.items() if before[k] != v},
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return endpoint


async def delete_endpoint(
    uow: UnitOfWork, *, principal: Principal, endpoint_id: uuid.UUID, reason: str, now: datetime
) -> WebhookEndpoint:
    """Remove an endpoint, its sealed secrets and its delivery history, audited (the audit
    entry keeps its URL and how many deliveries went, and how many were still pending).
    Pending deliveries stop: none is tried again. A try already under way in a worker when
    the endpoint goes may still reach the receiver once; its outcome is not recorded."""
    endpoint = await _configurable(uow, principal, endpoint_id)
    reason = audit.clean_reason(reason)
    counts = dict(
        (
            await uow.session.execute(
                select(col(WebhookDelivery.status), func.count())
                .where(col(WebhookDelivery.endpoint_id) == endpoint.id)
                .group_by(col(WebhookDelivery.status))
            )
        ).all()
    )
    await uow.session.execute(
        delete(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint.id)
    )
    await uow.session.delete(endpoint)
    audit.record(
        uow,
        principal=principal,
        merchant_id=endpoint.merchant_id,
        action="webhook_endpoint.delete",
        entity_type="webhook_endpoint",
        entity_id=str(endpoint.id),
        before={
            **_settings(endpoint),
            "deliveries": sum(counts.values()),
            "pending_deliveries": counts.get(WebhookDeliveryStatus.PENDING, 0),
        },
        after=None,
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return endpoint


def _queue(
    uow: UnitOfWork,
    event: OutboxEvent,
    endpoint_id: uuid.UUID,
    now: datetime,
    *,
    redelivery_of: uuid.UUID | None = None,
) -> WebhookDelivery:
    delivery = WebhookDelivery(
        merchant_id=event.merchant_id,
        event_id=event.id,
        event_created_at=event.created_at,
        endpoint_id=endpoint_id,
        status=WebhookDeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        redelivery_of=redelivery_of,
    )
    uow.session.add(delivery)
    return delivery


async def send_test_event(
    uow: UnitOfWork,
    *,
    principal: Principal,
    endpoint_id: uuid.UUID,
    policy: UrlPolicy,
    now: datetime,
) -> RecentDelivery:
    """Queue a `ping` event for one endpoint (enabled or not, whatever types it receives),
    signed and sent like any event by the delivery cron; audited. The event is written to the
    outbox already fanned out, so no other endpoint receives it."""
    endpoint = await _configurable(uow, principal, endpoint_id)
    checked_url(endpoint.url, policy)
    event = OutboxEvent(
        merchant_id=endpoint.merchant_id,
        payment_id=None,
        event_type=PING_EVENT_TYPE,
        payload={
            "type": PING_EVENT_TYPE,
            "endpoint_id": str(endpoint.id),
            "message": "a test event sent on request; it reports no change",
        },
        created_at=now,
        dispatched_at=now,
    )
    uow.session.add(event)
    await uow.session.flush()
    delivery = _queue(uow, event, endpoint.id, now)
    audit.record(
        uow,
        principal=principal,
        merchant_id=endpoint.merchant_id,
        action="webhook_endpoint.test",
        entity_type="webhook_endpoint",
        entity_id=str(endpoint.id),
        before=None,
        after={"event_id": str(event.id), "url": endpoint.url},
        reason=None,
        now=now,
    )
    await uow.session.flush()
    return RecentDelivery(delivery=delivery, event_type=event.event_type)


async def redeliver(
    uow: UnitOfWork, *, principal: Principal, delivery_id: uuid.UUID, reason: str, now: datetime
) -> RecentDelivery:
    """Queue a new delivery of a delivery's event to the same endpoint, signed anew when sent
    (with the endpoint's secrets then), audited. Refused while a delivery of that event to
    that endpoint is still pending: it is being sent already."""
    found = (
        await uow.session.execute(
            select(WebhookDelivery, OutboxEvent)
            .join(
                OutboxEvent,
                (col(OutboxEvent.id) == col(WebhookDelivery.event_id))
                & (col(OutboxEvent.created_at) == col(WebhookDelivery.event_created_at)),
            )
            .where(col(WebhookDelivery.id) == delivery_id)
        )
    ).one_or_none()
    if found is None:
        raise NotFound("webhook delivery not found", field="deliveryId")
    original, event = found
    endpoint = await configurable_row(
        uow,
        principal,
        WebhookEndpoint,
        original.endpoint_id,
        not_found="webhook delivery not found",
        field="deliveryId",
        integration=True,
    )
    reason = audit.clean_reason(reason)
    pending = (
        await uow.session.execute(
            select(func.count()).where(
                col(WebhookDelivery.event_id) == event.id,
                col(WebhookDelivery.event_created_at) == event.created_at,
                col(WebhookDelivery.endpoint_id) == endpoint.id,
                col(WebhookDelivery.status) == WebhookDeliveryStatus.PENDING,
            )
        )
    ).scalar_one()
    if pending:
        raise InvalidState("a delivery of this event to this endpoint is still pending")
    delivery = _queue(uow, event, endpoint.id, now, redelivery_of=original.id)
    await uow.session.flush()
    audit.record(
        uow,
        principal=principal,
        merchant_id=endpoint.merchant_id,
        action="webhook_delivery.redeliver",
        entity_type="webhook_delivery",
        entity_id=str(delivery.id),
        before=None,
        after={
            "event_id": str(event.id),
            "event_type": event.event_type,
            "endpoint_id": str(endpoint.id),
            "redelivery_of": str(original.id),
        },
        reason=reason,
        now=now,
    )
    return RecentDelivery(delivery=delivery, event_type=event.event_type)
