"""HTTP during outages: PostgreSQL or Redis unreachable answers 503 with Retry-After, never 500."""

import asyncio
import copy
import json
import logging
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.exceptions as redis_errors
from arq.connections import ArqRedis
from arq.constants import default_queue_name, job_key_prefix
from redis.asyncio import Redis
from sqlalchemy import func
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import Processor, Role
from app.models.ingestion import RawRecord
from app.processors import adyen
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Principal, Scope, system_principal
from jobs.enqueue import normalize_job_id
from jobs.ingest import SWEEP_GRACE, normalize_connection, sweep_unnormalized
from portal import http as http_view
from portal.asgi import REDIS_TIMEOUT_SECONDS, OutageMiddleware, Resources, redis_client
from portal.migrate import upgrade_database
from tests.support.factories import make_connection, make_key, make_merchant
from tests.support.http import portal_client
from tests.support.normalize import PROCESSOR_FIXTURES
from tests.support.private_redis import PrivateRedis
from tests.support.queue import job_queue

GRJ = "application/graphql-response+json"
JSON = "application/json"
# Nothing listens on port 9 (discard) here: connecting is refused at once, as when a server
# is stopped.
CLOSED = "127.0.0.1:9"
MERCHANTS = "{ merchants(first: 5) { edges { node { name } } } }"
ADYEN_ITEM = PROCESSOR_FIXTURES / "adyen" / "notification_single.json"


@pytest.fixture
async def down_db() -> AsyncIterator[Database]:
    db = Database.from_url(f"postgresql+asyncpg://postgres@{CLOSED}/portal", pool_size=1)
    yield db
    await db.dispose()


@pytest.fixture
async def down_redis() -> AsyncIterator[ArqRedis]:
    # arq's client is a Redis client: one unreachable client serves as both.
    client = ArqRedis.from_url(f"redis://{CLOSED}/0")
    yield client
    await client.aclose()


async def graphql(
    client: httpx.AsyncClient, query: str, *, accept: str, token: str | None = None
) -> httpx.Response:
    headers = {"accept": accept}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await client.post("/graphql", json={"query": query}, headers=headers)


def assert_unavailable(response: httpx.Response, media: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == f"{media}; charset=utf-8"
    body: dict[str, Any] = response.json()
    assert "data" not in body
    assert body["errors"]
    for error in body["errors"]:
        assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert error["extensions"]["retryAfterSeconds"] == 5
        assert error["message"] == "the database is unavailable; retry in 5 s"
    return body


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "unavailable" in r.getMessage()]


# -- PostgreSQL unreachable ---------------------------------------------------------------


@pytest.mark.parametrize("media", [GRJ, JSON])
async def test_database_outage_while_authenticating_is_503(
    settings: Settings,
    down_db: Database,
    redis: Redis,
    clock: FixedClock,
    media: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    resources = Resources(db=down_db, redis=redis, arq=None, clock=clock)
    async with portal_client(settings, resources) as client:
        response = await graphql(
            client, "{ viewer { role } }", accept=media, token="rp_" + "k" * 40
        )
    assert_unavailable(response, media)
    [line] = outage_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "database unavailable" in line.getMessage()
    assert line.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_with_both_down_probes_answer_and_requests_needing_neither_are_served(
    settings: Settings,
    down_db: Database,
    down_redis: ArqRedis,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    resources = Resources(db=down_db, redis=down_redis, arq=down_redis, clock=clock)
    async with portal_client(settings, resources) as client:
        # No key: nothing is looked up, the limiter lets it through unmetered, and the field
        # says who may ask, as it always does.
        anonymous = await graphql(client, "{ viewer { role } }", accept=GRJ)
        healthz = await client.get("/healthz")
        readyz = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert anonymous.status_code == 200
    assert [e["extensions"]["code"] for e in anonymous.json()["errors"]] == ["UNAUTHENTICATED"]
    assert healthz.status_code == 200
    assert readyz.status_code == 503
    assert readyz.json()["database"].startswith("error:")
    assert readyz.json()["redis"].startswith("error:")
    assert metrics.status_code == 200
    assert "portal_metrics_database_up 0.0" in metrics.text
    assert "portal_graphql_requests_total" in metrics.text
    assert not [r for r in caplog.records if r.name.startswith("portal") and r.exc_info]


class PrivatePostgres:
    """A PostgreSQL of this test's own, to stop and start: the shared one is never touched."""

    def __init__(self) -> None:
        # Short: the server's unix socket lives here, and socket paths are limited to ~100 bytes.
        self.path = tempfile.mkdtemp(prefix="portal_pg_")
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
            import pgserver

        self._server = pgserver.get_server(self.path, cleanup_mode="stop")
        socket_dir = urlsplit(self._server.get_uri()).query.removeprefix("host=")
        return f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(server.path, ignore_errors=True)


async def test_postgres_stopped_is_503_and_started_again_is_served(
    settings: Settings,
    redis: Redis,
    clock: FixedClock,
    private_postgres: PrivatePostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The outage as it happens: pooled connections die with the server, new ones are
    refused, and the same app serves again once it is back."""
    url = await asyncio.to_thread(private_postgres.start)
    await asyncio.to_thread(upgrade_database, url)
    db = Database.from_url(url, pool_size=2)
    try:
        merchant = await make_merchant(db, "Private", now=clock.now())
        token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
        resources = Resources(db=db, redis=redis, arq=None, clock=clock)
        async with portal_client(settings, resources) as client:
            before = await graphql(client, MERCHANTS, accept=GRJ, token=token)
            await asyncio.to_thread(private_postgres.stop)
            during = [await graphql(client, MERCHANTS, accept=m, token=token) for m in (GRJ, JSON)]
            await asyncio.to_thread(private_postgres.start)
            after = await graphql(client, MERCHANTS, accept=GRJ, token=token)
    finally:
        await db.dispose()
    expected = {"merchants": {"edges": [{"node": {"name": "Private"}}]}}
    assert before.status_code == 200
    assert before.json()["data"] == expected
    assert_unavailable(during[0], GRJ)
    assert_unavailable(during[1], JSON)
    assert after.status_code == 200
    assert after.json()["data"] == expected
    assert len(outage_lines(caplog)) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("media", [GRJ, JSON])
async def test_database_outage_in_resolvers_and_mutations_is_503(
    settings: Settings,
    down_db: Database,
    redis: Redis,
    clock: FixedClock,
    media: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Authentication answered (from a replica's cache, say) but the database is gone by the
    time the fields run: dataloaders, resolvers and mutations all meet the outage."""
    merchant_key = Principal(
        key_id=uuid.uuid4(),
        name="k",
        role=Role.MERCHANT,
        scope=Scope(merchant_ids=frozenset({uuid.uuid4()})),
    )
    principals = iter([merchant_key, merchant_key, system_principal()])

    async def authenticated(*_: Any, **__: Any) -> Principal:
        return next(principals)

    monkeypatch.setattr(http_view, "authenticate", authenticated)
    resources = Resources(db=down_db, redis=redis, arq=None, clock=clock)
    mutation = 'mutation { createMerchant(input: {name: "M"}) { errors { code } } }'
    async with portal_client(settings, resources) as client:
        # One token each: the view caches the principal a token authenticated as.
        page = await graphql(client, MERCHANTS, accept=media, token="rp_x1")
        # `viewer` resolves without the database; `merchants` does not: still one 503.
        partial = await graphql(
            client, "{ viewer { role } " + MERCHANTS[1:], accept=media, token="rp_x2"
        )
        created = await graphql(client, mutation, accept=media, token="rp_x3")
    assert_unavailable(page, media)
    body = assert_unavailable(partial, media)
    assert [e["path"] for e in body["errors"]] == [["merchants"]]
    assert_unavailable(created, media)
    assert len(outage_lines(caplog)) == 3
    assert all(r.exc_info is None for r in outage_lines(caplog))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- Redis unreachable --------------------------------------------------------------------


async def test_redis_outage_serves_graphql_unmetered_until_it_is_back(
    settings: Settings,
    db: Database,
    clock: FixedClock,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portal.http")
    merchant = await make_merchant(db, "Unmetered", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    redis = Redis(port=private_redis.port)
    resources = Resources(db=db, redis=redis, arq=None, clock=clock)
    try:
        async with portal_client(settings, resources) as client:
            before = await graphql(client, "{ viewer { role } }", accept=GRJ, token=token)
            await private_redis.stop()
            during = [
                await graphql(client, "{ viewer { role } }", accept=media, token=token)
                for media in (GRJ, JSON, GRJ)
            ]
            await private_redis.start()
            after = await graphql(client, "{ viewer { role } }", accept=GRJ, token=token)
    finally:
        await redis.aclose()
    for response in [before, *during, after]:
        assert response.status_code == 200
        assert response.json()["data"] == {"viewer": {"role": "MERCHANT"}}
    assert "cost" in before.json()["extensions"]
    assert all("cost" not in (r.json().get("extensions") or {}) for r in during)
    assert "cost" in after.json()["extensions"]
    # Logged when the outage starts and when it ends, not once per request in between.
    limiter = [r for r in caplog.records if "rate limiter" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in limiter] == [
        (logging.WARNING, None),
        (logging.INFO, None),
    ]


async def test_a_hung_redis_delays_requests_by_its_timeout_not_forever(
    settings: Settings, db: Database, clock: FixedClock, private_redis: PrivateRedis
) -> None:
    """A Redis host that stops answering (no refusal, no reset) costs each request the client's
    timeout, then the request is served unmetered; nothing waits on it forever."""
    merchant = await make_merchant(db, "Hung", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    redis = redis_client(private_redis.url)
    resources = Resources(db=db, redis=redis, arq=None, clock=clock)
    try:
        async with portal_client(settings, resources) as client:
            await graphql(client, "{ viewer { role } }", accept=GRJ, token=token)
            private_redis.freeze()
            try:
                started = time.monotonic()
                during = await asyncio.wait_for(
                    graphql(client, "{ viewer { role } }", accept=GRJ, token=token),
                    timeout=REDIS_TIMEOUT_SECONDS * 5,
                )
                waited = time.monotonic() - started
            finally:
                private_redis.thaw()
    finally:
        await redis.aclose()
    assert during.status_code == 200
    assert during.json()["data"] == {"viewer": {"role": "MERCHANT"}}
    assert "cost" not in (during.json().get("extensions") or {})
    assert waited < REDIS_TIMEOUT_SECONDS * 3


# -- the Adyen webhook ----------------------------------------------------------------------


def _signed_batch(psp_reference: str) -> bytes:
    item = copy.deepcopy(json.loads(ADYEN_ITEM.read_bytes())["NotificationRequestItem"])
    item["pspReference"] = psp_reference
    item["additionalData"]["hmacSignature"] = adyen.sign(item, "00")
    return json.dumps(
        {"live": "false", "notificationItems": [{"NotificationRequestItem": item}]}
    ).encode()


async def _raw_rows(db: Database, connection_id: uuid.UUID, *, pending: bool) -> int:
    query = select(func.count()).where(col(RawRecord.connection_id) == connection_id)
    if pending:
        query = query.where(col(RawRecord.normalized_at).is_(None))
    async with db.session(SYSTEM_SCOPE) as session:
        return int((await session.execute(query)).scalar_one())


async def test_webhook_during_a_database_outage_is_503_and_stores_nothing(
    settings: Settings,
    db: Database,
    down_db: Database,
    redis: Redis,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    merchant = await make_merchant(db, "Adyen down", now=clock.now())
    connection = await make_connection(
        db, merchant, now=clock.now(), settings=settings, kind=Processor.ADYEN
    )
    resources = Resources(db=down_db, redis=redis, arq=None, clock=clock)
    async with portal_client(settings, resources) as client:
        response = await client.post(
            f"/webhooks/adyen/{connection.id}", content=_signed_batch("PSPDOWN1")
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.text != "[accepted]"
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert await _raw_rows(db, connection.id, pending=False) == 0
    [line] = outage_lines(caplog)
    assert "/webhooks/adyen/" in line.getMessage()
    assert line.exc_info is None


async def test_webhook_during_a_redis_outage_is_accepted_and_swept_later(
    settings: Settings,
    services: Services,
    db: Database,
    redis: Redis,
    down_redis: ArqRedis,
    clock: FixedClock,
) -> None:
    merchant = await make_merchant(db, "Adyen", now=clock.now())
    connection = await make_connection(
        db, merchant, now=clock.now(), settings=settings, kind=Processor.ADYEN
    )
    resources = Resources(db=db, redis=down_redis, arq=down_redis, clock=clock)
    async with portal_client(settings, resources) as client:
        response = await client.post(
            f"/webhooks/adyen/{connection.id}", content=_signed_batch("PSPREDIS1")
        )
    assert response.status_code == 200
    assert response.text == "[accepted]"
    assert await _raw_rows(db, connection.id, pending=True) == 1

    job_id = normalize_job_id(connection.id)
    async with job_queue(services) as queue:
        try:
            ctx: Any = {"db": db, "redis": queue, "clock": clock}
            # Younger than the grace period: the webhook's own enqueue may still be coming.
            assert await sweep_unnormalized(ctx) == 0
            ctx["clock"] = FixedClock(clock.now() + SWEEP_GRACE + timedelta(seconds=1))
            assert await sweep_unnormalized(ctx) == 1
            assert await queue.zscore(default_queue_name, job_id) is not None
            # Queued already: the next sweep adds nothing.
            assert await sweep_unnormalized(ctx) == 0
            # What the worker then runs.
            stats = await normalize_connection(ctx, str(connection.id))
            assert stats["normalized"] == 1
            assert await _raw_rows(db, connection.id, pending=True) == 0
        finally:
            await queue.zrem(default_queue_name, job_id)
            await queue.delete(job_key_prefix + job_id)


def test_the_sweep_is_scheduled() -> None:
    from jobs.worker import CRON_JOBS

    assert "cron:sweep_unnormalized" in {job.name for job in CRON_JOBS}


# -- the app-wide net ------------------------------------------------------------------------


async def test_any_endpoint_answers_an_outage_with_503_and_a_bug_with_500() -> None:
    async def needs_redis(_: Request) -> Response:
        raise redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:9.")

    async def buggy(_: Request) -> Response:
        raise KeyError("bug")

    app = Starlette(
        routes=[Route("/redis", needs_redis), Route("/bug", buggy)],
        middleware=[Middleware(OutageMiddleware, retry_after_seconds=7)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        outage = await client.get("/redis")
        bug = await client.get("/bug")
    assert outage.status_code == 503
    assert outage.headers["retry-after"] == "7"
    assert outage.json() == {
        "code": "SERVICE_UNAVAILABLE",
        "message": "Redis is unavailable; retry in 7 s",
    }
    assert bug.status_code == 500
