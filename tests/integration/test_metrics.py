"""/metrics: Prometheus text that parses, request and job counters, database gauges."""

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from arq import Retry, create_pool
from arq import func as job
from arq.connections import RedisSettings
from arq.constants import default_queue_name, job_key_prefix
from arq.worker import Worker
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlmodel import col

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services
from app.enums import PaymentState, Processor, Role
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.outages import Dependency
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs.instrument import instrument
from jobs.outages import Backoff, OutageTracker
from jobs.telemetry import (
    heartbeats_key,
    record_job,
    record_outage,
    server_time,
    write_heartbeat,
)
from portal import metrics
from portal.asgi import Resources
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.http import portal_client, portal_http
from tests.support.queue import drop_queue, job_queue, private_queue_name

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SECRET = "sk_test_never_in_metrics"


async def _connection(
    db: Database, merchant: Merchant, settings: Settings, *, created_at: datetime
) -> ProcessorConnection:
    box = CredentialBox(settings.secret_key.get_secret_value())
    connection = ProcessorConnection(
        merchant_id=merchant.id,
        kind=Processor.STRIPE,
        name="stripe",
        base_url="http://processor.test",
        credentials_encrypted=box.seal({"api_key": SECRET}),
        created_at=created_at,
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        uow.session.add(connection)
        await uow.commit()
    return connection


async def scrape(client: httpx.AsyncClient) -> tuple[Samples, str]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, response.text


async def test_request_counts_and_latency_by_operation(
    client: httpx.AsyncClient, db: Database, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Metrics", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    before, _ = await scrape(client)
    ok = ("portal_graphql_requests_total", (("operation", "MetricsProbe"), ("status", "200")))
    bad = ("portal_graphql_requests_total", (("operation", "MetricsProbe"), ("status", "405")))
    latency = ("portal_graphql_request_duration_seconds_count", (("operation", "MetricsProbe"),))
    for _ in range(3):
        await client.post(
            "/graphql",
            json={"query": "query MetricsProbe { viewer { role } }"},
            headers={"authorization": f"Bearer {token}"},
        )
    await client.get(
        "/graphql",
        params={"query": "mutation MetricsProbe { __typename }"},
        headers={"authorization": f"Bearer {token}"},
    )
    after, _ = await scrape(client)
    assert after[ok] - before.get(ok, 0) == 3
    assert after[bad] - before.get(bad, 0) == 1
    assert after[latency] - before.get(latency, 0) == 4


# arq's Worker.close() still calls redis-py's deprecated close().
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_job_runs_are_counted_across_processes(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Jobs run by an instrumented arq worker (in burst mode) show up on the API's /metrics."""
    suffix = uuid.uuid4().hex[:8]
    queue = f"test:metrics:{suffix}"

    async def ok(ctx: dict[Any, Any]) -> str:
        return "done"

    async def flaky(ctx: dict[Any, Any]) -> None:
        if ctx["job_try"] == 1:
            raise Retry(defer=0)

    async def broken(ctx: dict[Any, Any]) -> None:
        raise RuntimeError("boom")

    async def cut_off(ctx: dict[Any, Any]) -> str:
        if ctx["job_try"] == 1:
            raise redis_errors.ConnectionError("Redis went away")
        return "done"

    names = {
        "ok": f"ok_{suffix}",
        "flaky": f"flaky_{suffix}",
        "broken": f"broken_{suffix}",
        "cut_off": f"cut_off_{suffix}",
    }
    redis_settings = RedisSettings.from_dsn(services.redis_url)
    worker = instrument(
        Worker(
            functions=[
                job(ok, name=names["ok"]),
                job(flaky, name=names["flaky"], max_tries=3),
                job(broken, name=names["broken"], max_tries=1),
                job(cut_off, name=names["cut_off"], max_tries=3),
            ],
            redis_settings=redis_settings,
            queue_name=queue,
            burst=True,
            poll_delay=0.01,
            handle_signals=False,
        ),
        OutageTracker(),
        Backoff(initial=0.01, cap=0.01),
    )
    pool = await create_pool(redis_settings, default_queue_name=queue)
    try:
        for _ in range(2):
            await pool.enqueue_job(names["ok"])
        await pool.enqueue_job(names["flaky"])
        await pool.enqueue_job(names["broken"])
        await pool.enqueue_job(names["cut_off"])
        await worker.main()
    finally:
        await worker.close()
        await pool.aclose()

    samples, _ = await scrape(client)

    def runs(job: str, outcome: str) -> float:
        return samples.get(("portal_jobs_total", (("job", names[job]), ("outcome", outcome))), 0)

    assert runs("ok", "complete") == 2
    assert runs("flaky", "retry") == 1
    assert runs("flaky", "complete") == 1
    assert runs("broken", "failed") == 1
    assert runs("ok", "failed") == 0
    # An outage is counted as such, and the job is run again rather than failed.
    assert runs("cut_off", "outage") == 1
    assert runs("cut_off", "complete") == 1
    assert runs("cut_off", "failed") == 0


async def test_record_job_directly(client: httpx.AsyncClient, redis: Redis) -> None:
    job = f"direct_{uuid.uuid4().hex[:8]}"
    await record_job(redis, job, "complete")
    await record_job(redis, job, "complete")
    samples, _ = await scrape(client)
    assert samples[("portal_jobs_total", (("job", job), ("outcome", "complete")))] == 2


async def test_worker_heartbeats_queue_depth_and_outages(
    db: Database,
    redis: Redis,
    services: Services,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """What workers write into Redis is on any replica's /metrics: heartbeat age per worker,
    the due and deferred jobs of the queue the settings name (PORTAL_QUEUE_NAME), and outages
    per dependency. A queue of this test's own: no other test run's jobs or workers count."""
    queue = private_queue_name()
    fresh, old = f"metrics-fresh-{uuid.uuid4().hex[:6]}", f"metrics-old-{uuid.uuid4().hex[:6]}"
    key = heartbeats_key(queue)
    await write_heartbeat(redis, fresh, ttl=600, queue=queue)
    await redis.zadd(key, {old: await server_time(redis) - 42})
    # Beside it on arq's default queue: not the settings' queue, so not counted.
    await write_heartbeat(redis, f"{fresh}-default", ttl=600)
    mine = settings.model_copy(update={"queue_name": queue})
    async with (
        portal_http(db, services.redis_url, mine, clock) as client,
        job_queue(services, queue) as pool,
        job_queue(services) as default_pool,
    ):
        before, _ = await scrape(client)
        # Only this test reads its queue: a job due now stays there.
        assert await pool.enqueue_job(f"never_{uuid.uuid4().hex[:8]}", _defer_by=3600)
        assert await pool.enqueue_job(f"never_{uuid.uuid4().hex[:8]}")
        # Deferred by an hour: no worker sharing this Redis runs it during the test.
        elsewhere = await default_pool.enqueue_job(f"never_{uuid.uuid4().hex[:8]}", _defer_by=3600)
        assert elsewhere is not None
        await record_outage(redis, Dependency.DATABASE, 2.5)
        await record_outage(redis, Dependency.DATABASE, 1.0)
        try:
            after, _ = await scrape(client)
        finally:
            await redis.zrem(heartbeats_key(), f"{fresh}-default")
            await drop_queue(pool)
            await default_pool.zrem(default_queue_name, elsewhere.job_id)
            await default_pool.delete(job_key_prefix + elsewhere.job_id)
    age = "portal_worker_heartbeat_age_seconds"
    assert 0 <= after[(age, (("worker", fresh),))] < 5
    assert 41 <= after[(age, (("worker", old),))] < 50
    assert (age, (("worker", f"{fresh}-default"),)) not in after
    depth = "portal_job_queue_depth"
    assert before[(depth, (("state", "deferred"),))] == 0
    assert after[(depth, (("state", "deferred"),))] == 1
    assert after[(depth, (("state", "due"),))] == 1

    def outages(name: str, dependency: str, samples: Samples) -> float:
        return samples.get((name, (("dependency", dependency),)), 0)

    count, seconds = "portal_dependency_outages_total", "portal_dependency_outage_seconds_total"
    assert outages(count, "database", after) - outages(count, "database", before) == 2
    assert outages(seconds, "database", after) - outages(seconds, "database", before) == 3.5
    # Every dependency has its series, zero or not.
    assert (count, (("dependency", "redis"),)) in after
    assert (seconds, (("dependency", "redis"),)) in after


async def test_payments_by_state_and_ingestion_lag(
    client: httpx.AsyncClient, db: Database, clock: FixedClock, settings: Settings
) -> None:
    merchant = await make_merchant(db, "Gauges", now=clock.now())
    await make_payments(db, merchant, 3, now=clock.now(), state=PaymentState.SCHEDULED)
    await make_payments(db, merchant, 2, now=clock.now(), state=PaymentState.RECOVERED)
    polled = await _connection(db, merchant, settings, created_at=clock.now())
    fresh = await _connection(db, merchant, settings, created_at=clock.now() - timedelta(minutes=5))
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(ProcessorConnection)
            .where(col(ProcessorConnection.id) == polled.id)
            .values(cursor_at=clock.now() - timedelta(seconds=90))
        )
        await uow.commit()
    async with db.session(SYSTEM_SCOPE) as session:
        by_state = select(col(Payment.state), func.count()).group_by(col(Payment.state))
        expected = dict((await session.execute(by_state)).all())

    samples, text = await scrape(client)
    for state in PaymentState:
        assert samples[("portal_payments", (("state", state.value),))] == expected.get(state, 0)
    assert expected[PaymentState.SCHEDULED] >= 3
    lag = "portal_ingestion_lag_seconds"
    assert samples[(lag, (("connection", str(polled.id)), ("processor", "stripe")))] == 90
    # Never read: lagging since it was created.
    assert samples[(lag, (("connection", str(fresh.id)), ("processor", "stripe")))] == 300
    assert samples[("portal_metrics_database_up", ())] == 1
    # The connections' credentials never reach the output.
    assert SECRET not in text


async def test_metrics_token(db: Database, redis: Redis, clock: FixedClock) -> None:
    settings = Settings(environment="test", metrics_token=SecretStr("scrape-me"))
    async with portal_client(
        settings, Resources(db=db, redis=redis, arq=None, clock=clock)
    ) as client:
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await client.get("/metrics", headers={"authorization": "Bearer scrape-me"})
        assert right.status_code == 200
        assert "portal_graphql_requests" in right.text


def test_operation_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_seen_operations", set())
    monkeypatch.setattr(metrics, "MAX_OPERATION_LABELS", 3)
    assert [metrics.operation_label(f"Op{i}") for i in range(5)] == [
        "Op0",
        "Op1",
        "Op2",
        "other",
        "other",
    ]
    assert metrics.operation_label("Op1") == "Op1"
    assert metrics.operation_label(None) == "anonymous"
    assert metrics.operation_label("x" * 65) == "other"
