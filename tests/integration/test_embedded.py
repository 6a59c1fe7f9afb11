"""The embedded defaults: with nothing configured and nothing listening, start our own."""

from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from app.embedded import resolve_services
from app.settings import Settings


async def test_embedded_postgres_and_redis_start_when_nothing_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing configured, whatever the environment of the run says (REDIS_URL=... pytest).
    for name in ("DATABASE_URL", "PORTAL_DATABASE_URL", "REDIS_URL", "PORTAL_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        # Port 9 (discard) is closed on loopback: the local defaults do not answer.
        local_database_url="postgresql://postgres@127.0.0.1:9/portal",
        local_redis_url="redis://127.0.0.1:9/0",
    )
    services = await resolve_services(settings)
    try:
        assert services.database_source == "embedded"
        assert services.redis_source == "embedded"
        assert "embedded" in services.describe()
        conn = await asyncpg.connect(services.database_url.replace("+asyncpg", ""))
        try:
            assert await conn.fetchval("SELECT current_database()") == "portal"
        finally:
            await conn.close()
        redis = Redis.from_url(services.redis_url)
        try:
            assert await redis.ping()
        finally:
            await redis.aclose()
    finally:
        services.close()


async def test_configured_urls_win(tmp_path: Path) -> None:
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url="postgres://someone@db.invalid:5432/x",
        redis_url="redis://cache.invalid:6379/0",
    )
    services = await resolve_services(settings)
    assert services.database_url == "postgresql+asyncpg://someone@db.invalid:5432/x"
    assert services.database_source == "DATABASE_URL"
    assert services.redis_source == "REDIS_URL"
    # Nothing embedded was started, so nothing was written.
    assert services._handles == []
