"""The soak's faults, a supervisor for processes that die on their own, and a monitor.

Each fault is recorded as a window from its start until the service is back. The supervisor
restarts a process that exited without being asked, as systemd or Kubernetes would, and records
it. The monitor samples signs of life: payment transitions, worker heartbeats, /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from tests.support.soak.report import (
    SUPERVISOR_DELAY,
    ExitRecord,
    FaultRecord,
    MonitorSample,
    Resume,
    SoakConfig,
    Tenants,
)
from tests.support.stack import Service, Stack

SAMPLE_EVERY = 0.5


class Monitor:
    """Every half second: payment transitions so far, worker heartbeats in Redis, /readyz.

    A reading that fails is missing from its sample (and counted in `failures`); the sampling
    itself never stops, since every "resumed after" figure is computed from these samples.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.samples: list[MonitorSample] = []
        # Readings that failed (missing from their sample), by what was read and error type.
        self.failures: defaultdict[str, Counter[str]] = defaultdict(Counter)

    async def _transitions(self, conn: asyncpg.Connection | None) -> tuple[int | None, Any]:
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(self.stack.postgres.url, timeout=2)
            value = await conn.fetchval("SELECT count(*) FROM payment_transition", timeout=2)
            return int(value), conn
        except Exception as exc:
            # Whatever the error, this reading is missing; the sampling goes on. Not only
            # PostgreSQL's and the socket's errors: a backend stopped by a restart sends its
            # FATAL message before its socket closes, and a query in between is refused by
            # asyncpg with InternalClientError ("another operation is in progress").
            self.failures["transitions"][type(exc).__name__] += 1
            if conn is not None:
                conn.terminate()
            return None, None

    async def _heartbeats(self, redis: Redis) -> dict[str, str] | None:
        try:
            found: dict[str, str] = {}
            async for raw in redis.scan_iter(match="*heartbeat*", count=1000):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                kind = await redis.type(key)
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if kind == "string":
                    found[key] = repr(await redis.get(key))
                elif kind == "hash":
                    found[key] = repr(sorted((await redis.hgetall(key)).items()))  # type: ignore[misc]
                elif kind == "zset":
                    # One entry per member (a worker) with its score (its last beat), so a
                    # worker that appears is told apart from one that beats again.
                    for member, score in await redis.zrange(key, 0, -1, withscores=True):
                        name = member.decode() if isinstance(member, bytes) else str(member)
                        found[f"{key}|{name}"] = repr(score)
                else:
                    found[key] = f"{kind} ttl={await redis.pttl(key)}"
            return found
        except Exception as exc:
            # Redis down: no reading at this instant.
            self.failures["heartbeats"][type(exc).__name__] += 1
            return None

    async def _ready(self, http: httpx.AsyncClient, index: int) -> tuple[int | None, Any]:
        try:
            response = await http.get(f"{self.stack.api_url(index)}/readyz")
            body = response.json()
            return response.status_code, body if isinstance(body, dict) else None
        except Exception as exc:
            self.failures[f"/readyz of api{index + 1}"][type(exc).__name__] += 1
            return None, None

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop` is set."""
        conn: Any = None
        redis = Redis.from_url(self.stack.redis.url, socket_timeout=2, socket_connect_timeout=2)
        async with httpx.AsyncClient(timeout=3, trust_env=False) as http:
            try:
                while not stop.is_set():
                    at = time.monotonic()
                    transitions, conn = await self._transitions(conn)
                    heartbeats = await self._heartbeats(redis)
                    ready = await asyncio.gather(
                        *(self._ready(http, i) for i in range(len(self.stack.apis)))
                    )
                    self.samples.append(
                        MonitorSample(
                            at,
                            transitions,
                            heartbeats,
                            [r[0] for r in ready],
                            [r[1] for r in ready],
                        )
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
            finally:
                if conn is not None:
                    conn.terminate()
                await redis.aclose()

    def resume(self, fault: FaultRecord) -> Resume:
        """Seconds from the fault's end until processing, readiness and a heartbeat were back."""
        return resume_after(self.samples, fault)


class Supervisor:
    """Restarts a portal process that died on its own, as systemd or Kubernetes would, and
    records the death: the portal's processes must never exit on a dependency outage."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.exits: list[ExitRecord] = []
        # Held while a fault stops and starts a process itself.
        self.lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self.lock:
                for service in self.stack.services():
                    code = service.unexpected_exit()
                    if code is None:
                        continue
                    self.exits.append(
                        ExitRecord(service.name, code, time.monotonic(), service.tail(40))
                    )
                    await asyncio.sleep(SUPERVISOR_DELAY)
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(service.start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


class Faults:
    """The faults the schedule names, each one recorded as a window."""

    def __init__(self, stack: Stack, tenants: Tenants, config: SoakConfig, supervisor: Supervisor):
        self.stack = stack
        self.tenants = tenants
        self.config = config
        self.supervisor = supervisor
        self.records: list[FaultRecord] = []
        self._counts: Counter[str] = Counter()

    async def inject(self, kind: str) -> None:
        """Run one fault to its end (the service is back, or the window closed)."""
        self._counts[kind] += 1
        n = self._counts[kind]
        actions: dict[str, Callable[[int], Awaitable[FaultRecord]]] = {
            "postgres_restart": self._postgres,
            "redis_restart": self._redis,
            "worker_kill": self._worker_kill,
            "api_restart": self._api_restart,
            "processor_429": self._processor_429,
            "processor_5xx": self._processor_5xx,
        }
        record = await actions[kind](n)
        self.records.append(record)
        self.config.progress(
            f"fault {record.kind} ({record.target}) over in {record.end - record.start:.1f} s"
        )

    async def _postgres(self, n: int) -> FaultRecord:
        record = FaultRecord("postgres_restart", "postgres", time.monotonic())
        await asyncio.to_thread(self.stack.postgres.stop, "fast")
        await asyncio.sleep(self.config.outage_seconds)
        await asyncio.to_thread(self.stack.postgres.start)
        record.end = time.monotonic()
        return record

    async def _redis(self, n: int) -> FaultRecord:
        record = FaultRecord("redis_restart", "redis", time.monotonic())
        await asyncio.to_thread(self.stack.redis.kill)
        await asyncio.sleep(self.config.outage_seconds)
        await asyncio.to_thread(self.stack.redis.start)
        record.end = time.monotonic()
        return record

    async def _restart(self, service: Service, sig: signal.Signals, kind: str) -> FaultRecord:
        async with self.supervisor.lock:
            record = FaultRecord(kind, service.name, time.monotonic())
            service.signal(sig)
            code = await asyncio.to_thread(service.wait_exit)
            record.detail = f"exit code {code}"
            await asyncio.sleep(SUPERVISOR_DELAY)
            await asyncio.to_thread(service.start)
            record.end = time.monotonic()
            return record

    async def _worker_kill(self, n: int) -> FaultRecord:
        worker = self.stack.workers[(n - 1) % len(self.stack.workers)]
        return await self._restart(worker, signal.SIGKILL, "worker_kill")

    async def _api_restart(self, n: int) -> FaultRecord:
        # The first API receives the Adyen webhooks: its restart is felt by ingestion too.
        api = self.stack.apis[(n - 1) % len(self.stack.apis)]
        return await self._restart(api, signal.SIGTERM, "api_restart")

    async def _processor(self, kind: str, settings: dict[str, Any]) -> FaultRecord:
        record = FaultRecord(kind, "sandbox", time.monotonic())
        async with httpx.AsyncClient(
            base_url=self.stack.sandbox_url, timeout=30, trust_env=False
        ) as admin:
            for tenant in self.tenants.merchants:
                path = f"/_sandbox/accounts/{tenant.account_id}/faults"
                (await admin.post(path, json=settings)).raise_for_status()
            await asyncio.sleep(self.config.processor_window_seconds)
            for tenant in self.tenants.merchants:
                path = f"/_sandbox/accounts/{tenant.account_id}/faults"
                (await admin.post(path, json={})).raise_for_status()
        record.end = time.monotonic()
        return record

    async def _processor_429(self, n: int) -> FaultRecord:
        # A counter far larger than the window's requests: every read and charge is refused.
        return await self._processor("processor_429", {"rate_limit": 1_000_000, "writes": True})

    async def _processor_5xx(self, n: int) -> FaultRecord:
        return await self._processor("processor_5xx", {"server_error": 1_000_000, "writes": True})


async def schedule(faults: Faults, config: SoakConfig, started: float, seconds: float) -> None:
    for fraction, kind in sorted(config.faults):
        delay = started + fraction * seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await faults.inject(kind)
        except Exception as exc:
            # A fault that could not be injected is reported, and the run goes on.
            faults.records.append(
                FaultRecord(kind, "harness", time.monotonic(), time.monotonic(), f"failed: {exc!r}")
            )


def resume_after(samples: list[MonitorSample], fault: FaultRecord) -> Resume:
    """Seconds from the fault's end until processing, readiness and a heartbeat were back."""
    before = [s for s in samples if s.at <= fault.end and s.transitions is not None]
    after = [s for s in samples if s.at > fault.end]
    baseline = before[-1].transitions if before else None
    processing = next(
        (
            s.at - fault.end
            for s in after
            if s.transitions is not None and baseline is not None and s.transitions > baseline
        ),
        None,
    )
    ready = next(
        (s.at - fault.end for s in after if s.ready and all(r == 200 for r in s.ready)), None
    )
    beats_before = next(
        (s.heartbeats for s in reversed(samples) if s.at <= fault.end and s.heartbeats),
        {},
    )
    # A restarted worker is back when a heartbeat entry it could not have written before
    # appears; after an outage, when any entry beats again.
    known = {k for s in samples if s.at <= fault.start and s.heartbeats for k in s.heartbeats}
    heartbeat = next(
        (
            s.at - fault.end
            for s in after
            if s.heartbeats
            and any(
                k not in known if fault.kind == "worker_kill" else beats_before.get(k) != v
                for k, v in s.heartbeats.items()
            )
        ),
        None,
    )
    worker_seen = any(b and "worker" in b for s in samples for b in s.ready_bodies)
    worker_ready = next(
        (
            s.at - fault.end
            for s in after
            if s.ready_bodies and all(b and b.get("worker") == "ok" for b in s.ready_bodies)
        ),
        None,
    )
    return Resume(
        fault,
        processing,
        ready,
        heartbeat,
        any(s.heartbeats for s in samples),
        worker_ready,
        worker_seen,
    )
