"""Retry engine jobs called with a real worker context (database, Redis queue, HTTP client)."""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq import Retry, create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, JobStatus
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import MerchantStatus, PaymentState, RetryStrategy
from app.models.merchant import Merchant
from app.models.webhook_endpoint import WebhookDelivery
from app.services.retry_policy import PolicyChanges, update_retry_policy
from app.services.webhook_endpoint import create_endpoint
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.webhook_delivery import SIGNATURE_HEADER, verify
from jobs.enqueue import attempt_job_id, enqueue_attempt
from jobs.retry import attempt_payment, claim_due, decide_pending, deliver_webhooks
from jobs.telemetry import heartbeats_key, write_heartbeat
from tests.support.factories import make_merchant, set_strategy
from tests.support.retry import BOX, ingest, make_connection, reload, stripe_charge
from tests.support.webhooks import PUBLIC, table_resolver

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
SECRET = "whsec_0123456789abcdef"


class Processor:
    """Stripe's charge endpoints over httpx's mock transport, plus a merchant webhook URL."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.charges: dict[str, dict[str, Any]] = {}
        self.timeouts = 0
        self.hooks: list[httpx.Request] = []
        self.hook_failures = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        # Deliveries go to the address the name was vetted at, naming the host in Host.
        if request.headers["host"] == "merchant.test":
            assert request.url.host == PUBLIC
            self.hooks.append(request)
            if self.hook_failures:
                self.hook_failures -= 1
                return httpx.Response(500)
            return httpx.Response(204)
        if request.method == "GET" and path.startswith("/stripe/v1/charges/"):
            charge_id = path.rsplit("/", 1)[1]
            return httpx.Response(200, json=stripe_charge(charge_id, created=self.now))
        if request.method == "POST" and path == "/stripe/v1/charges":
            if self.timeouts:
                self.timeouts -= 1
                raise httpx.ReadTimeout("timed out", request=request)
            key = request.headers["idempotency-key"]
            if key not in self.charges:
                charge_id = f"ch_job_{len(self.charges) + 1}"
                self.charges[key] = stripe_charge(charge_id, created=self.now, status="succeeded")
            return httpx.Response(200, json=self.charges[key])
        return httpx.Response(404, json={"error": {"type": "invalid_request_error"}})


@pytest.fixture
async def queue(services: Services) -> AsyncIterator[ArqRedis]:
    # A queue of its own: no worker sharing this Redis runs the jobs a test queues.
    name = f"test-retry-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(RedisSettings.from_dsn(services.redis_url), default_queue_name=name)
    try:
        yield pool
    finally:
        keys = [k async for k in pool.scan_iter(match="arq:*attempt:*")]
        if keys:
            await pool.delete(*keys)
        await pool.delete(name)
        await pool.aclose()


def _ctx(
    db: Database, queue: ArqRedis, clock: FixedClock, processor: Processor, settings: Settings
) -> Any:
    http = httpx.AsyncClient(transport=httpx.MockTransport(processor.handle))
    webhook_http = httpx.AsyncClient(transport=httpx.MockTransport(processor.handle))
    return {
        "redis": queue,
        "job_try": 1,
        "settings": settings,
        "db": db,
        "http": http,
        "webhook_http": webhook_http,
        "resolve": table_resolver({"merchant.test": [PUBLIC]}),
        "box": BOX,
        "clock": clock,
    }


async def _payment(db: Database) -> uuid.UUID:
    merchant = await make_merchant(db, f"Jobs {uuid.uuid4().hex[:6]}", now=T0)
    # These tests follow the fixed schedule's days; new merchants start on the model.
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, T0, base_url="http://processor.test/stripe")
    charge = stripe_charge(f"ch_{uuid.uuid4().hex[:10]}", created=T0)
    [payment] = await ingest(db, connection, [charge], T0)
    return payment.id


async def test_decide_claim_and_attempt_jobs_recover_a_payment(
    db: Database, queue: ArqRedis, settings: Settings
) -> None:
    clock = FixedClock(T0)
    processor = Processor(T0)
    ctx = _ctx(db, queue, clock, processor, settings)
    payment_id = await _payment(db)
    assert await decide_pending(ctx) >= 1
    assert (await reload(db, payment_id)).state is PaymentState.SCHEDULED
    clock.set(T0 + timedelta(days=1))
    assert await claim_due(ctx) >= 1
    job_id = attempt_job_id(payment_id, 1)
    assert await Job(job_id, queue, _queue_name=queue.default_queue_name).status() in {
        JobStatus.queued,
        JobStatus.deferred,
    }
    # A second enqueue of the same attempt is a no-op while the first is queued.
    assert not await enqueue_attempt(queue, payment_id, 1)
    result = await attempt_payment(ctx, str(payment_id), 1)
    assert result == {"status": "recorded", "state": "RECOVERED"}
    assert len(processor.charges) == 1
    # At-least-once delivery: running the job again charges nothing.
    assert (await attempt_payment(ctx, str(payment_id), 1))["status"] == "skipped"
    assert len(processor.charges) == 1
    await ctx["http"].aclose()
    await ctx["webhook_http"].aclose()


async def test_attempt_job_retries_an_unanswered_charge_with_the_same_key(
    db: Database, queue: ArqRedis, settings: Settings
) -> None:
    clock = FixedClock(T0)
    processor = Processor(T0)
    ctx = _ctx(db, queue, clock, processor, settings)
    payment_id = await _payment(db)
    await decide_pending(ctx)
    clock.set(T0 + timedelta(days=1))
    await claim_due(ctx)
    processor.timeouts = 3  # every inline try of the first run times out
    with pytest.raises(Retry):
        await attempt_payment(ctx, str(payment_id), 1)
    assert (await reload(db, payment_id)).state is PaymentState.RETRYING
    ctx["job_try"] = 2
    assert (await attempt_payment(ctx, str(payment_id), 1))["state"] == "RECOVERED"
    assert len(processor.charges) == 1
    await ctx["http"].aclose()
    await ctx["webhook_http"].aclose()


async def test_webhooks_are_signed_retried_and_recorded(
    db: Database, queue: ArqRedis, settings: Settings
) -> None:
    clock = FixedClock(T0)
    processor = Processor(T0)
    ctx = _ctx(db, queue, clock, processor, settings)
    payment_id = await _payment(db)
    payment = await reload(db, payment_id)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await create_endpoint(
            uow,
            principal=system_principal(),
            merchant_id=payment.merchant_id,
            url="https://merchant.test/hooks",
            secret=SECRET,
            box=BOX,
            policy=settings.url_policy,
            now=T0,
        )
        await uow.commit()
    await decide_pending(ctx)  # emits payment.scheduled
    processor.hook_failures = 1
    first = await deliver_webhooks(ctx)
    assert first["dispatched"] >= 1
    assert first["retrying"] == 1
    assert first["delivered"] == 0
    # Not due again until the backoff has passed.
    assert (await deliver_webhooks(ctx))["retrying"] == 0
    clock.set(T0 + timedelta(seconds=31))
    assert (await deliver_webhooks(ctx))["delivered"] == 1
    sent = processor.hooks[-1]
    assert sent.headers["Portal-Event"] == "payment.scheduled"
    signed_at = int((T0 + timedelta(seconds=31)).timestamp())
    assert verify(SECRET, sent.headers[SIGNATURE_HEADER], sent.content, now=signed_at)
    assert not verify(
        "another-secret-value", sent.headers[SIGNATURE_HEADER], sent.content, now=signed_at
    )
    body = json.loads(sent.content)
    assert body["data"]["payment_id"] == str(payment_id)
    assert body["data"]["state"] == "SCHEDULED"
    # Both tries carried the same event: receivers deduplicate on the delivery id.
    assert processor.hooks[0].content == sent.content
    async with db.session(SYSTEM_SCOPE) as s:
        [delivery] = (
            await s.execute(
                select(WebhookDelivery).where(
                    col(WebhookDelivery.merchant_id) == payment.merchant_id
                )
            )
        ).scalars()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 204)
    await ctx["http"].aclose()
    await ctx["webhook_http"].aclose()


async def test_decide_job_re_decides_after_a_policy_change_and_expires_held_windows(
    db: Database, queue: ArqRedis, settings: Settings
) -> None:
    clock = FixedClock(T0)
    ctx = _ctx(db, queue, clock, Processor(T0), settings)
    scheduled, held = await _payment(db), await _payment(db)
    held_merchant = (await reload(db, held)).merchant_id
    scheduled_merchant = (await reload(db, scheduled)).merchant_id
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchant = await uow.session.get(Merchant, held_merchant)
        assert merchant is not None
        merchant.status = MerchantStatus.PAUSED
        await uow.commit()
    await decide_pending(ctx)
    assert (await reload(db, held)).state is PaymentState.PENDING
    async with db.uow(SYSTEM_SCOPE) as uow:
        await update_retry_policy(
            uow,
            principal=system_principal(),
            merchant_id=scheduled_merchant,
            expected_version=1,
            changes=PolicyChanges(fixed_schedule_days=[3, 5]),
            reason="slower schedule",
            now=T0,
        )
        await uow.commit()
    clock.set(T0 + timedelta(hours=1))
    await decide_pending(ctx)
    after = await reload(db, scheduled)
    assert (after.policy_version, after.next_retry_at) == (2, T0 + timedelta(days=3))
    assert (await reload(db, held)).state is PaymentState.PENDING
    clock.set(T0 + timedelta(days=14))
    await decide_pending(ctx)
    assert (await reload(db, held)).state is PaymentState.EXHAUSTED
    await ctx["http"].aclose()
    await ctx["webhook_http"].aclose()


async def test_claim_waits_while_the_queue_holds_its_limit_of_ready_jobs(
    db: Database, queue: ArqRedis, settings: Settings
) -> None:
    """Cron runs queue behind charge jobs: claiming stops while the queue holds its limit of
    waiting jobs beside the charges live workers may be running (a running job stays queued),
    and the payments it left due are claimed once the queue has drained below that."""
    clock = FixedClock(T0)
    processor = Processor(T0)
    limits = {"claim_queue_limit": 3, "worker_charge_concurrency": 2}
    ctx = _ctx(db, queue, clock, processor, settings.model_copy(update=limits))
    payment_id = await _payment(db)
    await decide_pending(ctx)
    clock.set(T0 + timedelta(days=1))
    # No heartbeat yet: this worker alone, so 3 waiting + 2 running.
    waiting = [uuid.uuid4() for _ in range(5)]
    for other in waiting:
        assert await enqueue_attempt(queue, other, 1)
    # A job deferred to later is not ready: it does not count.
    await queue.enqueue_job("poll_connection", "x", _defer_by=timedelta(hours=1))
    assert await claim_due(ctx) == 0
    assert (await reload(db, payment_id)).state is PaymentState.SCHEDULED
    # A second live worker may run two more charges: the same queue is below the limit.
    await write_heartbeat(queue, "other-worker", ttl=60, queue=queue.default_queue_name)
    await write_heartbeat(queue, "this-worker", ttl=60, queue=queue.default_queue_name)
    assert await claim_due(ctx) == 1
    assert (await reload(db, payment_id)).state is PaymentState.RETRYING
    await queue.delete(heartbeats_key(queue.default_queue_name))
    await ctx["http"].aclose()
    await ctx["webhook_http"].aclose()
