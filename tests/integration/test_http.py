"""HTTP behaviour through the ASGI app: methods, auth header, errors, health endpoints."""

import httpx
from redis.asyncio import Redis

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import Role
from app.settings import Settings
from jobs.telemetry import heartbeats_key, server_time, write_heartbeat
from portal.asgi import Resources
from tests.support.factories import make_key, make_merchant
from tests.support.http import portal_client


async def _token(db: Database, clock: FixedClock) -> str:
    merchant = await make_merchant(db, "HTTP", now=clock.now())
    return await make_key(db, Role.MERCHANT, [merchant], now=clock.now())


async def test_post_query_with_bearer_token(
    client: httpx.AsyncClient, db: Database, clock: FixedClock
) -> None:
    token = await _token(db, clock)
    response = await client.post(
        "/graphql",
        json={"query": "{ viewer { role } }"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == {"viewer": {"role": "MERCHANT"}}
    assert "errors" not in body
    assert body["extensions"]["cost"]["requested"] > 0


async def test_get_query_works(client: httpx.AsyncClient, db: Database, clock: FixedClock) -> None:
    token = await _token(db, clock)
    response = await client.get(
        "/graphql",
        params={"query": "{ viewer { role } }"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert response.json()["data"] == {"viewer": {"role": "MERCHANT"}}


async def test_mutation_over_get_is_refused(
    client: httpx.AsyncClient, db: Database, clock: FixedClock
) -> None:
    token = await _token(db, clock)
    query = (
        'mutation { updateRetryPolicy(input: {merchantId: "x", expectedVersion: 1, '
        'reason: "r", maxAttempts: 3}) { errors { code } } }'
    )
    response = await client.get(
        "/graphql", params={"query": query}, headers={"Authorization": f"Bearer {token}"}
    )
    # Refused before execution, as GraphQL-over-HTTP requires.
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "mutation" in response.text.lower()
    assert response.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"


async def test_missing_key_is_unauthenticated(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "{ viewer { role } }"})
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_malformed_body_is_a_4xx_not_a_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_syntax_error_has_a_code(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "{ viewer { "})
    errors = response.json()["errors"]
    assert errors[0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_alias_limit(client: httpx.AsyncClient, db: Database, clock: FixedClock) -> None:
    token = await _token(db, clock)
    query = "{ " + " ".join(f"a{i}: viewer {{ role }}" for i in range(40)) + " }"
    response = await client.post(
        "/graphql", json={"query": query}, headers={"Authorization": f"Bearer {token}"}
    )
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_graphiql_is_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"accept": "text/html"})
    assert "graphiql" not in response.text.lower()


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    # Not required by default: whatever the workers do, an API-only deployment is ready.
    assert body.pop("worker") in {"ok", "stale", "none"}
    assert body == {"status": "ok", "database": "ok", "redis": "ok"}


async def test_readyz_reports_the_worker_heartbeat_and_can_require_it(
    db: Database, services: Services, clock: FixedClock
) -> None:
    redis = Redis.from_url(services.redis_url)
    # The heartbeats of the queue the settings name (PORTAL_QUEUE_NAME when set).
    queue = Settings(environment="test").queue_name
    key = heartbeats_key(queue)
    await redis.delete(key)

    async def readyz(required: bool) -> tuple[int, str]:
        settings = Settings(
            environment="test", readyz_require_worker=required, worker_stale_after_seconds=30
        )
        resources = Resources(db=db, redis=redis, arq=None, clock=clock)
        async with portal_client(settings, resources) as http:
            response = await http.get("/readyz")
        body = response.json()
        assert (body["database"], body["redis"]) == ("ok", "ok")
        return response.status_code, body["worker"]

    try:
        assert await readyz(False) == (200, "none")
        assert await readyz(True) == (503, "none")
        # Heard from a minute ago (by the Redis clock), not since: stale.
        await redis.zadd(key, {"gone-quiet": await server_time(redis) - 60})
        assert await readyz(False) == (200, "stale")
        assert await readyz(True) == (503, "stale")
        await write_heartbeat(redis, "alive", ttl=600, queue=queue)
        assert await readyz(False) == (200, "ok")
        assert await readyz(True) == (200, "ok")
        # Past the TTL a worker is forgotten (readers skip it; the next heartbeat drops it).
        await redis.delete(key)
        await redis.zadd(key, {"long-dead": await server_time(redis) - 3600})
        assert await readyz(True) == (503, "none")
    finally:
        await redis.delete(key)
        await redis.aclose()
