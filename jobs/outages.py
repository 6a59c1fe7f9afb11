"""The worker's side of dependency outages: probing, logging each one once, timing it.

`app.outages.outage_of` says whether an error means PostgreSQL or Redis is unreachable; this
module decides what the worker does about it. One `OutageTracker` per worker process: the
supervisor (arq's poll loop ended), the heartbeat (a probe failed) and the job wrapper (a job
failed) all report to it, so however many of them notice, an outage is logged once when it
begins and once when it ends, and recorded once (into Redis, when Redis answers again).
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Self

import structlog
from redis.asyncio import Redis
from sqlalchemy import text

from app.db import Database
from app.outages import Dependency, outage_of
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs.telemetry import record_outage

logger = structlog.stdlib.get_logger("portal.worker")

# A probe not answered by then has failed: against an unreachable host a connection attempt
# can hang much longer (asyncpg's own connect timeout is a minute).
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: `initial`, doubling, never more than `cap` seconds."""

    initial: float
    cap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.worker_backoff_initial_seconds, settings.worker_backoff_max_seconds)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first)."""
        return min(self.cap, self.initial * 2.0 ** min(attempt, 60))


async def probe(dependency: Dependency, *, db: Database, redis: Redis) -> Exception | None:
    """None when `dependency` answers a trivial request now, else the error it gave."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            if dependency is Dependency.DATABASE:
                async with db.session(SYSTEM_SCOPE) as session:
                    await session.execute(text("SELECT 1"))
            else:
                await redis.ping()
    except Exception as exc:
        return exc
    return None


def _detail(error: BaseException) -> str:
    # SQLAlchemy appends the statement and a documentation link: the first line says it all.
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


class OutageTracker:
    """Which dependencies are down for this worker, since when, and the outages not yet
    recorded in Redis."""

    def __init__(self) -> None:
        self._ongoing: dict[Dependency, float] = {}
        self._unrecorded: list[tuple[Dependency, float]] = []

    def active(self, dependency: Dependency) -> bool:
        return dependency in self._ongoing

    def elapsed(self, dependency: Dependency) -> float | None:
        """Seconds since the ongoing outage of `dependency` began; None when there is none."""
        started = self._ongoing.get(dependency)
        return None if started is None else time.monotonic() - started

    def begin(self, dependency: Dependency, error: BaseException) -> None:
        """Note that `dependency` is down; logs only when it was not already known to be."""
        if dependency in self._ongoing:
            return
        self._ongoing[dependency] = time.monotonic()
        logger.warning(
            "dependency outage began; waiting for it",
            dependency=dependency.value,
            error=type(error).__name__,
            detail=_detail(error),
        )

    def end(self, dependency: Dependency) -> float | None:
        """Note that `dependency` answers again; returns the outage's length if there was one."""
        started = self._ongoing.pop(dependency, None)
        if started is None:
            return None
        seconds = time.monotonic() - started
        logger.warning(
            "dependency outage ended; resuming",
            dependency=dependency.value,
            seconds=round(seconds, 2),
        )
        self._unrecorded.append((dependency, seconds))
        return seconds

    async def flush(self, redis: Redis) -> None:
        """Record finished outages in Redis (for /metrics); kept for later while it fails."""
        while self._unrecorded:
            dependency, seconds = self._unrecorded[0]
            try:
                await record_outage(redis, dependency, seconds)
            except Exception as exc:
                if outage_of(exc) is None:
                    logger.warning("metrics: could not record an outage", exc_info=exc)
                return
            self._unrecorded.pop(0)
