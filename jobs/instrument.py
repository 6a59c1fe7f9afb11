"""One wrapper around every job: runs counted by outcome; an outage re-queues, never fails.

A job that fails because PostgreSQL or Redis is unreachable did nothing wrong: failing it
would drop it (arq keeps no failed jobs to replay), so it is re-queued with `arq.Retry`,
deferred by how long the outage has lasted (between the backoff's initial delay and its cap).

Tries: arq counts every run against the function's `max_tries`, and an outage of minutes
would otherwise spend them all. When the outage is confirmed (a probe of the dependency
fails too, or it is already known to be down) the try is given back, so such retries are
bounded only by arq's job expiry (a day after the job was due, `expires_extra_ms`). When the
dependency answers the probe, the error was a blip (or an outage-looking bug): the retry
spends a try like any other, so nothing can loop forever on a misclassified error. A try
cannot be given back while Redis itself is down; that costs one try per run caught by it.

Cron jobs are not retried: the next tick runs them again, and a retry would run the same tick
twice. Their outage runs are counted and end quietly.
"""

import asyncio
import contextlib
import dataclasses
import functools
from typing import Any

import structlog
from arq import Retry
from arq.constants import retry_key_prefix
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Worker

from app.outages import Dependency, outage_of
from jobs.outages import Backoff, OutageTracker, probe
from jobs.telemetry import record_job

logger = structlog.stdlib.get_logger("portal.worker")


async def _confirmed(
    outages: OutageTracker, dependency: Dependency, error: BaseException, ctx: dict[Any, Any]
) -> bool:
    if outages.active(dependency):
        return True
    db = ctx.get("db")
    if db is None:
        return False
    failure = await probe(dependency, db=db, redis=ctx["redis"])
    if failure is None:
        return False
    outages.begin(dependency, error)
    return True


async def _give_back_try(ctx: dict[Any, Any]) -> None:
    job_id = ctx.get("job_id")
    if job_id is None:
        return
    # arq counts tries in this key, incremented as each run starts. When Redis is what is
    # down the try stays spent.
    with contextlib.suppress(Exception):
        await ctx["redis"].decr(retry_key_prefix + job_id)


def _wrap(
    name: str,
    coroutine: WorkerCoroutine,
    outages: OutageTracker,
    backoff: Backoff,
    *,
    cron: bool,
) -> WorkerCoroutine:
    @functools.wraps(coroutine)
    async def run(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        outcome = "failed"
        try:
            result = await coroutine(ctx, *args, **kwargs)
        except Retry:
            outcome = "retry"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is None:
                raise
            outcome = "outage"
            confirmed = await _confirmed(outages, dependency, exc, ctx)
            if not confirmed:
                logger.warning(
                    "job failed on an outage error, yet the dependency answers",
                    job=name,
                    dependency=dependency.value,
                    exc_info=exc,
                )
            if cron:
                return None
            if confirmed:
                await _give_back_try(ctx)
                defer = min(backoff.cap, max(backoff.initial, outages.elapsed(dependency) or 0.0))
            else:
                defer = backoff.delay(int(ctx.get("job_try", 1)) - 1)
            raise Retry(defer=defer) from exc
        else:
            outcome = "complete"
            return result
        finally:
            await asyncio.shield(record_job(ctx["redis"], name, outcome))

    return run


def instrument(worker: Worker, outages: OutageTracker, backoff: Backoff) -> Worker:
    """Wrap every job and cron job of `worker` (see the module's docstring)."""
    for name, function in list(worker.functions.items()):
        wrapped = _wrap(
            name, function.coroutine, outages, backoff, cron=isinstance(function, CronJob)
        )
        worker.functions[name] = dataclasses.replace(function, coroutine=wrapped)
    return worker
