"""Merchant webhooks: endpoints with sealed secrets, outbox fan-out, signed delivery."""

import asyncio
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database, UnitOfWork
from app.errors import Forbidden, NotFound, ValidationFailed
from app.models.merchant import Merchant
from app.models.retry import OutboxEvent, WebhookDelivery, WebhookEndpoint
from app.services import audit
from app.tenancy import SYSTEM_SCOPE, Principal

SIGNATURE_HEADER = "Portal-Signature"
EVENT_HEADER = "Portal-Event"
DELIVERY_HEADER = "Portal-Delivery"
# A delivery being sent is leased for this long; a worker that dies mid-send releases it.
LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 12
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=6)
SEND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: `t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a merchant's receiver does (and the tests): recompute and compare in constant time."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def backoff(attempts: int) -> timedelta:
    """Wait before try `attempts + 1`: doubling from 30 s, at most 6 h."""
    wait: timedelta = BASE_BACKOFF * (2 ** max(0, attempts - 1))
    return min(MAX_BACKOFF, wait)


async def create_endpoint(
    uow: UnitOfWork,
    *,
    principal: Principal,
    merchant_id: uuid.UUID,
    url: str,
    secret: str,
    box: CredentialBox,
    now: datetime,
) -> WebhookEndpoint:
    """Add a webhook endpoint; the secret is sealed and never audited."""
    merchant = (
        await uow.session.execute(select(Merchant).where(col(Merchant.id) == merchant_id))
    ).scalar_one_or_none()
    if merchant is None:
        raise NotFound("merchant not found", field="merchantId")
    if not principal.may_configure(merchant_id):
        raise Forbidden("this key may not change the merchant's configuration")
    problems: list[tuple[str, str]] = []
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or len(url) > 500:
        problems.append(("url", "must be an http(s) URL of at most 500 characters"))
    if len(secret) < 16:
        problems.append(("secret", "must be at least 16 characters"))
    if problems:
        raise ValidationFailed(problems)
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


async def dispatch_outbox(uow: UnitOfWork, *, now: datetime, limit: int = 500) -> int:
    """Fan new outbox events out to their merchant's enabled endpoints; no commit."""
    events = list(
        (
            await uow.session.execute(
                select(OutboxEvent)
                .where(col(OutboxEvent.dispatched_at).is_(None))
                .order_by(col(OutboxEvent.created_at))
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    if not events:
        return 0
    merchants = sorted({e.merchant_id for e in events})
    endpoints: dict[uuid.UUID, list[uuid.UUID]] = {}
    for endpoint_id, merchant_id in (
        await uow.session.execute(
            select(col(WebhookEndpoint.id), col(WebhookEndpoint.merchant_id)).where(
                col(WebhookEndpoint.merchant_id).in_(merchants), col(WebhookEndpoint.enabled)
            )
        )
    ).all():
        endpoints.setdefault(merchant_id, []).append(endpoint_id)
    rows = [
        {
            "id": uuid.uuid4(),
            "merchant_id": e.merchant_id,
            "event_id": e.id,
            "endpoint_id": endpoint_id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for e in events
        for endpoint_id in endpoints.get(e.merchant_id, [])
    ]
    if rows:
        await uow.session.execute(
            insert(WebhookDelivery)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
        )
    await uow.session.execute(
        update(OutboxEvent)
        .where(col(OutboxEvent.id).in_([e.id for e in events]))
        .values(dispatched_at=now)
    )
    return len(events)


@dataclass(frozen=True)
class _Send:
    delivery_id: uuid.UUID
    attempts: int
    url: str
    secret: str
    event_type: str
    body: bytes


def _body(event: OutboxEvent) -> bytes:
    document: dict[str, Any] = {
        "id": str(event.id),
        "type": event.event_type,
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


async def deliver_due(
    db: Database,
    *,
    http: httpx.AsyncClient,
    box: CredentialBox,
    clock: Clock,
    limit: int = 100,
) -> dict[str, int]:
    """Send due deliveries (leased first, so a crash only delays them); record each outcome."""
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        rows = (
            await uow.session.execute(
                select(WebhookDelivery, OutboxEvent, WebhookEndpoint)
                .join(OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id))
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .where(
                    col(WebhookDelivery.status) == "pending",
                    col(WebhookDelivery.next_attempt_at) <= now,
                )
                .order_by(col(WebhookDelivery.next_attempt_at))
                .limit(limit)
                .with_for_update(of=WebhookDelivery, skip_locked=True)
            )
        ).all()
        sends: list[_Send] = []
        for delivery, event, endpoint in rows:
            delivery.next_attempt_at = now + LEASE
            sends.append(
                _Send(
                    delivery_id=delivery.id,
                    attempts=delivery.attempts,
                    url=endpoint.url,
                    secret=str(box.open(endpoint.secret_encrypted)["secret"]),
                    event_type=event.event_type,
                    body=_body(event),
                )
            )
        await uow.commit()
    outcomes = await asyncio.gather(*(_post(http, s, now) for s in sends))
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    async with db.uow(SYSTEM_SCOPE) as uow:
        done = clock.now()
        for send, (status_code, error) in zip(sends, outcomes, strict=True):
            attempts = send.attempts + 1
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_status_code": status_code,
                "last_error": error,
            }
            if error is None:
                values |= {"status": "delivered", "delivered_at": done}
                counts["delivered"] += 1
            elif attempts >= MAX_ATTEMPTS:
                values |= {"status": "failed"}
                counts["failed"] += 1
            else:
                values |= {"next_attempt_at": done + backoff(attempts)}
                counts["retrying"] += 1
            await uow.session.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == send.delivery_id)
                .values(**values)
            )
        await uow.commit()
    return counts


async def _post(
    http: httpx.AsyncClient, send: _Send, now: datetime
) -> tuple[int | None, str | None]:
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(send.secret, int(now.timestamp()), send.body),
        EVENT_HEADER: send.event_type,
        DELIVERY_HEADER: str(send.delivery_id),
    }
    try:
        response = await http.post(
            send.url, content=send.body, headers=headers, timeout=SEND_TIMEOUT
        )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"
