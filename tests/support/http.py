"""The portal's ASGI app called in-process over httpx, its lifespan running."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette

from app.clock import Clock
from app.db import Database
from app.settings import Settings
from portal.asgi import Resources, create_app


@asynccontextmanager
async def asgi_client(
    app: Starlette, *, client: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on `app`, requests coming from `client` (httpx's default address)."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=client), base_url="http://127.0.0.1"
        ) as http,
    ):
        yield http


@asynccontextmanager
async def portal_client(
    settings: Settings, resources: Resources
) -> AsyncIterator[httpx.AsyncClient]:
    """The portal on resources the caller owns."""
    async with asgi_client(create_app(settings, resources=resources)) as http:
        yield http


@asynccontextmanager
async def portal_http(
    db: Database, redis_url: str, settings: Settings, clock: Clock
) -> AsyncIterator[httpx.AsyncClient]:
    """The portal on the test's database and a plain Redis client of its own, as the HTTP view
    hands the context one; no job queue."""
    redis = Redis.from_url(redis_url)
    try:
        async with portal_client(
            settings, Resources(db=db, redis=redis, arq=None, clock=clock)
        ) as http:
            yield http
    finally:
        await redis.aclose()
