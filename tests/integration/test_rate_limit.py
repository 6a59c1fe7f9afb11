"""Rate limiting by query cost over HTTP, and the Redis bucket against its pure twin."""

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import Role
from app.ratelimit import (
    BucketError,
    BucketLimits,
    Decision,
    LimiterError,
    RedisLeakyBucket,
    offer,
)
from app.settings import Settings
from portal import metrics
from portal.asgi import Resources, create_app
from portal.http import PortalGraphQL
from tests.support.factories import key_id, make_key, make_merchant
from tests.support.http import asgi_client
from tests.support.private_redis import PrivateRedis

GRJ = "application/graphql-response+json"
VIEWER = "{ viewer { role } }"  # 2 fields + depth 2 = 4
LIMITED = Settings(environment="test", rate_limit_capacity=20, rate_limit_leak_per_second=2.0)


@dataclass
class Replica:
    """One app instance and a client on it; several share one Redis like API replicas."""

    http: httpx.AsyncClient
    app: Starlette


Client = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def open_client(db: Database, redis: Redis, clock: FixedClock) -> AsyncIterator[Client]:
    async with AsyncExitStack() as stack:

        async def open_one(settings: Settings = LIMITED, client_ip: str = "127.0.0.1") -> Replica:
            app = create_app(
                settings, resources=Resources(db=db, redis=redis, arq=None, clock=clock)
            )
            http = asgi_client(app, client=(client_ip, 40000))
            return Replica(await stack.enter_async_context(http), app)

        yield open_one


async def _token(db: Database, clock: FixedClock) -> str:
    merchant = await make_merchant(db, "Limits", now=clock.now())
    return await make_key(db, Role.MERCHANT, [merchant], now=clock.now())


async def ask(
    replica: Replica,
    token: str | None,
    query: str = VIEWER,
    accept: str = GRJ,
) -> httpx.Response:
    headers = {"accept": accept}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await replica.http.post("/graphql", json={"query": query}, headers=headers)


def _view(app: Starlette) -> PortalGraphQL:
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, PortalGraphQL):
            return endpoint
    raise AssertionError("no GraphQL route")


async def test_bucket_drains_refuses_and_refills(
    open_client: Client, db: Database, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await open_client()
    token = await _token(db, clock)
    remaining = []
    for _ in range(5):
        response = await ask(client, token)
        assert response.status_code == 200
        cost = response.json()["extensions"]["cost"]
        assert cost["requested"] == 4
        assert cost["limit"] == 20
        remaining.append(cost["remaining"])
    assert remaining == [16, 12, 8, 4, 0]

    executed: list[str] = []
    view = _view(client.app)
    real_execute = view.schema.execute

    async def spy(query: str | None, *args: Any, **kwargs: Any) -> Any:
        executed.append(str(query))
        return await real_execute(query, *args, **kwargs)

    monkeypatch.setattr(view.schema, "execute", spy)
    refused = await ask(client, token)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"  # 4 units at 2 per second
    body = refused.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"] == {"code": "RATE_LIMITED", "retryAfterSeconds": 2}
    assert body["extensions"]["cost"]["remaining"] == 0
    assert executed == []  # nothing ran

    clock.set(clock.now() + timedelta(seconds=2))
    again = await ask(client, token)
    assert again.status_code == 200
    assert again.json()["extensions"]["cost"]["remaining"] == 0
    assert executed == [VIEWER]

    clock.set(clock.now() + timedelta(seconds=10))  # fully drained
    refilled = await ask(client, token)
    assert refilled.json()["extensions"]["cost"]["remaining"] == 16
    assert refilled.json()["extensions"]["cost"]["resetSeconds"] == 2.0


async def test_legacy_json_gets_200_with_the_error(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    client = await open_client()
    token = await _token(db, clock)
    for _ in range(5):
        await ask(client, token, accept="application/json")
    refused = await ask(client, token, accept="application/json")
    assert refused.status_code == 200
    body = refused.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert body["errors"][0]["extensions"]["retryAfterSeconds"] == 2


async def test_keys_have_their_own_buckets(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    client = await open_client()
    first, second = await _token(db, clock), await _token(db, clock)
    for _ in range(5):
        await ask(client, first)
    assert (await ask(client, first)).status_code == 429
    assert (await ask(client, second)).status_code == 200


def _random_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def test_unauthenticated_callers_are_limited_per_ip(open_client: Client) -> None:
    client = await open_client(client_ip=_random_ip())
    elsewhere = await open_client(client_ip=_random_ip())
    for _ in range(5):
        # No key: the operation runs and answers UNAUTHENTICATED, but it still costs.
        assert (await ask(client, None)).status_code == 200
    assert (await ask(client, None)).status_code == 429
    assert (await ask(elsewhere, None)).status_code == 200


async def test_replicas_share_one_bucket(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    replica_a, replica_b = await open_client(), await open_client()
    token = await _token(db, clock)
    for _ in range(5):
        assert (await ask(replica_a, token)).status_code == 200
    assert (await ask(replica_b, token)).status_code == 429


async def test_page_sizes_raise_the_cost(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    client = await open_client(Settings(environment="test"))
    token = await _token(db, clock)
    small = await ask(client, token, "{ merchants(first: 1) { edges { node { name } } } }")
    large = await ask(client, token, "{ merchants(first: 50) { edges { node { name } } } }")
    default = await ask(client, token, "{ merchants { edges { node { name } } } }")
    # merchants 1 + page * (edges 1 + node 1 + name 1), plus a depth of 4
    assert small.json()["extensions"]["cost"]["requested"] == 1 + 1 * 3 + 4
    assert large.json()["extensions"]["cost"]["requested"] == 1 + 50 * 3 + 4
    assert default.json()["extensions"]["cost"]["requested"] == 1 + 20 * 3 + 4


async def test_a_query_costlier_than_the_bucket_is_refused_outright(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    client = await open_client()
    token = await _token(db, clock)
    response = await ask(client, token, "{ merchants(first: 100) { edges { cursor } } }")
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    # It took nothing from the bucket.
    assert response.json()["extensions"]["cost"]["remaining"] == 20


async def test_rate_limiting_can_be_turned_off(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    settings = LIMITED.model_copy(update={"rate_limit_enabled": False})
    client = await open_client(settings)
    token = await _token(db, clock)
    for _ in range(8):
        response = await ask(client, token)
        assert response.status_code == 200
        assert "extensions" not in response.json()


# -- the bucket itself -----------------------------------------------------------------


async def test_concurrent_offers_never_overdraw(services: Services) -> None:
    """Offers racing from separate connections (as from replicas) admit exactly what fits."""
    limits = BucketLimits(capacity=100, leak_per_second=0.001)
    clients = [Redis.from_url(services.redis_url) for _ in range(4)]
    try:
        buckets = [RedisLeakyBucket(c, limits, prefix="test:ratelimit:") for c in clients]
        key = uuid.uuid4().hex
        now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
        decisions = await asyncio.gather(
            *(buckets[i % 4].offer(key, 7, now=now) for i in range(40))
        )
        assert sum(d.allowed for d in decisions) == 100 // 7
        assert min(d.remaining for d in decisions) == 100 - 7 * (100 // 7)
    finally:
        for client in clients:
            await client.aclose()


async def test_redis_bucket_matches_the_pure_arithmetic(redis: Redis) -> None:
    rng = random.Random(6)
    limits = BucketLimits(capacity=50, leak_per_second=3.5)
    bucket = RedisLeakyBucket(redis, limits, prefix="test:ratelimit:")
    key = uuid.uuid4().hex
    start = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    level, last = 0.0, None
    elapsed = 0.0
    for _ in range(300):
        # Mostly forward, sometimes a step back (clock skew between replicas).
        elapsed = max(0.0, elapsed + rng.choice([0.0, 0.1, 0.5, 1.0, 4.0, -0.3]))
        cost = rng.choice([1, 4, 9, 20, 60])
        now = start + timedelta(seconds=elapsed)
        expected, level, last = offer(level, last, now.timestamp(), cost, limits)
        got = await bucket.offer(key, cost, now=now)
        assert got.allowed == expected.allowed
        assert got.level == pytest.approx(expected.level, abs=1e-4)
        assert got.retry_after_seconds == pytest.approx(expected.retry_after_seconds, abs=1e-4)


async def test_the_standard_introspection_query_is_answered_and_deeper_nesting_refused(
    open_client: Client, db: Database, clock: FixedClock
) -> None:
    """GraphiQL's introspection reads the schema, not the database: it fits the default
    budget whatever the schema's size; lists nested past types { fields { args } } do not."""
    from graphql import get_introspection_query

    replica = await open_client(Settings(environment="test"))
    token = await _token(db, clock)
    standard = await ask(replica, token, get_introspection_query(descriptions=True))
    assert standard.status_code == 200
    assert standard.json()["data"]["__schema"]["types"]
    nested = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
    refused = await ask(replica, token, nested)
    assert refused.status_code == 400
    error = refused.json()["errors"][0]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert "introspection nests lists 4 deep" in error["message"]


# -- when the limiter cannot answer ----------------------------------------------------


async def test_a_broken_bucket_fails_its_own_offer_not_the_others_in_its_call(
    redis: Redis,
) -> None:
    """A bucket Redis cannot apply the script to (its key holds another type) answers that
    offer with `BucketError`; the offers sent in the same call are decided as usual."""
    limits = BucketLimits(capacity=10, leak_per_second=1.0)
    bucket = RedisLeakyBucket(redis, limits, prefix="test:ratelimit:")
    calls: list[int] = []
    script = bucket._script

    async def counted(keys: list[str], args: list[Any]) -> Any:
        calls.append(len(keys))
        return await script(keys=keys, args=args)

    bucket._script = counted
    good, broken, other = (uuid.uuid4().hex for _ in range(3))
    await redis.set(f"test:ratelimit:{broken}", "not a hash", ex=60)
    now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    first, failed, second = await asyncio.gather(
        bucket.offer(good, 4, now=now),
        bucket.offer(broken, 4, now=now),
        bucket.offer(other, 11, now=now),
        return_exceptions=True,
    )
    assert calls == [3]  # one script call for the three
    assert isinstance(first, Decision)
    assert first.allowed
    assert first.remaining == 6
    assert isinstance(second, Decision)
    assert not second.allowed
    assert second.too_costly
    assert isinstance(failed, BucketError)
    assert "WRONGTYPE" in str(failed)
    # The broken key was left as it was; the good one was charged.
    assert await redis.get(f"test:ratelimit:{broken}") == b"not a hash"
    assert (await bucket.offer(good, 1, now=now)).remaining == 5


async def test_a_reply_of_the_wrong_shape_is_a_limiter_error() -> None:
    class Host:
        def register_script(self, script: str) -> Any:
            async def run(keys: list[str], args: list[Any]) -> Any:
                return [1, b"4"]  # two items where three per key were due

            return run

    bucket = RedisLeakyBucket(Host(), BucketLimits(10, 1.0), prefix="test:")
    with pytest.raises(LimiterError):
        await bucket.offer("k", 4, now=datetime(2026, 11, 2, 12, 0, tzinfo=UTC))


async def test_a_broken_bucket_serves_its_caller_unmetered_and_the_rest_metered(
    open_client: Client,
    db: Database,
    redis: Redis,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portal.http")
    replica = await open_client(Settings(environment="test"))
    tokens = [await _token(db, clock) for _ in range(4)]
    for token in tokens:  # keys looked up once: the requests below reach the limiter together
        assert (await ask(replica, token)).status_code == 200
    broken_key = f"portal:ratelimit:key:{await key_id(db, tokens[1])}"
    await redis.delete(broken_key)
    await redis.set(broken_key, "not a hash", ex=60)
    counted = _unmetered("bucket")
    for _ in range(2):
        responses = await asyncio.gather(*(ask(replica, token) for token in tokens))
        for response in responses:
            assert response.status_code == 200, response.text
            assert response.json()["data"] == {"viewer": {"role": "MERCHANT"}}
        metered = ["cost" in (r.json().get("extensions") or {}) for r in responses]
        assert metered == [True, False, True, True]
    assert _unmetered("bucket") == counted + 2
    await redis.delete(broken_key)
    assert "cost" in (await ask(replica, tokens[1])).json()["extensions"]
    lines = [r for r in caplog.records if "rate limiter" in r.getMessage()]
    # Logged when that bucket starts failing and when it answers again.
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.ERROR, None), (logging.INFO, None)]
    assert "WRONGTYPE" in lines[0].getMessage()


def _unmetered(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "portal_rate_limit_unmetered_requests_total", {"reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("fault", ["script refused", "read-only replica"])
async def test_a_redis_that_refuses_the_limiter_serves_requests_unmetered(
    open_client: Client,
    db: Database,
    clock: FixedClock,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    """Redis answers, but with an error for the whole call (the script's command refused by
    an ACL) or for every bucket (a replica refuses writes): no request fails for it, each is
    served unmetered, as when Redis is unreachable, and the failure is logged as an error
    once, when it starts."""
    caplog.set_level(logging.INFO, logger="portal.http")
    tokens = [await _token(db, clock) for _ in range(3)]
    redis = Redis(port=private_redis.port)
    try:
        app = create_app(
            Settings(environment="test"),
            resources=Resources(db=db, redis=redis, arq=None, clock=clock),
        )
        async with asgi_client(app) as http:
            replica = Replica(http, app)
            for token in tokens:
                assert (await ask(replica, token)).status_code == 200
            if fault == "script refused":
                await redis.acl_setuser("default", enabled=True, commands=["-eval", "-evalsha"])
            else:
                await redis.replicaof("127.0.0.1", 9)
            during = [
                response
                for _ in range(2)
                for response in await asyncio.gather(*(ask(replica, t) for t in tokens))
            ]
            if fault == "script refused":
                await redis.acl_setuser("default", enabled=True, commands=["+@all"])
            else:
                await redis.replicaof("NO", "ONE")
            after = await ask(replica, tokens[0])
    finally:
        await redis.aclose()
    for response in during:
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {"viewer": {"role": "MERCHANT"}}
        assert "cost" not in (response.json().get("extensions") or {})
    assert "cost" in after.json()["extensions"]
    lines = [r for r in caplog.records if "rate limiter" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.ERROR, None), (logging.INFO, None)]
    assert ("no permissions" if fault == "script refused" else "READONLY") in lines[0].getMessage()
