"""What workers report through Redis: job runs by outcome, heartbeats, outages, queue depth.

Workers run in their own processes (several of them), yet any API replica's /metrics and
/readyz must see every one: so nothing here lives in process memory. Times come from the Redis
server's clock, shared by every writer and reader, never from a host's clock (hosts drift) nor
from the portal's clock (the demo accelerates it).
"""

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, cast

from arq.constants import default_queue_name
from redis.asyncio import Redis

from app.outages import Dependency, outage_of

logger = logging.getLogger("portal.jobs")

JOB_COUNTS_KEY = "portal:metrics:jobs"
# complete: returned; retry: raised arq.Retry; outage: PostgreSQL or Redis was unreachable
# (re-queued, or for a cron job left to its next tick); failed: raised; cancelled: shutdown.
JOB_OUTCOMES = ("complete", "retry", "outage", "failed", "cancelled")
OUTAGES_KEY = "portal:metrics:outages"
HEARTBEATS_PREFIX = "portal:worker:heartbeats:"


async def record_job(redis: Redis, job: str, outcome: str) -> None:
    """Count one run of `job` with an outcome of `JOB_OUTCOMES`; never fails the caller."""
    try:
        await cast(Awaitable[int], redis.hincrby(JOB_COUNTS_KEY, f"{job}|{outcome}", 1))
    except Exception as exc:
        # During a Redis outage every finishing job lands here: one line each, no traceback.
        logger.warning(
            "metrics: could not count a run of %s (%s)",
            job,
            type(exc).__name__,
            exc_info=outage_of(exc) is None,
        )


async def job_counts(redis: Redis) -> dict[tuple[str, str], int]:
    """Runs by (job, outcome), summed over every worker."""
    counts = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(JOB_COUNTS_KEY))
    found: dict[tuple[str, str], int] = {}
    for field, value in counts.items():
        job, _, outcome = field.decode().rpartition("|")
        found[job, outcome] = int(value)
    return found


async def server_time(redis: Redis) -> float:
    """The Redis server's clock, in seconds since the epoch."""
    seconds, micros = await redis.time()
    return int(seconds) + int(micros) / 1_000_000


def heartbeats_key(queue: str = default_queue_name) -> str:
    return HEARTBEATS_PREFIX + queue


async def write_heartbeat(
    redis: Redis, worker_id: str, *, ttl: float, queue: str = default_queue_name
) -> float:
    """Record that `worker_id` is alive now; entries older than `ttl` are dropped, and the whole
    key expires when no worker writes for `ttl`. Returns the time written."""
    now = await server_time(redis)
    key = heartbeats_key(queue)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {worker_id: now})
        pipe.zremrangebyscore(key, "-inf", now - ttl)
        pipe.expire(key, max(1, int(ttl)))
        await pipe.execute()
    return now


async def remove_heartbeat(
    redis: Redis, worker_id: str, *, queue: str = default_queue_name
) -> None:
    """A worker that stops cleanly leaves at once instead of going stale."""
    await cast(Awaitable[int], redis.zrem(heartbeats_key(queue), worker_id))


async def heartbeat_ages(
    redis: Redis, *, ttl: float, queue: str = default_queue_name
) -> dict[str, float]:
    """Seconds since each worker's last heartbeat, for workers heard from within `ttl`."""
    now = await server_time(redis)
    rows = await redis.zrangebyscore(heartbeats_key(queue), now - ttl, "+inf", withscores=True)
    return {member.decode(): max(0.0, now - float(score)) for member, score in rows}


WorkerState = Literal["ok", "stale", "none"]


async def worker_state(
    redis: Redis, *, stale_after: float, ttl: float, queue: str = default_queue_name
) -> WorkerState:
    """ok: some worker's heartbeat is fresh; stale: workers were heard from, none lately;
    none: no worker within `ttl`."""
    ages = await heartbeat_ages(redis, ttl=ttl, queue=queue)
    if not ages:
        return "none"
    return "ok" if min(ages.values()) <= stale_after else "stale"


async def record_outage(redis: Redis, dependency: Dependency, seconds: float) -> None:
    """Add one finished outage of `dependency` lasting `seconds`."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(OUTAGES_KEY, f"{dependency.value}|count", 1)
        pipe.hincrbyfloat(OUTAGES_KEY, f"{dependency.value}|seconds", seconds)
        await pipe.execute()


@dataclass(frozen=True)
class OutageTotals:
    """Finished outages of one dependency, summed over every worker."""

    count: int = 0
    seconds: float = 0.0


async def outage_totals(redis: Redis) -> dict[Dependency, OutageTotals]:
    """Every dependency, zero included, so a series never vanishes from a dashboard."""
    raw = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(OUTAGES_KEY))
    values = {k.decode(): v.decode() for k, v in raw.items()}
    return {
        dependency: OutageTotals(
            count=int(values.get(f"{dependency.value}|count", "0")),
            seconds=float(values.get(f"{dependency.value}|seconds", "0")),
        )
        for dependency in Dependency
    }


@dataclass(frozen=True)
class QueueDepth:
    """Jobs waiting in an arq queue: due now, and deferred to later."""

    due: int
    deferred: int


async def queue_depth(redis: Redis, queue: str = default_queue_name) -> QueueDepth:
    # arq scores queued jobs by the millisecond they are due.
    now_ms = int(await server_time(redis) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zcount(queue, f"({now_ms}", "+inf")
        due, deferred = await pipe.execute()
    return QueueDepth(due=int(due), deferred=int(deferred))
