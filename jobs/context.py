"""The worker's context: resources built once at worker start-up and closed at shutdown."""

import gc
from typing import Any, TypedDict

import httpx
from arq.connections import ArqRedis

from app.clock import Clock, clock_from_settings
from app.crypto import CredentialBox
from app.db import Database
from app.processors.base import DEFAULT_TIMEOUT
from app.services.retry.pinning import Resolver, delivery_client, resolve_host
from app.settings import Settings, get_settings


class WorkerContext(TypedDict):
    """What every job receives (arq adds `redis`, `job_id`, `job_try` …)."""

    redis: ArqRedis
    job_try: int
    settings: Settings
    db: Database
    http: httpx.AsyncClient
    # Merchant webhooks go out on their own client (pinned to vetted addresses, no keep-alive,
    # no redirects), resolved through `resolve`.
    webhook_http: httpx.AsyncClient
    resolve: Resolver
    box: CredentialBox
    clock: Clock


# The cyclic collector's generation thresholds in a worker (and an API process, which
# `portal/asgi.py` tunes the same way). An ingested batch allocates tens of
# thousands of short-lived containers (a thousand parsed records, their rows and parameters)
# that live for one transaction: at the default 700 they reach the oldest generation, whose
# collections then walk the whole heap several times a minute (a fifth of a poller's CPU in
# `bench/ingest.py`). Reference counting frees them; cycles wait a little longer.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_garbage_collector() -> None:
    """Collect the young generation less often (`GC_THRESHOLDS`) and, the first time, freeze
    what start-up allocated (modules, tables, engine: never garbage) out of the collector's
    sight, after collecting what is garbage already."""
    if gc.get_threshold() != GC_THRESHOLDS:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


async def startup(ctx: dict[str, Any]) -> None:
    """Fill the context; values already present (an in-process worker, tests) are kept.

    A supervised worker runs this again each time its poll loop restarts (after an outage):
    nothing is built twice, so the engine and the HTTP client live as long as the worker.
    """
    if "settings" not in ctx:
        ctx["settings"] = get_settings()
    settings: Settings = ctx["settings"]
    if "db" not in ctx:
        url = ctx.get("database_url") or settings.database_url
        if not url:
            raise RuntimeError("the worker needs database_url in its context or settings")
        ctx["db"] = Database.from_url(
            url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        )
        ctx["owns_db"] = True
    if "http" not in ctx:
        ctx["http"] = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
    if "webhook_http" not in ctx:
        ctx["webhook_http"] = delivery_client()
    ctx.setdefault("resolve", resolve_host)
    if "box" not in ctx:
        ctx["box"] = CredentialBox(settings.secret_key.get_secret_value())
    if "clock" not in ctx:
        ctx["clock"] = clock_from_settings(settings)
    tune_garbage_collector()


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what `startup` built (a database handed in by the caller stays open)."""
    for key in ("http", "webhook_http"):
        http = ctx.get(key)
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()
    if ctx.get("owns_db"):
        await ctx["db"].dispose()
