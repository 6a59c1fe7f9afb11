"""Outgoing webhooks on their way: outbox fan-out to endpoints, signed delivery with backoff.

A workflow: `deliver_due` commits each delivery on its own."""

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database, UnitOfWork
from app.enums import WebhookDeliveryStatus
from app.models.retry import OutboxEvent
from app.models.webhook_endpoint import WebhookDelivery, WebhookEndpoint
from app.services.retry.pinning import SEND_TIMEOUT, Resolver, pin
from app.tenancy import SYSTEM_SCOPE
from app.urls import UrlForbidden, UrlMalformed, UrlPolicy

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Portal-Signature"
EVENT_HEADER = "Portal-Event"
DELIVERY_HEADER = "Portal-Delivery"
# How far a receiver lets a signature's timestamp be from its own clock (README: receivers).
SIGNATURE_TOLERANCE_SECONDS = 300
# A delivery being sent is leased for this long; a worker that dies mid-send releases it.
LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 12
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=6)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """The signature header value: `t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`, one `v1`
    per secret (the current one first; during a rotation's grace period also the old one)."""
    if not secrets:
        raise ValueError("a delivery is signed with at least one secret")
    return ",".join([f"t={timestamp}", *(f"v1={_mac(s, timestamp, body)}" for s in secrets)])


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: int,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """What a merchant's receiver does (and the tests): the timestamp within `tolerance`
    seconds of `now` (a replayed old delivery fails), and any `v1` equal to the HMAC of
    "t.body" under `secret`, compared in constant time."""
    timestamps: list[str] = []
    macs: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key == "t":
            timestamps.append(value)
        elif sep and key == "v1":
            macs.append(value)
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    # Every candidate is compared, so the time taken does not say which one matched.
    matches = [hmac.compare_digest(expected, candidate) for candidate in macs]
    return any(matches)


def backoff(attempts: int) -> timedelta:
    """Wait before try `attempts + 1`: doubling from 30 s, at most 6 h."""
    wait: timedelta = BASE_BACKOFF * (2 ** max(0, attempts - 1))
    return min(MAX_BACKOFF, wait)


async def dispatch_outbox(uow: UnitOfWork, *, now: datetime, limit: int = 500) -> int:
    """Fan new outbox events out to their merchant's enabled endpoints, each receiving the
    event types it asked for (all when it named none); no commit."""
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
    # Each enabled endpoint with the event types it receives (None: every type). Key-share
    # locked, so an endpoint being deleted meanwhile is either skipped or kept until its
    # deliveries are inserted (and deleted with it).
    endpoints: dict[uuid.UUID, list[tuple[uuid.UUID, frozenset[str] | None]]] = {}
    for endpoint_id, merchant_id, types in (
        await uow.session.execute(
            select(
                col(WebhookEndpoint.id),
                col(WebhookEndpoint.merchant_id),
                col(WebhookEndpoint.event_types),
            )
            .where(col(WebhookEndpoint.merchant_id).in_(merchants), col(WebhookEndpoint.enabled))
            .with_for_update(key_share=True)
        )
    ).all():
        receives = None if types is None else frozenset(types)
        endpoints.setdefault(merchant_id, []).append((endpoint_id, receives))
    rows = [
        {
            "id": uuid.uuid4(),
            "merchant_id": e.merchant_id,
            "event_id": e.id,
            "event_created_at": e.created_at,
            "endpoint_id": endpoint_id,
            "status": WebhookDeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for e in events
        for endpoint_id, receives in endpoints.get(e.merchant_id, [])
        if receives is None or e.event_type in receives
    ]
    if rows:
        await uow.session.execute(
            insert(WebhookDelivery)
            .values(rows)
            .on_conflict_do_nothing(
                index_elements=["event_id", "endpoint_id", "event_created_at"],
                index_where=col(WebhookDelivery.redelivery_of).is_(None),
            )
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
    endpoint_id: uuid.UUID
    attempts: int
    url: str
    # The current secret first; the previous one too while its grace period lasts.
    secrets: tuple[str, ...]
    event_type: str
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None = None
    error: str | None = None
    # Never sent, for good: the destination is refused. Failed at once, not retried.
    refused: bool = False


def webhook_body(event: OutboxEvent) -> bytes:
    """What a delivery posts: the event's id, type, payload version (`webhookEventTypes`),
    time, and its payload as `data` (the same JSON `Merchant.events` serves as `payload`)."""
    document: dict[str, Any] = {
        "id": str(event.id),
        "type": event.event_type,
        "version": event.version,
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _signing_secrets(
    endpoint: WebhookEndpoint, box: CredentialBox, now: datetime
) -> tuple[str, ...]:
    current = str(box.open(endpoint.secret_encrypted)["secret"])
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_encrypted is None or expires is None or expires <= now:
        return (current,)
    return current, str(box.open(endpoint.previous_secret_encrypted)["secret"])


async def deliver_due(
    db: Database,
    *,
    http: httpx.AsyncClient,
    box: CredentialBox,
    clock: Clock,
    policy: UrlPolicy,
    resolve: Resolver,
    limit: int = 100,
) -> dict[str, int]:
    """Send due deliveries (leased first, so a crash only delays them); record each outcome.

    `http` should be a `delivery_client()`. A delivery whose URL or resolved address
    `policy` refuses is never sent: it fails at once with the reason (retrying would only
    probe the same inward address again), and later events get their own check."""
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        rows = (
            await uow.session.execute(
                select(WebhookDelivery, OutboxEvent, WebhookEndpoint)
                .join(
                    OutboxEvent,
                    (col(OutboxEvent.id) == col(WebhookDelivery.event_id))
                    & (col(OutboxEvent.created_at) == col(WebhookDelivery.event_created_at)),
                )
                .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
                .where(
                    col(WebhookDelivery.status) == WebhookDeliveryStatus.PENDING,
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
                    endpoint_id=endpoint.id,
                    attempts=delivery.attempts,
                    url=endpoint.url,
                    secrets=_signing_secrets(endpoint, box, now),
                    event_type=event.event_type,
                    body=webhook_body(event),
                )
            )
        await uow.commit()
    outcomes = await asyncio.gather(*(_post(http, s, now, policy, resolve) for s in sends))
    counts = {"delivered": 0, "retrying": 0, "failed": 0, "refused": 0}
    async with db.uow(SYSTEM_SCOPE) as uow:
        done = clock.now()
        for send, outcome in zip(sends, outcomes, strict=True):
            attempts = send.attempts + 1
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_status_code": outcome.status_code,
                "last_error": outcome.error,
            }
            if outcome.error is None:
                values |= {"status": WebhookDeliveryStatus.DELIVERED, "delivered_at": done}
                counts["delivered"] += 1
            elif outcome.refused:
                values |= {"status": WebhookDeliveryStatus.FAILED}
                counts["refused"] += 1
            elif attempts >= MAX_ATTEMPTS:
                values |= {"status": WebhookDeliveryStatus.FAILED}
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
    http: httpx.AsyncClient, send: _Send, now: datetime, policy: UrlPolicy, resolve: Resolver
) -> _Outcome:
    try:
        target = await pin(send.url, policy, resolve)
    except (UrlForbidden, UrlMalformed) as exc:
        # The URL is not logged: merchants put tokens in query strings.
        logger.warning(
            "webhook delivery %s to endpoint %s refused: %s",
            send.delivery_id,
            send.endpoint_id,
            exc,
        )
        return _Outcome(error=f"not sent: {exc}"[:500], refused=True)
    except (OSError, TimeoutError) as exc:
        return _Outcome(error=f"DNS lookup failed ({type(exc).__name__})")
    except Exception:
        # Recorded as a failed try (so MAX_ATTEMPTS ends it) rather than failing the whole
        # batch, whose other deliveries were sent and must be recorded.
        logger.exception("webhook delivery %s could not be prepared", send.delivery_id)
        return _Outcome(error="not sent: internal error")
    headers = {
        **target.headers,
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(send.secrets, int(now.timestamp()), send.body),
        EVENT_HEADER: send.event_type,
        DELIVERY_HEADER: str(send.delivery_id),
    }
    try:
        # Streamed and closed unread: only the status matters, and a receiver's body could
        # be of any size.
        async with http.stream(
            "POST",
            target.url,
            content=send.body,
            headers=headers,
            timeout=SEND_TIMEOUT,
            follow_redirects=False,
            extensions=target.extensions,
        ) as response:
            status_code = response.status_code
    except httpx.HTTPError as exc:
        return _Outcome(error=f"{type(exc).__name__}"[:500])
    if 200 <= status_code < 300:
        return _Outcome(status_code=status_code)
    return _Outcome(status_code=status_code, error=f"HTTP {status_code}")
