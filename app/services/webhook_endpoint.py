"""Webhook endpoint configuration: create with a generated secret, rotate, enable, list."""

import secrets
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from app.crypto import CredentialBox
from app.db import UnitOfWork
from app.errors import NotFound, UrlNotAllowed, ValidationFailed
from app.models.merchant import Merchant
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.services import audit
from app.services.lookup import configurable_row
from app.services.retry.pinning import sender_url
from app.tenancy import Principal
from app.urls import Target, UrlForbidden, UrlMalformed, UrlPolicy

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
    principal.require_configure(merchant_id)
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
        .join(OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id))
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
