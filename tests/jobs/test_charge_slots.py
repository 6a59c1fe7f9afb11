"""Charge slots on real Redis: a worker runs at most `charge_concurrency` charges and
`concurrency` other jobs at once, reads other jobs queued behind a charge backlog, and gives
slots back however a job ends."""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from arq import func
from arq.connections import ArqRedis
from arq.worker import Function

from app.embedded import Services
from app.settings import Settings
from jobs.enqueue import attempt_job_id, is_attempt_job_id
from jobs.retry import CLAIM_BATCH, CLAIM_LANES
from jobs.worker import PortalWorker, build_worker

# The jobs here never reach PostgreSQL: nothing listens there.
CLOSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:9/nothing"


class Jobs:
    """Job functions that block until let go, counting how many of each kind run at once."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.started: list[str] = []
        self.finished: list[str] = []

    async def _run(self, kind: str, label: str, until: Awaitable[Any]) -> None:
        self.running[kind] += 1
        self.peak[kind] = max(self.peak[kind], self.running[kind])
        self.started.append(label)
        try:
            await until
            self.finished.append(label)
        finally:
            self.running[kind] -= 1

    async def charge(self, ctx: dict[Any, Any], label: str) -> None:
        await self._run("charge", label, self.go.wait())

    async def other(self, ctx: dict[Any, Any], label: str) -> None:
        await self._run("other", label, self.go.wait())

    async def failing_charge(self, ctx: dict[Any, Any], label: str) -> None:
        await self._run("charge", label, self._fail())

    async def failing_other(self, ctx: dict[Any, Any], label: str) -> None:
        await self._run("other", label, self._fail())

    async def charge_held_once(self, ctx: dict[Any, Any], label: str) -> None:
        """Blocks forever on its first try (until cancelled); a later try returns."""
        wait = asyncio.Event().wait() if ctx["job_try"] == 1 else asyncio.sleep(0)
        await self._run("charge", label, wait)

    @staticmethod
    async def _fail() -> None:
        raise RuntimeError("the job failed")

    def functions(self) -> list[Function]:
        return [
            func(self.charge, name="charge"),
            func(self.other, name="other"),
            func(self.failing_charge, name="failing_charge"),
            func(self.failing_other, name="failing_other"),
            func(self.charge_held_once, name="charge_held_once", max_tries=3),
        ]


def slot_worker(
    queue: ArqRedis, redis_url: str, jobs: Jobs, *, concurrency: int, charge_concurrency: int
) -> PortalWorker:
    """A worker on the test's own queue that polls every 50 ms, with the default read limit."""
    return build_worker(
        redis_url,
        {"settings": Settings(environment="test"), "database_url": CLOSED_DATABASE},
        functions=jobs.functions(),
        cron_jobs=[],
        queue_name=queue.default_queue_name,
        poll_delay=0.05,
        concurrency=concurrency,
        charge_concurrency=charge_concurrency,
    )


async def start(worker: PortalWorker) -> None:
    worker.main_task = asyncio.create_task(worker.main())


async def enqueue_charge(queue: ArqRedis, function: str, label: str) -> str:
    job_id = attempt_job_id(uuid.uuid4(), 1)
    assert await queue.enqueue_job(function, label, _job_id=job_id) is not None
    return job_id


async def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.02)


def test_charge_job_ids_are_recognised() -> None:
    assert is_attempt_job_id(attempt_job_id(uuid.uuid4(), 3))
    assert not is_attempt_job_id(f"poll:{uuid.uuid4()}")
    assert not is_attempt_job_id("cron:claim_due:1700000000000")


async def test_charges_and_other_jobs_are_bounded_each_by_their_own_limit(
    queue: ArqRedis, services: Services
) -> None:
    jobs = Jobs()
    for n in range(5):
        await enqueue_charge(queue, "charge", f"charge {n}")
    # Queued behind every charge: it still has a slot of its own.
    assert await queue.enqueue_job("other", "other") is not None
    worker = slot_worker(queue, services.redis_url, jobs, concurrency=1, charge_concurrency=2)
    await start(worker)
    try:
        await until(
            lambda: jobs.running == Counter(charge=2, other=1),
            10,
            "two charges and the other job running together",
        )
        # Many polls later, the three other charges still wait for a charge slot.
        await asyncio.sleep(0.5)
        assert jobs.running == Counter(charge=2, other=1)
        assert len(jobs.started) == 3
        assert await queue.zcard(queue.default_queue_name) == 6
        jobs.go.set()
        await until(lambda: len(jobs.finished) == 6, 10, "every job finished")
    finally:
        await worker.close()
    assert jobs.peak == Counter(charge=2, other=1)


async def test_a_job_behind_a_charge_backlog_starts_while_charge_slots_are_full(
    queue: ArqRedis, services: Services
) -> None:
    jobs = Jobs()
    worker = slot_worker(queue, services.redis_url, jobs, concurrency=1, charge_concurrency=1)
    # The most charges claiming lets queue up (its limit, and a batch of each lane of two
    # runs that checked just below it), far past arq's own read limit (5 * max_jobs).
    backlog = Settings().claim_queue_limit + 2 * CLAIM_LANES * CLAIM_BATCH
    assert backlog > max(100, 5 * worker.max_jobs, 5 * (10 + 32))
    for chunk in range(0, backlog, 100):
        await asyncio.gather(
            *(enqueue_charge(queue, "charge", f"charge {n}") for n in range(chunk, chunk + 100))
        )
    await asyncio.sleep(0.01)  # queued strictly after the backlog (the queue's score is ms)
    assert await queue.enqueue_job("other", "behind the backlog") is not None
    assert await queue.zcard(queue.default_queue_name) == backlog + 1
    await start(worker)
    try:
        await until(
            lambda: "behind the backlog" in jobs.started,
            10,
            "the job behind the charges started",
        )
        assert jobs.running == Counter(charge=1, other=1)
    finally:
        jobs.go.set()
        await worker.close()


async def test_slots_are_given_back_when_jobs_fail_or_are_cancelled(
    queue: ArqRedis, services: Services
) -> None:
    jobs = Jobs()
    # The queue's score is the enqueue time in ms, and jobs of one score start in the order of
    # their (random) ids: each is queued a few ms after the one before, to start in this order.
    await enqueue_charge(queue, "failing_charge", "failing charge")
    await asyncio.sleep(0.005)
    held = await enqueue_charge(queue, "charge_held_once", "held charge")
    await asyncio.sleep(0.005)
    await enqueue_charge(queue, "charge", "last charge")
    await asyncio.sleep(0.005)
    assert await queue.enqueue_job("failing_other", "failing other") is not None
    await asyncio.sleep(0.005)
    assert await queue.enqueue_job("other", "last other") is not None
    worker = slot_worker(queue, services.redis_url, jobs, concurrency=1, charge_concurrency=1)
    await start(worker)
    try:
        # The failed charge's slot went to the next charge, the failed other job's to the
        # next other job.
        await until(
            lambda: "held charge" in jobs.started and "last other" in jobs.started,
            10,
            "the jobs after the failed ones started",
        )
        await asyncio.sleep(0.3)
        assert "last charge" not in jobs.started
        # Cancelled (as a stop does): its slot is given back and it is queued again.
        worker.tasks[held].cancel()
        await until(lambda: "last charge" in jobs.started, 10, "the charge after the cancelled")
        jobs.go.set()
        await until(
            lambda: {"held charge", "last charge", "last other"} <= set(jobs.finished),
            10,
            "the cancelled charge ran again and every job finished",
        )
        await until(lambda: worker.job_counter == 0, 5, "every slot free")
        assert not worker.running_charges
        assert not worker.running_others
    finally:
        await worker.close()
    assert jobs.peak == Counter(charge=1, other=1)
    assert jobs.started.count("held charge") == 2
