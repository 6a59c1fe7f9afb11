"""The supervised worker on real Redis and PostgreSQL: a Redis outage waited out, a crashed
poll loop restarted, outage-hit jobs retried (not dropped), stops that drain then re-queue."""

import asyncio
import io
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions as redis_errors
from arq import create_pool, cron, func
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix
from arq.cron import CronJob
from arq.jobs import Job, JobStatus
from arq.worker import Function
from sqlalchemy import text

from app.db import Database
from app.embedded import Services
from app.outages import Dependency
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs.supervisor import Supervisor
from jobs.telemetry import heartbeats_key, job_counts, outage_totals
from jobs.worker import PortalWorker, build_worker
from tests.support.logs import json_logs
from tests.support.private_redis import PrivateRedis

# Nothing listens there: a database that is down for the whole test.
CLOSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:9/nothing"
OUTAGE_BEGAN = "dependency outage began; waiting for it"
OUTAGE_ENDED = "dependency outage ended; resuming"


def fast_settings(**changes: Any) -> Settings:
    """Backoff and heartbeat in tenths of seconds, so outages play out in a few seconds."""
    return Settings(environment="test").model_copy(
        update={
            "worker_backoff_initial_seconds": 0.2,
            "worker_backoff_max_seconds": 1.0,
            "worker_heartbeat_seconds": 0.3,
            **changes,
        }
    )


class Logs:
    """The JSON lines the portal writes, as an operator reads them."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self._stream.getvalue().splitlines() if line]
        return [line for line in lines if line.get("event") == name]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with json_logs("INFO") as stream:
        yield Logs(stream)


def queue_worker(
    queue: ArqRedis,
    redis_url: str,
    settings: Settings,
    db: Database,
    *functions: Function,
    cron_jobs: Sequence[CronJob] = (),
    **options: Any,
) -> PortalWorker:
    """A worker on the test's own queue that polls every 50 ms."""
    return build_worker(
        redis_url,
        {"settings": settings, "db": db},
        functions=functions,
        cron_jobs=cron_jobs,
        queue_name=queue.default_queue_name,
        poll_delay=0.05,
        **options,
    )


async def run_one_job(
    queue: ArqRedis, redis_url: str, settings: Settings, db: Database, function: Function
) -> Job:
    """Queue one run of `function`, then run a burst worker under the supervisor until the queue
    is empty; `db` is disposed of at the end."""
    worker = queue_worker(queue, redis_url, settings, db, function, burst=True)
    job = await queue.enqueue_job(function.name)
    assert job is not None
    try:
        await asyncio.wait_for(Supervisor(worker, settings).run(), 20)
    finally:
        await db.dispose()
    return job


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)


async def test_a_redis_outage_is_waited_out_and_the_worker_resumes(
    tmp_path: Path, database_url: str, logs: Logs
) -> None:
    redis_server = PrivateRedis(tmp_path)
    await redis_server.start()
    settings = fast_settings()
    runs: list[str] = []
    ticks: list[float] = []

    async def record(ctx: dict[Any, Any], label: str) -> None:
        runs.append(label)

    async def tick(ctx: dict[Any, Any]) -> None:
        ticks.append(time.monotonic())

    async def slow(ctx: dict[Any, Any]) -> str:
        runs.append("slow")
        await asyncio.sleep(1.5)
        return "finished while Redis was down"

    db = Database.from_url(database_url, pool_size=2)
    worker = build_worker(
        redis_server.url,
        {"settings": settings, "db": db},
        functions=[func(record, name="record"), func(slow, name="slow")],
        cron_jobs=[cron(tick, second=set(range(60)), unique=True)],
        poll_delay=0.05,
    )
    supervisor = Supervisor(worker, settings, worker_id="outage-test")
    running = asyncio.create_task(supervisor.run())
    # The settings' queue (PORTAL_QUEUE_NAME when set), which the worker takes jobs from.
    client = await create_pool(
        RedisSettings.from_dsn(redis_server.url), default_queue_name=settings.queue_name
    )
    beats = heartbeats_key(settings.queue_name)

    async def heartbeat() -> float:
        return float(await client.zscore(beats, "outage-test") or 0)

    try:
        await until(lambda: _positive(heartbeat()), 10, "a first heartbeat")
        before = await heartbeat()
        # Due while Redis is down; Redis keeps it (it saves on shutdown) and it runs after.
        await client.enqueue_job("record", "due during the outage", _defer_by=2)
        # Running when Redis goes, done before it is back: its result waits for Redis.
        slow_job = await client.enqueue_job("slow")
        assert slow_job is not None

        async def slow_started() -> bool:
            return "slow" in runs

        await until(slow_started, 5, "the slow job started")
        await redis_server.stop()
        await asyncio.sleep(5)
        restarted = time.monotonic()
        await redis_server.start()
        await client.enqueue_job("record", "queued after")
        wanted = {"due during the outage", "queued after"}

        async def both_ran() -> bool:
            return wanted <= set(runs)

        async def beat_again() -> bool:
            return await heartbeat() > before

        async def ticked_again() -> bool:
            return any(t > restarted for t in ticks)

        await until(both_ran, 15, "the queued jobs ran")
        await until(beat_again, 10, "the heartbeat advanced")
        await until(ticked_again, 10, "the cron job ticked again")
        totals = await outage_totals(client)
        slow_result = await slow_job.result(timeout=5)
    finally:
        await supervisor.stop()
        await running
        await client.aclose()
        await db.dispose()
        await redis_server.kill()

    began, ended = logs.events(OUTAGE_BEGAN), logs.events(OUTAGE_ENDED)
    assert [e["dependency"] for e in began] == ["redis"]
    # Mostly ConnectionError; a WatchError when Redis went away inside one of arq's
    # transactions (redis-py raises it from the ConnectionError).
    assert began[0]["error"] in {"ConnectionError", "WatchError"}
    assert [e["dependency"] for e in ended] == ["redis"]
    assert 5 <= ended[0]["seconds"] < 10
    assert totals[Dependency.REDIS].count == 1
    assert totals[Dependency.REDIS].seconds == pytest.approx(ended[0]["seconds"], abs=0.01)
    assert totals[Dependency.DATABASE].count == 0
    assert runs.count("queued after") == 1
    # Recorded once Redis was back, not run a second time.
    assert slow_result == "finished while Redis was down"
    assert runs.count("slow") == 1


async def test_a_job_start_cut_off_by_redis_gives_its_slot_back(tmp_path: Path) -> None:
    """arq takes a slot before its Redis transaction and keeps it when Redis fails there: a
    few outages would leave a worker that takes no jobs while it looks alive."""
    redis_server = PrivateRedis(tmp_path)
    await redis_server.start()
    settings = fast_settings()

    async def noop(ctx: dict[Any, Any]) -> None:
        return None

    worker = build_worker(
        redis_server.url,
        {"settings": settings, "database_url": CLOSED_DATABASE},
        functions=[func(noop, name="noop")],
        cron_jobs=[],
        concurrency=1,
        charge_concurrency=1,
    )
    try:
        await worker.connect()
        await redis_server.stop()
        for _ in range(3):
            with pytest.raises(redis_errors.ConnectionError):
                await worker.start_jobs([b"some-job"])
        assert worker.job_counter == 0
        assert worker.tasks == {}
        # All of arq's semaphore (max_jobs + 1) is free again.
        for _ in range(3):
            await asyncio.wait_for(worker.sem.acquire(), 1)
    finally:
        await worker.close()
        await redis_server.kill()


async def _positive(value: Awaitable[float]) -> bool:
    return await value > 0


async def test_a_crashed_poll_loop_restarts_and_cron_outages_do_not_stop_it(
    queue: ArqRedis,
    services: Services,
    database_url: str,
    logs: Logs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = fast_settings()
    suffix = uuid.uuid4().hex[:8]
    runs: list[str] = []
    cron_tries: list[int] = []

    async def record(ctx: dict[Any, Any], label: str) -> None:
        runs.append(label)

    async def flaky_cron(ctx: dict[Any, Any]) -> None:
        cron_tries.append(ctx["job_try"])
        # What asyncpg raises when PostgreSQL refuses connections (here it does answer).
        raise ConnectionRefusedError(111, "Connection refused")

    db = Database.from_url(database_url, pool_size=2)
    worker = queue_worker(
        queue,
        services.redis_url,
        settings,
        db,
        func(record, name=f"record_{suffix}"),
        cron_jobs=[cron(flaky_cron, name=f"cron_{suffix}", second=set(range(60)), unique=True)],
    )
    original = worker.heart_beat
    turns = 0

    async def heart_beat() -> None:
        nonlocal turns
        turns += 1
        if turns == 5:
            raise RuntimeError("a bug in the poll loop")
        await original()

    monkeypatch.setattr(worker, "heart_beat", heart_beat)
    supervisor = Supervisor(worker, settings)
    running = asyncio.create_task(supervisor.run())
    try:

        async def crashed() -> bool:
            return bool(logs.events("worker loop crashed; restarting"))

        await until(crashed, 10, "the crash was logged")
        await queue.enqueue_job(f"record_{suffix}", "after the crash")

        async def ran() -> bool:
            return runs == ["after the crash"] and len(cron_tries) >= 2

        await until(ran, 10, "a job and two cron ticks ran after the crash")
    finally:
        await supervisor.stop()
        await running
        await db.dispose()

    [crash] = logs.events("worker loop crashed; restarting")
    assert "RuntimeError: a bug in the poll loop" in crash["exception"]
    # A cron job is never retried (its next tick runs anyway) and never counts as failed.
    assert set(cron_tries) == {1}
    counts = await job_counts(queue)
    assert counts.get((f"cron_{suffix}", "outage"), 0) >= 2
    assert counts.get((f"cron_{suffix}", "failed"), 0) == 0
    # PostgreSQL answered the probe: no outage was declared, the error was reported instead.
    assert logs.events(OUTAGE_BEGAN) == []
    assert logs.events("job failed on an outage error, yet the dependency answers")


async def test_a_job_hit_by_an_outage_is_retried_without_spending_a_try(
    queue: ArqRedis, services: Services, logs: Logs
) -> None:
    settings = fast_settings()
    name = f"charge_{uuid.uuid4().hex[:8]}"
    tries: list[int] = []

    async def charge(ctx: dict[Any, Any]) -> str:
        tries.append(ctx["job_try"])
        if len(tries) == 1:
            async with ctx["db"].session(SYSTEM_SCOPE) as session:
                await session.execute(text("SELECT 1"))
        return "charged"

    down = Database.from_url(CLOSED_DATABASE)
    # max_tries=1: had the outage spent the try, the second run would be refused by arq.
    function = func(charge, name=name, max_tries=1)
    job = await run_one_job(queue, services.redis_url, settings, down, function)
    assert tries == [1, 1]
    assert await job.result(timeout=1) == "charged"
    counts = await job_counts(queue)
    assert counts[name, "outage"] == 1
    assert counts[name, "complete"] == 1
    assert [e["dependency"] for e in logs.events(OUTAGE_BEGAN)] == ["database"]


async def test_an_outage_looking_error_while_the_dependency_answers_spends_tries(
    queue: ArqRedis, services: Services, database_url: str, logs: Logs
) -> None:
    """A bare socket error is classified as PostgreSQL's, but if PostgreSQL answers it may be
    a bug: such retries count, so the job cannot loop forever."""
    settings = fast_settings()
    name = f"misread_{uuid.uuid4().hex[:8]}"
    tries: list[int] = []

    async def misread(ctx: dict[Any, Any]) -> None:
        tries.append(ctx["job_try"])
        raise FileNotFoundError(2, "No such file or directory")

    db = Database.from_url(database_url, pool_size=1)
    function = func(misread, name=name, max_tries=2)
    job = await run_one_job(queue, services.redis_url, settings, db, function)
    assert tries == [1, 2]
    info = await job.result_info()
    assert info is not None
    assert not info.success
    assert logs.events(OUTAGE_BEGAN) == []


async def test_a_stop_lets_short_jobs_finish_and_requeues_the_rest(
    queue: ArqRedis, services: Services, database_url: str, logs: Logs
) -> None:
    settings = fast_settings(worker_shutdown_grace_seconds=1.0)
    name = f"work_{uuid.uuid4().hex[:8]}"
    begun: list[str] = []
    finished: list[str] = []

    async def work(ctx: dict[Any, Any], label: str, seconds: float) -> None:
        if ctx["job_try"] > 1:
            finished.append(f"{label} again")
            return
        begun.append(label)
        await asyncio.sleep(seconds)
        finished.append(label)

    db = Database.from_url(database_url, pool_size=1)

    def make(**kwargs: Any) -> Supervisor:
        worker = queue_worker(
            queue, services.redis_url, settings, db, func(work, name=name), **kwargs
        )
        return Supervisor(worker, settings)

    supervisor = make()
    running = asyncio.create_task(supervisor.run())
    try:
        await queue.enqueue_job(name, "short", 0.5, _job_id=f"{name}:short")
        await queue.enqueue_job(name, "long", 60.0, _job_id=f"{name}:long")

        async def both_begun() -> bool:
            return sorted(begun) == ["long", "short"]

        await until(both_begun, 10, "both jobs started")
        # Due only once the stop has begun: never taken by this worker.
        await queue.enqueue_job(name, "late", 0.0, _job_id=f"{name}:late", _defer_by=0.3)
        stopping = time.monotonic()
        await supervisor.stop()
        took = time.monotonic() - stopping
        await running
        # The short job finished within the grace; the long one was handed back to the queue
        # at once (no in-progress key left to wait for) and the late one was never taken.
        assert finished == ["short"]
        assert 1.0 <= took < 5
        long_job = Job(f"{name}:long", queue, _queue_name=queue.default_queue_name)
        assert await long_job.status() is JobStatus.queued
        assert not await queue.exists(in_progress_key_prefix + f"{name}:long")
        [cancelled] = logs.events("cancelling running jobs; they will run again")
        assert cancelled["jobs"] == 1
        # The next worker runs both.
        await asyncio.wait_for(make(burst=True).run(), 20)
        assert sorted(finished) == ["late", "long again", "short"]
    finally:
        if not running.done():
            await supervisor.stop()
        await db.dispose()


async def test_a_second_stop_request_cancels_running_jobs_at_once(
    queue: ArqRedis, services: Services, database_url: str, logs: Logs
) -> None:
    settings = fast_settings(worker_shutdown_grace_seconds=30.0)
    name = f"stuck_{uuid.uuid4().hex[:8]}"
    begun = asyncio.Event()

    async def stuck(ctx: dict[Any, Any]) -> None:
        begun.set()
        await asyncio.sleep(60)

    db = Database.from_url(database_url, pool_size=1)
    worker = queue_worker(queue, services.redis_url, settings, db, func(stuck, name=name))
    supervisor = Supervisor(worker, settings)
    running = asyncio.create_task(supervisor.run())
    try:
        await queue.enqueue_job(name, _job_id=f"{name}:1")
        await asyncio.wait_for(begun.wait(), 10)
        stopping = time.monotonic()
        # As a second SIGTERM would: the grace of 30 s is not waited for.
        supervisor.request_stop()
        supervisor.request_stop()
        await asyncio.wait_for(running, 10)
        assert time.monotonic() - stopping < 5
        job = Job(f"{name}:1", queue, _queue_name=queue.default_queue_name)
        assert await job.status() is JobStatus.queued
        assert logs.events("asked to stop again: cancelling running jobs now")
    finally:
        if not running.done():
            await supervisor.stop()
        await db.dispose()


def test_a_killed_workers_jobs_are_delivered_again_within_minutes() -> None:
    """arq holds every started job for the longest job timeout + 10 s: the portal's worker keeps
    that hold at MAX_JOB_SECONDS + 10, so a killed worker's polls and charges run again within
    minutes, not after the longest job a support request may start."""
    from jobs.worker import CRON_JOBS, FUNCTIONS, MAX_JOB_SECONDS

    worker = build_worker(
        "redis://127.0.0.1:9/0", {"settings": Settings(environment="test")}, concurrency=1
    )
    assert worker.in_progress_timeout_s == MAX_JOB_SECONDS + 10
    timeouts = [f.timeout_s for f in FUNCTIONS] + [c.timeout_s for c in CRON_JOBS]
    assert all(t is not None and t <= MAX_JOB_SECONDS for t in timeouts)
