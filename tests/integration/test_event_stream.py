"""Live events across API replicas: two API processes (uvicorn, on loopback), a websocket
client on one, events committed by the worker's job; reconnecting with the last cursor, a Redis
restart, authentication and tenancy over graphql-transport-ws."""

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.db import Database
from app.embedded import Services, create_scratch_database, drop_database
from app.enums import Role
from app.models.merchant import Merchant
from app.models.payment import Payment
from jobs.context import WorkerContext
from jobs.events import publish_events
from portal.migrate import upgrade_database
from resolvers.ids import encode_id
from tests.support.events import emit_events
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.private_redis import PrivateRedis
from tests.support.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = "graphql-transport-ws"
SUBSCRIBE = """subscription($id: ID!, $after: String) {
  paymentEvents(merchantId: $id, after: $after) { id type cursor payload } }"""
LAST_CURSOR = """query($id: ID!, $after: String) { merchant(id: $id) {
  events(first: 100, after: $after) { pageInfo { endCursor hasNextPage } } } }"""


@dataclass
class Tenant:
    merchant: Merchant
    payment: Payment
    token: str

    @property
    def global_id(self) -> str:
        return encode_id("Merchant", self.merchant.id)


@dataclass
class Env:
    db: Database
    redis: PrivateRedis
    apis: list[str]
    a: Tenant
    b: Tenant
    # The worker's Redis client.
    publisher: Redis
    # The processes' environment, and where their logs go.
    variables: dict[str, str]
    folder: Path

    def worker(self) -> WorkerContext:
        """What the worker's `publish_events` job reads of its context."""
        return cast(WorkerContext, {"db": self.db, "redis": self.publisher})


def now() -> datetime:
    return datetime.now(UTC)


def _tail(log: Path) -> str:
    return log.read_text()[-2000:]


async def _spawn(env: dict[str, str], log: Path, *argv: str) -> asyncio.subprocess.Process:
    """`python -m portal <argv>`, its output in `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "portal",
            *argv,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 15)
    if process.returncode is None:
        process.kill()
        await process.wait()


async def _api(port: int, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    process = await _spawn(env, log, "serve", "--host", "127.0.0.1", "--port", str(port))
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"API exited: {_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return process
            await asyncio.sleep(0.1)
    raise TimeoutError(f"API on {port} did not start: {_tail(log)}")


async def _tenant(db: Database, name: str) -> Tenant:
    merchant = await make_merchant(db, name, now=now())
    [payment] = await make_payments(db, merchant, 1, now=now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=now())
    return Tenant(merchant, payment, token)


@pytest.fixture(scope="module")
async def env(services: Services, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    folder = tmp_path_factory.mktemp("event-stream")
    redis = PrivateRedis(folder)
    await redis.start()
    url = await create_scratch_database(services, "portal_events")
    await asyncio.to_thread(upgrade_database, url)
    db = Database.from_url(url, pool_size=4)
    publisher = Redis.from_url(redis.url)
    processes: list[asyncio.subprocess.Process] = []
    try:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PORTAL_") and k not in {"DATABASE_URL", "REDIS_URL"}
        }
        variables = {
            **inherited,
            "DATABASE_URL": url,
            "REDIS_URL": redis.url,
            "PORTAL_ENVIRONMENT": "test",
            "PORTAL_LOG_LEVEL": "WARNING",
            "PORTAL_AUTH_CACHE_SECONDS": "1",
        }
        ports = [free_port(), free_port()]
        for index, port in enumerate(ports):
            processes.append(await _api(port, variables, folder / f"api{index}.log"))
        yield Env(
            db=db,
            redis=redis,
            apis=[f"127.0.0.1:{p}" for p in ports],
            a=await _tenant(db, "Stream A"),
            b=await _tenant(db, "Stream B"),
            publisher=publisher,
            variables=variables,
            folder=folder,
        )
    finally:
        for process in processes:
            await _stop(process)
        await publisher.aclose()
        await db.dispose()
        await drop_database(services, url)
        await redis.stop()


class Client:
    """A graphql-transport-ws client on one API process."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, api: str, init: dict[str, Any] | None) -> AsyncIterator["Client"]:
        async with connect(f"ws://{api}/graphql", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            client = cls(socket)
            await client.send({"type": "connection_init", "payload": init or {}})
            yield client

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))

    async def receive(self, within: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.socket.recv(), within)
        # Text frames: a browser hands a binary frame over as a Blob, not a string.
        assert isinstance(raw, str), "graphql-transport-ws messages travel as text frames"
        message: dict[str, Any] = json.loads(raw)
        return message

    async def subscribe(self, tenant: Tenant, after: str | None, id: str = "1") -> None:
        variables = {"id": tenant.global_id, "after": after}
        await self.send(
            {"id": id, "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": variables}}
        )

    async def event(self, within: float = 10) -> dict[str, Any]:
        message = await self.receive(within)
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        event: dict[str, Any] = message["payload"]["data"]["paymentEvents"]
        return event

    async def own_event(self, within: float = 10) -> dict[str, Any]:
        """The next event the test committed (`emit_events` gives each the reason `test
        <type>`), past any a running worker's own crons made for the same payment."""
        deadline = time.monotonic() + within
        while True:
            event = await self.event(max(deadline - time.monotonic(), 0.01))
            if str(event["payload"].get("reason", "")).startswith("test "):
                return event


async def _last_cursor(api: str, tenant: Tenant) -> str | None:
    """The feed's end so far, read over HTTP (from a process the test does not stream from)."""
    after = None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        while True:
            response = await http.post(
                f"http://{api}/graphql",
                json={"query": LAST_CURSOR, "variables": {"id": tenant.global_id, "after": after}},
                headers={"authorization": f"Bearer {tenant.token}"},
            )
            page = response.json()["data"]["merchant"]["events"]["pageInfo"]
            after = page["endCursor"] or after
            if not page["hasNextPage"]:
                return after


async def _commit(env: Env, tenant: Tenant, *names: str) -> None:
    """Events written by the service the retry engine uses, each committed on its own."""
    for name in names:
        await emit_events(env.db, tenant.payment, [name], now=now())


async def _baseline(env: Env, tenant: Tenant) -> str:
    """A cursor at the current end of the tenant's feed (an event is committed if none is)."""
    await _commit(env, tenant, "payment.scheduled")
    await publish_events(env.worker())
    cursor = await _last_cursor(env.apis[0], tenant)
    assert cursor is not None
    return cursor


async def test_an_event_reaches_a_client_of_the_other_process_within_a_second_and_a_reconnect_catches_up(  # noqa: E501
    env: Env,
) -> None:
    tenant = env.a
    after = await _baseline(env, tenant)
    async with Client.open(env.apis[1], {"authorization": f"Bearer {tenant.token}"}) as client:
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe(tenant, after)
        await _commit(env, tenant, "payment.retrying")
        # Let the subscription start (it reads its backlog, which is empty, then waits).
        await asyncio.sleep(0.3)
        started = time.monotonic()
        assert await publish_events(env.worker()) == 1  # the worker's job, on this side
        event = await client.event(within=5)
        latency = time.monotonic() - started
        assert event["type"] == "payment.retrying"
        assert event["payload"]["payment_id"] == str(tenant.payment.id)
        assert latency < 1.0, f"{latency:.3f} s from the worker's commit to the client"
        last = event["cursor"]

    # Disconnected: three events commit meanwhile (in two runs of the job).
    await _commit(env, tenant, "payment.scheduled", "payment.retrying")
    await publish_events(env.worker())
    await _commit(env, tenant, "payment.recovered")
    await publish_events(env.worker())
    async with Client.open(env.apis[0], {"authorization": f"Bearer {tenant.token}"}) as client:
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe(tenant, last)
        missed = [await client.event() for _ in range(3)]
        assert [e["type"] for e in missed] == [
            "payment.scheduled",
            "payment.retrying",
            "payment.recovered",
        ]
        assert len({e["id"] for e in missed}) == 3
        # Then live again, without repeating anything.
        await _commit(env, tenant, "payment.rescheduled")
        await publish_events(env.worker())
        live = await client.event(within=5)
        assert live["type"] == "payment.rescheduled"
        with pytest.raises(TimeoutError):
            await client.receive(within=0.5)


async def test_subscribers_catch_up_after_a_redis_restart(env: Env) -> None:
    tenant = env.b
    after = await _baseline(env, tenant)
    async with Client.open(env.apis[1], {"authorization": f"Bearer {tenant.token}"}) as client:
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe(tenant, after)
        await asyncio.sleep(0.3)
        await env.redis.stop()
        try:
            # Positioned and committed; the notice cannot be published (a warning, no error).
            await _commit(env, tenant, "payment.canceled")
            assert await publish_events(env.worker()) == 1
            with pytest.raises(TimeoutError):
                await client.receive(within=1.5)
        finally:
            await env.redis.start()
        # The API process subscribes again and its subscribers read the database.
        event = await client.event(within=10)
        assert event["type"] == "payment.canceled"
        # Notices flow again.
        await _commit(env, tenant, "payment.pending")
        started = time.monotonic()
        await publish_events(env.worker())
        assert (await client.event(within=5))["type"] == "payment.pending"
        assert time.monotonic() - started < 1.0


async def test_websocket_authentication_tenancy_and_protocol(env: Env) -> None:
    # Another merchant's id: NOT_FOUND, as a query would answer null.
    async with Client.open(env.apis[0], {"authorization": f"Bearer {env.a.token}"}) as client:
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe(env.b, None)
        message = await client.receive()
        errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
        assert [e["extensions"]["code"] for e in errors] == ["NOT_FOUND"]
        if message["type"] == "next":
            assert await client.receive() == {"id": "1", "type": "complete"}
        # Queries and mutations are for HTTP (its rate limits and method rules).
        await client.send(
            {"id": "2", "type": "subscribe", "payload": {"query": "{ viewer { role } }"}}
        )
        refused = await client.receive()
        assert refused["id"] == "2"
        assert refused["type"] == "error"
        assert [e["extensions"]["code"] for e in refused["payload"]] == ["BAD_REQUEST"]
    # An unknown key: the connection is closed (4403).
    async with Client.open(env.apis[0], {"authorization": "Bearer rp_unknown"}) as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4403
    # No key: subscribing is UNAUTHENTICATED.
    async with Client.open(env.apis[0], {}) as client:
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe(env.a, None)
        message = await client.receive()
        errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
        assert [e["extensions"]["code"] for e in errors] == ["UNAUTHENTICATED"]
    # The legacy graphql-ws protocol is not served.
    async with connect(
        f"ws://{env.apis[0]}/graphql",
        subprotocols=["graphql-ws"],  # type: ignore[list-item]
    ) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4406


async def test_a_revoked_key_ends_its_subscription(env: Env) -> None:
    from app.services.api_key import revoke_api_key
    from app.tenancy import SYSTEM_SCOPE, system_principal
    from tests.support.factories import key_id

    tenant = env.a
    token = await make_key(env.db, Role.MERCHANT, [tenant.merchant], now=now(), name="revoked")
    after = await _baseline(env, tenant)
    async with Client.open(env.apis[1], {"authorization": f"Bearer {token}"}) as client:
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe(tenant, after)
        await asyncio.sleep(0.3)
        async with env.db.uow(SYSTEM_SCOPE) as uow:
            await revoke_api_key(
                uow,
                principal=system_principal(),
                key_id=await key_id(env.db, token),
                reason="leaked",
                now=now(),
            )
            await uow.commit()
        await asyncio.sleep(1.5)  # PORTAL_AUTH_CACHE_SECONDS=1 in these processes
        await _commit(env, tenant, "payment.retrying")
        await publish_events(env.worker())
        message = await client.receive(within=5)
        assert message["type"] == "next"
        assert [e["extensions"]["code"] for e in message["payload"]["errors"]] == [
            "UNAUTHENTICATED"
        ]
        assert (await client.receive())["type"] == "complete"


async def test_with_a_worker_process_events_reach_the_other_api_within_the_cron_tick(
    env: Env,
) -> None:
    """End to end: an outbox row committed, `portal worker`'s every-second cron positions it and
    publishes the notice, a client of the other API process receives it."""
    tenant = env.b
    after = await _baseline(env, tenant)
    worker = await _spawn(env.variables, env.folder / "worker.log", "worker")
    try:
        async with Client.open(env.apis[1], {"authorization": f"Bearer {tenant.token}"}) as client:
            assert (await client.receive())["type"] == "connection_ack"
            await client.subscribe(tenant, after)
            # The first event also waits for the worker to start.
            await _commit(env, tenant, "payment.scheduled")
            assert (await client.own_event(within=60))["type"] == "payment.scheduled"
            latencies = []
            for name in ("payment.retrying", "payment.scheduled", "payment.retrying"):
                await _commit(env, tenant, name)
                committed = time.monotonic()
                assert (await client.own_event(within=5))["type"] == name
                latencies.append(time.monotonic() - committed)
                # Commits land at different points of the cron's second.
                await asyncio.sleep(0.37)
            # At most the cron's period, arq's poll (0.5 s) and the fan-out.
            assert max(latencies) < 2.0, latencies
    finally:
        await _stop(worker)
