"""Authenticated keys are cached per API process for a bounded time: a revoked key is refused
once `auth_cache_seconds` have passed since its last lookup (at once where it was revoked)."""

import asyncio
import uuid
from datetime import datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from app.clock import FixedClock
from app.db import Database
from app.embedded import Services
from app.enums import Role
from app.services.api_key import revoke_api_key
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Principal, Scope, system_principal
from app.workflows.authentication import PrincipalCache, authenticate
from portal import http as http_view
from portal.asgi import Resources, create_app
from portal.http import PortalGraphQL
from resolvers.ids import encode_id
from tests.support.factories import key_id, make_key, make_merchant
from tests.support.http import portal_http

GRJ = "application/graphql-response+json"
VIEWER = "{ viewer { role } }"
REVOKE = """mutation($id: ID!) { revokeApiKey(id: $id, reason: "leaked") {
  apiKey { revokedAt } errors { code } } }"""


async def viewer(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": VIEWER},
        headers={"accept": GRJ, "authorization": f"Bearer {token}"},
    )


def served(response: httpx.Response) -> bool:
    if response.status_code == 401:
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        return False
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"viewer": {"role": "MERCHANT"}}
    return True


async def revoke_elsewhere(db: Database, token: str, clock: FixedClock) -> None:
    """Revoked as another API process (or the CLI) would: straight in the database."""
    key = await key_id(db, token)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await revoke_api_key(
            uow, principal=system_principal(), key_id=key, reason="leaked", now=clock.now()
        )
        await uow.commit()


async def test_a_key_revoked_elsewhere_is_refused_once_the_bound_has_passed(
    db: Database, services: Services, clock: FixedClock
) -> None:
    settings = Settings(environment="test", auth_cache_seconds=5)
    merchant = await make_merchant(db, "Cached", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    looked_up = clock.now()
    async with portal_http(db, services.redis_url, settings, clock) as client:
        assert served(await viewer(client, token))
        await revoke_elsewhere(db, token, clock)
        # Within the bound this process still trusts its lookup...
        clock.set(looked_up + timedelta(seconds=4.9))
        assert served(await viewer(client, token))
        # ...and from the bound on, never again.
        clock.set(looked_up + timedelta(seconds=5))
        assert not served(await viewer(client, token))
        clock.set(looked_up + timedelta(seconds=60))
        assert not served(await viewer(client, token))


async def test_a_cached_key_is_refused_from_its_expiry_on(
    db: Database, services: Services, clock: FixedClock
) -> None:
    """The cache trusts a lookup for a minute here, but never past the key's expiresAt."""
    settings = Settings(environment="test", auth_cache_seconds=60)
    merchant = await make_merchant(db, "Expiring", now=clock.now())
    expires = clock.now() + timedelta(seconds=10)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), expires_at=expires)
    async with portal_http(db, services.redis_url, settings, clock) as client:
        assert served(await viewer(client, token))
        clock.set(expires - timedelta(seconds=0.1))
        assert served(await viewer(client, token))
        clock.set(expires)
        assert not served(await viewer(client, token))


async def test_without_a_cache_a_revoked_key_is_refused_at_once(
    db: Database, services: Services, clock: FixedClock
) -> None:
    settings = Settings(environment="test", auth_cache_seconds=0)
    merchant = await make_merchant(db, "Uncached", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    async with portal_http(db, services.redis_url, settings, clock) as client:
        assert served(await viewer(client, token))
        await revoke_elsewhere(db, token, clock)
        assert not served(await viewer(client, token))


async def test_a_key_revoked_through_this_process_is_refused_at_once(
    db: Database, services: Services, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Revoking", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    gid = encode_id("ApiKey", await key_id(db, token))
    async with portal_http(db, services.redis_url, settings, clock) as client:
        assert served(await viewer(client, token))
        response = await client.post(
            "/graphql",
            json={"query": REVOKE, "variables": {"id": gid}},
            headers={"accept": GRJ, "authorization": f"Bearer {support}"},
        )
        assert response.json()["data"]["revokeApiKey"]["errors"] == []
        assert not served(await viewer(client, token))


def _principal() -> Principal:
    return Principal(
        key_id=uuid.uuid4(),
        name="k",
        role=Role.MERCHANT,
        scope=Scope(merchant_ids=frozenset({uuid.uuid4()})),
    )


def test_the_cache_is_bounded_and_a_clock_set_back_does_not_extend_an_entry(
    clock: FixedClock,
) -> None:
    cache = PrincipalCache(timedelta(seconds=5), max_entries=2)
    now = clock.now()
    first, second, third = _principal(), _principal(), _principal()
    cache.put("rp_a", first, now=now)
    cache.put("rp_b", second, now=now)
    cache.put("rp_c", third, now=now)
    assert cache.get("rp_a", now=now) is None  # the oldest lookup went first
    assert cache.get("rp_b", now=now) is second
    assert cache.get("rp_c", now=now) is third
    assert cache.get("rp_c", now=now - timedelta(seconds=1)) is None
    assert cache.get("rp_c", now=now) is None  # dropped, not kept for later
    cache.put("rp_b", second, now=now)
    cache.forget(second.key_id)  # type: ignore[arg-type]
    assert cache.get("rp_b", now=now) is None


# -- requests missing the cache together ------------------------------------------------


def _graphql_view(app: Starlette) -> PortalGraphQL:
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, PortalGraphQL):
            return endpoint
    raise AssertionError("no GraphQL route")


async def test_requests_missing_the_cache_together_share_one_lookup(
    db: Database,
    services: Services,
    settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    merchant = await make_merchant(db, "Busy", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    lookups: list[str] = []

    async def counted(db: Database, token: str, *, now: datetime) -> Principal | None:
        lookups.append(token)
        return await authenticate(db, token, now=now)

    monkeypatch.setattr(http_view, "authenticate", counted)
    async with portal_http(db, services.redis_url, settings, clock) as client:
        responses = await asyncio.gather(*(viewer(client, token) for _ in range(8)))
        assert all(served(response) for response in responses)
        assert len(lookups) == 1
        # Past the bound, one lookup again for the lot.
        clock.set(clock.now() + timedelta(seconds=settings.auth_cache_seconds))
        responses = await asyncio.gather(*(viewer(client, token) for _ in range(8)))
        assert all(served(response) for response in responses)
        assert len(lookups) == 2


async def test_a_shared_lookup_checks_expiry_at_each_request_and_survives_a_cancelled_one(
    db: Database,
    redis: Redis,
    settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    principal = Principal(
        key_id=uuid.uuid4(),
        name="k",
        role=Role.MERCHANT,
        scope=Scope(merchant_ids=frozenset({uuid.uuid4()})),
        expires_at=clock.now() + timedelta(seconds=1),
    )
    release = asyncio.Event()
    started: list[datetime] = []

    async def slow(db: Database, token: str, *, now: datetime) -> Principal | None:
        started.append(now)
        await release.wait()
        return principal

    monkeypatch.setattr(http_view, "authenticate", slow)
    app = create_app(settings, resources=Resources(db=db, redis=redis, arq=None, clock=clock))
    view = _graphql_view(app)
    token = "rp_" + "s" * 40

    # A request joining the lookup after the key expired is refused, the first one is not.
    first = asyncio.create_task(view._authenticate(db, clock, token))
    await asyncio.sleep(0)
    clock.set(clock.now() + timedelta(seconds=1))
    late = asyncio.create_task(view._authenticate(db, clock, token))
    await asyncio.sleep(0)
    release.set()
    assert await first == principal
    assert await late is None
    assert len(started) == 1

    # The request running the lookup goes away: the one waiting for it looks the key up.
    release.clear()
    clock.set(clock.now() - timedelta(seconds=1))
    other = "rp_" + "t" * 40
    leader = asyncio.create_task(view._authenticate(db, clock, other))
    await asyncio.sleep(0)
    follower = asyncio.create_task(view._authenticate(db, clock, other))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await follower == principal
    assert len(started) == 3
    assert leader.cancelled()
