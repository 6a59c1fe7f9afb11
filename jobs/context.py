"""The worker's context: resources built once at worker start-up and closed at shutdown."""

from typing import Any, TypedDict

import httpx
from arq.connections import ArqRedis

from app.clock import Clock, SystemClock
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


async def startup(ctx: dict[str, Any]) -> None:
    """Fill the context; values already present (an in-process worker, tests) are kept."""
    settings: Settings = ctx.setdefault("settings", get_settings())
    if "db" not in ctx:
        url = ctx.get("database_url") or settings.database_url
        if not url:
            raise RuntimeError("the worker needs database_url in its context or settings")
        ctx["db"] = Database.from_url(url, pool_size=settings.db_pool_size)
        ctx["owns_db"] = True
    ctx.setdefault("http", httpx.AsyncClient(timeout=DEFAULT_TIMEOUT))
    ctx.setdefault("webhook_http", delivery_client())
    ctx.setdefault("resolve", resolve_host)
    ctx.setdefault("box", CredentialBox(settings.secret_key.get_secret_value()))
    ctx.setdefault("clock", SystemClock())


async def shutdown(ctx: dict[str, Any]) -> None:
    for key in ("http", "webhook_http"):
        http = ctx.get(key)
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()
    if ctx.get("owns_db"):
        await ctx["db"].dispose()
