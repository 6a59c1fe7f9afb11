"""replayConnection, retrainModel and backgroundJob: audited requests whose jobs a real arq
worker runs over the test Redis and PostgreSQL."""

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import Role
from app.models.audit import AuditLog
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs import requested
from jobs.enqueue import enqueue_replay
from jobs.worker import FUNCTIONS
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import codes, run
from tests.support.retry import ingest, make_connection, stripe_charge

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)

REPLAY = """mutation($id: ID!, $reason: String!) { replayConnection(id: $id, reason: $reason) {
  processorConnection { id } job { id state } queued errors { code field } } }"""
RETRAIN = """mutation($reason: String!) { retrainModel(reason: $reason) {
  job { id state } queued errors { code field } } }"""
FOLLOW = """query($id: ID!) { backgroundJob(id: $id) { id state result error
  enqueuedAt finishedAt } }"""


@pytest.fixture
async def queue(services: Services) -> AsyncIterator[ArqRedis]:
    # A queue of its own: no other worker sharing this Redis runs the jobs a test queues.
    name = f"test-requested-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(RedisSettings.from_dsn(services.redis_url), default_queue_name=name)
    try:
        yield pool
    finally:
        keys = [k async for k in pool.scan_iter(match="arq:*re*:*")]
        keys += [k async for k in pool.scan_iter(match=f"*{name}*")]
        if keys:
            await pool.delete(*keys)
        await pool.aclose()


async def _work(queue: ArqRedis, db: Database, clock: FixedClock, settings: Settings) -> None:
    """Run every queued job with the worker's registered functions, then return."""
    worker = Worker(
        functions=FUNCTIONS,
        redis_pool=queue,
        queue_name=queue.default_queue_name,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        ctx={"db": db, "clock": clock, "settings": settings},
    )
    # Burst: returns once the queue is empty (deferred retries included); the pool is ours.
    await worker.main()


async def _call(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    queue: ArqRedis,
    query: str,
    token: str,
    **variables: Any,
) -> dict[str, Any]:
    result = await run(db, settings, clock, query, token=token, variables=variables, redis=queue)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


async def _audit(db: Database, action: str) -> list[AuditLog]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(select(AuditLog).where(col(AuditLog.action) == action))
        return list(rows.scalars())


async def test_replay_is_audited_queued_once_and_run(
    db: Database, settings: Settings, queue: ArqRedis
) -> None:
    clock = FixedClock(T0)
    merchant = await make_merchant(db, "Replay", now=T0)
    connection = await make_connection(db, merchant, T0)
    await ingest(db, connection, [stripe_charge(f"ch_{i}", created=T0) for i in range(3)], T0)
    support = await make_key(db, Role.SUPPORT, [], now=T0, name="support desk")
    cid = encode_id("ProcessorConnection", connection.id)

    first = (await _call(db, settings, clock, queue, REPLAY, support, id=cid, reason="bug fix"))[
        "replayConnection"
    ]
    assert first["errors"] == []
    assert first["queued"] is True
    assert first["job"]["state"] == "QUEUED"
    job_id = first["job"]["id"]
    # Asked again while the first is queued: the same job, nothing added.
    again = (await _call(db, settings, clock, queue, REPLAY, support, id=cid, reason="again"))[
        "replayConnection"
    ]
    assert again["queued"] is False
    assert again["job"]["id"] == job_id
    [entry] = await _audit(db, "processor_connection.replay")
    assert entry.actor == "api_key:support desk"
    assert entry.reason == "bug fix"
    assert entry.merchant_id == merchant.id
    assert entry.after == {"job_id": job_id}
    assert job_id == f"replay:{entry.id}"

    await _work(queue, db, clock, settings)
    followed = (await _call(db, settings, clock, queue, FOLLOW, support, id=job_id))[
        "backgroundJob"
    ]
    assert followed["state"] == "SUCCEEDED", followed
    assert followed["result"]["status"] == "replayed"
    assert followed["result"]["normalized"] == 3
    assert followed["finishedAt"] is not None
    # Done: a new request queues a new job.
    third = (await _call(db, settings, clock, queue, REPLAY, support, id=cid, reason="later"))[
        "replayConnection"
    ]
    assert third["queued"] is True
    assert third["job"]["id"] != job_id
    await _work(queue, db, clock, settings)


async def test_replay_and_follow_refuse_other_keys(
    db: Database, settings: Settings, queue: ArqRedis
) -> None:
    clock = FixedClock(T0)
    merchant = await make_merchant(db, "Own", now=T0)
    connection = await make_connection(db, merchant, T0)
    own = await make_key(db, Role.MERCHANT, [merchant], now=T0)
    support = await make_key(db, Role.SUPPORT, [], now=T0)
    cid = encode_id("ProcessorConnection", connection.id)
    variables = {"id": cid, "reason": "mine"}
    result = await run(db, settings, clock, REPLAY, token=own, variables=variables, redis=queue)
    assert codes(result) == ["FORBIDDEN"]
    result = await run(
        db, settings, clock, RETRAIN, token=own, variables={"reason": "x"}, redis=queue
    )
    assert codes(result) == ["FORBIDDEN"]
    result = await run(
        db, settings, clock, FOLLOW, token=own, variables={"id": "replay:x"}, redis=queue
    )
    assert codes(result) == ["FORBIDDEN"]
    assert await _audit(db, "processor_connection.replay") == []
    # Support: a blank reason and an unknown connection are the payload's errors.
    data = await _call(db, settings, clock, queue, REPLAY, support, id=cid, reason=" ")
    assert data["replayConnection"]["errors"] == [{"code": "INVALID", "field": "reason"}]
    unknown = encode_id("ProcessorConnection", uuid.uuid4())
    data = await _call(db, settings, clock, queue, REPLAY, support, id=unknown, reason="x")
    assert data["replayConnection"]["errors"] == [{"code": "NOT_FOUND", "field": "id"}]
    # Only requested jobs can be followed: another job's id names nothing.
    data = await _call(db, settings, clock, queue, FOLLOW, support, id=f"poll:{connection.id}")
    assert data["backgroundJob"] is None
    data = await _call(db, settings, clock, queue, FOLLOW, support, id="replay:never")
    assert data["backgroundJob"]["state"] == "UNKNOWN"


async def test_retrain_runs_the_training_job(
    db: Database, settings: Settings, queue: ArqRedis
) -> None:
    """With no settled history stored, the job says so as its result (not a failure)."""
    clock = FixedClock(T0)
    support = await make_key(db, Role.SUPPORT, [], now=T0)
    data = (await _call(db, settings, clock, queue, RETRAIN, support, reason="new data"))[
        "retrainModel"
    ]
    assert data["queued"] is True
    job_id = data["job"]["id"]
    [entry] = await _audit(db, "model.retrain")
    assert entry.merchant_id is None
    assert job_id == f"retrain:{entry.id}"
    await _work(queue, db, clock, settings)
    followed = (await _call(db, settings, clock, queue, FOLLOW, support, id=job_id))[
        "backgroundJob"
    ]
    assert followed["state"] == "SUCCEEDED"
    assert followed["result"]["status"] == "skipped"
    assert "too few to train" in followed["result"]["reason"]


async def test_a_job_whose_request_never_committed_does_nothing(
    db: Database, settings: Settings, queue: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(requested, "REQUEST_CHECK_DELAY_SECONDS", 0.05)
    clock = FixedClock(T0)
    merchant = await make_merchant(db, "Lost", now=T0)
    connection = await make_connection(db, merchant, T0)
    job_id = await enqueue_replay(queue, connection.id, uuid.uuid4())
    await _work(queue, db, clock, settings)
    support = await make_key(db, Role.SUPPORT, [], now=T0)
    followed = (await _call(db, settings, clock, queue, FOLLOW, support, id=job_id))[
        "backgroundJob"
    ]
    assert followed["state"] == "SUCCEEDED"
    assert followed["result"]["status"] == "dropped"
