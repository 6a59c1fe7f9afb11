"""Retry engine throughput: decide + claim + charge + record over N due payments.

Prints payments per second for each phase and overall, and the share of task time spent in
SQL statements, in processor calls, and in everything else (state machine, rules, ORM).

Two processors:
- `--processor stub` (default) answers in-process, so the figures isolate the database side;
  `--payments` failed payments are written straight into the database.
- `--processor sandbox` runs the sandbox in a process of its own on 127.0.0.1. The portal
  ingests the sandbox's history by polling (set-up, untimed), then decides, claims and charges
  over HTTP. The sandbox only retries charges from its own history, so the population sets the
  payment count. `--processor sandbox --accounts 6 --customers 195000 --failure-rate 1.0`
  (seven days of history) gives about 118,000 failed payments, of which about 103,000 are due
  (the rest are hard declines).
  At the end the sandbox's accepted charges are compared with the portal's recorded attempts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event, text

from app.clock import FixedClock
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import resolve_services
from app.enums import Processor, Role
from app.models.ingestion import ProcessorConnection
from app.processors.base import (
    BillingRefs,
    BillingState,
    CancelResult,
    ChargeResult,
    ListPage,
    ProcessorAdapter,
    RawItem,
)
from app.services.connection import create_connection
from app.services.merchant import create_merchant
from app.services.retry.engine import claim_due, decide_pending
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Principal, Scope
from app.urls import UrlPolicy
from app.workflows.polling import poll_connection
from app.workflows.retry_attempt import default_adapters, execute_attempt
from jobs.context import tune_garbage_collector
from jobs.retry import CLAIM_LANES, DECIDE_LANES
from portal.cli import upgrade_database
from procstat import backend_cpu_seconds, cpu_seconds, postgres_cpu_seconds
from sandbox.server import in_subprocess

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
BOX = CredentialBox("bench-secret")
SUPPORT = Principal(key_id=None, name="bench", role=Role.SUPPORT, scope=Scope(None))

# The sandbox listens on loopback over plain HTTP.
SANDBOX_URLS = UrlPolicy(require_https=False, allow_loopback=True)


@dataclass
class Timers:
    sql: float = 0.0
    processor: float = 0.0
    statements: int = 0
    commits: int = 0
    calls: int = 0
    by_statement: dict[str, float] = field(default_factory=dict)


def _charge_body(charge_id: str, status: str, customer: str, amount: int) -> dict[str, Any]:
    failed = status == "failed"
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "currency": "usd",
        "created": int(T0.timestamp()),
        "customer": customer,
        "invoice": f"in_{charge_id}",
        "status": status,
        "paid": not failed,
        "failure_code": "card_declined" if failed else None,
        "outcome": {
            "type": "issuer_declined" if failed else "authorized",
            "reason": "insufficient_funds" if failed else None,
        },
        "payment_method_details": {
            "type": "card",
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": 12,
                "exp_year": 2030,
                # The customer's card on file, as generated below ("cus_N" holds "fp_N").
                "fingerprint": customer.replace("cus_", "fp_", 1),
                "funding": "debit",
                "last4": "4242",
            },
        },
    }


class StubStripe:
    """Answers like Stripe, in-process: ~30% approved, the rest declined; idempotent by key."""

    def __init__(self) -> None:
        self._by_key: dict[str, ChargeResult] = {}
        self._rng = random.Random(7)

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        return ListPage(items=[], cursor=dict(cursor), more=False)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        body = _charge_body(processor_payment_id, "failed", "cus", 2900)
        return RawItem.from_json(body, processor_payment_id)

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        return BillingState()

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        return CancelResult(refs.subscription_ref or "sub", "canceled")

    async def charge(self, **kw: Any) -> ChargeResult:
        key = kw["idempotency_key"]
        if key not in self._by_key:
            charge_id = f"ch_{uuid.uuid4().hex[:20]}"
            status = "succeeded" if self._rng.random() < 0.3 else "failed"
            body = _charge_body(charge_id, status, kw["customer_ref"], kw["amount_minor"])
            self._by_key[key] = ChargeResult(
                charge_id, status == "succeeded", RawItem.from_json(body, charge_id)
            )
        return self._by_key[key]


class Timed:
    """An adapter wrapper adding each call's duration to the processor timer."""

    def __init__(self, inner: ProcessorAdapter, timers: Timers) -> None:
        self._inner = inner
        self._timers = timers

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        return await self._inner.list_page(cursor)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        start = time.perf_counter()
        try:
            return await self._inner.fetch(processor_payment_id)
        finally:
            self._timers.processor += time.perf_counter() - start
            self._timers.calls += 1

    async def charge(self, **kw: Any) -> ChargeResult:
        start = time.perf_counter()
        try:
            return await self._inner.charge(**kw)
        finally:
            self._timers.processor += time.perf_counter() - start
            self._timers.calls += 1

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        start = time.perf_counter()
        try:
            return await self._inner.billing_state(refs)
        finally:
            self._timers.processor += time.perf_counter() - start
            self._timers.calls += 1

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        return await self._inner.cancel_subscription(refs, idempotency_key=idempotency_key)


def _time_sql(db: Database, timers: Timers) -> None:
    assert db.engine is not None
    sync = db.engine.sync_engine

    @event.listens_for(sync, "before_cursor_execute")
    def _before(
        conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
    ) -> None:
        conn.info.setdefault("bench_start", []).append(time.perf_counter())

    @event.listens_for(sync, "after_cursor_execute")
    def _after(
        conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
    ) -> None:
        took = time.perf_counter() - conn.info["bench_start"].pop()
        timers.sql += took
        timers.statements += 1
        head = " ".join(str(statement).split())[:90]
        timers.by_statement[head] = timers.by_statement.get(head, 0.0) + took

    @event.listens_for(sync, "commit")
    def _commit(conn: Any) -> None:
        timers.commits += 1


async def _scratch_database(settings: Settings, prefix: str = "portal_bench") -> tuple[str, Any]:
    services = await resolve_services(settings)
    # Named after the queue too, when one is set, so that concurrent runs are told apart.
    queue = "".join(c for c in os.environ.get("PORTAL_QUEUE_NAME", "") if c.isalnum())
    name = f"{prefix}_{queue + '_' if queue else ''}{uuid.uuid4().hex[:8]}"
    base, _, query = services.database_url.partition("?")
    head = base.rsplit("/", 1)[0]

    def plain(db: str) -> str:
        return f"{head}/{db}".replace("+asyncpg", "") + (f"?{query}" if query else "")

    admin = await asyncpg.connect(plain("postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"{head}/{name}" + (f"?{query}" if query else "")
    await asyncio.to_thread(upgrade_database, url)

    async def drop() -> None:
        admin = await asyncpg.connect(plain("postgres"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        services.close()

    return url, drop


async def _merchant(
    db: Database, base_url: str, api_key: str, *, merchant: bool = True
) -> ProcessorConnection:
    """A connection, of a new merchant or (merchant=False) of the first one."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        if merchant:
            merchant_id = (await create_merchant(uow, name="Bench", principal=SUPPORT, now=T0)).id
        else:
            merchant_id = (
                await uow.session.execute(text("SELECT id FROM merchant LIMIT 1"))
            ).scalar_one()
        connection = await create_connection(
            uow,
            principal=SUPPORT,
            merchant_id=merchant_id,
            kind=Processor.STRIPE,
            base_url=base_url,
            policy=SANDBOX_URLS,
            credentials={"api_key": api_key},
            box=BOX,
            now=T0,
        )
        await uow.commit()
    return connection


async def _generate(db: Database, connection: ProcessorConnection, n: int) -> None:
    """N failed payments, one customer and card each, failed two hours before T0 (set-based)."""
    params = {
        "m": connection.merchant_id,
        "c": connection.id,
        "n": n,
        "t0": T0,
        "ago": T0 - timedelta(hours=2),
    }
    statements = [
        """INSERT INTO customer (id, merchant_id, external_ref, created_at)
           SELECT md5('c' || g)::uuid, :m, 'cus_' || g, :t0 FROM generate_series(1, :n) g""",
        """INSERT INTO card_credential (id, merchant_id, customer_id, brand, funding, last4,
             exp_month, exp_year, fingerprint, created_at)
           SELECT md5('k' || g)::uuid, :m, md5('c' || g)::uuid, 'visa', 'debit', '4242', 12,
             2030, 'fp_' || g, :t0 FROM generate_series(1, :n) g""",
        """INSERT INTO payment (id, merchant_id, processor, processor_payment_id, amount_minor,
             currency, customer_id, card_id, first_failed_at, decline_category,
             decline_retryable, decline_advice, state, attempt_count, connection_id,
             created_at, updated_at, needs_decision)
           SELECT md5('p' || g)::uuid, :m, 'stripe', 'ch_' || g, 2900, 'USD',
             md5('c' || g)::uuid, md5('k' || g)::uuid, :ago,
             'insufficient_funds', true, 'retry', 'PENDING', 1, :c, :t0, :t0, true
           FROM generate_series(1, :n) g""",
        """INSERT INTO payment_attempt (id, merchant_id, payment_id, number, attempted_at,
             outcome, actor, decline_category, created_at, card_id)
           SELECT md5('a' || g)::uuid, :m, md5('p' || g)::uuid, 1, :ago,
             'declined', 'processor', 'insufficient_funds', :t0, md5('k' || g)::uuid
           FROM generate_series(1, :n) g""",
    ]
    async with db.uow(SYSTEM_SCOPE) as uow:
        for sql in statements:
            await uow.session.execute(text(sql), params)
        await uow.commit()
    assert db.engine is not None
    # Statistics as a live database would have them (ANALYZE must commit to keep them).
    async with db.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        await conn.commit()


async def _sandbox_population(
    db: Database, http: httpx.AsyncClient, base: str, args: argparse.Namespace
) -> list[str]:
    """Sandbox accounts whose recent history holds the failures, ingested by the portal's own
    polling (untimed: this is the set-up). Returns the account ids."""
    accounts: list[str] = []
    connections: list[ProcessorConnection] = []
    for i in range(args.accounts):
        account_id, key = f"bench_{i}", f"sk_bench_{i}"
        response = await http.post(
            f"{base}/_sandbox/accounts",
            json={
                "processor": "stripe",
                "account_id": account_id,
                "merchant_seed": 3 + i,
                "api_key": key,
                "history_days": args.history_days,
                "customers": args.customers,
            },
        )
        response.raise_for_status()
        accounts.append(account_id)
        connections.append(await _merchant(db, f"{base}/stripe", key, merchant=i == 0))
    start = time.perf_counter()
    clock = FixedClock(T0)
    for connection in connections:
        while (
            await poll_connection(
                db, connection.id, client=http, box=BOX, clock=clock, max_pages=100
            )
        ).more:
            pass
    async with db.uow(SYSTEM_SCOPE) as uow:
        count = (await uow.session.execute(text("SELECT count(*) FROM payment"))).scalar_one()
    took = time.perf_counter() - start
    print(f"ingested {count:,} failed payments from {len(accounts)} account(s) in {took:.0f} s")
    return accounts


async def _run(args: argparse.Namespace) -> None:
    tune_garbage_collector()  # as a worker does at start-up
    settings = Settings(environment="test")
    url, drop = await _scratch_database(settings, args.database_prefix)
    db = Database.from_url(url, pool_size=args.concurrency + 2, max_overflow=4)
    timers = Timers()
    clock = FixedClock(T0)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            if args.processor == "sandbox":
                with tempfile.TemporaryDirectory() as scratch:
                    config = Path(scratch) / "simulator.toml"
                    config.write_text(f"[stream]\nfirst_failure_rate = {args.failure_rate}\n")
                    with in_subprocess(T0, str(config)) as (base, pid):

                        async def advance(to: datetime) -> None:
                            clock.set(to)
                            moved = await http.post(
                                f"{base}/_sandbox/clock", json={"start": to.isoformat(), "speed": 0}
                            )
                            moved.raise_for_status()

                        await advance(T0)
                        accounts = await _sandbox_population(db, http, base, args)
                        real = default_adapters(http, BOX)
                        cpu = _CpuMeter(pid)
                        async with _analyzing(db, args.analyze_every):
                            await _pipeline(
                                db, clock, timers, lambda c: Timed(real(c), timers), args, advance
                            )
                        cpu.report()
                        await _compare_charges(db, http, base, accounts)
            else:
                connection = await _merchant(db, "http://127.0.0.1:1/stripe", "sk_stub")
                start = time.perf_counter()
                await _generate(db, connection, args.payments)
                took = time.perf_counter() - start
                print(f"generated {args.payments:,} failed payments in {took:.1f} s")
                stub = StubStripe()

                async def jump(to: datetime) -> None:
                    clock.set(to)

                async with _analyzing(db, args.analyze_every):
                    await _pipeline(db, clock, timers, lambda c: Timed(stub, timers), args, jump)
    finally:
        await db.dispose()
        await drop()


# The tables the phases write, analyzed by `_analyzing` as autovacuum would.
_WRITTEN = (
    "payment",
    "payment_attempt",
    "payment_transition",
    "outbox_event",
    "raw_record",
    "raw_record_key",
    "model_decision",
)


@contextlib.asynccontextmanager
async def _analyzing(db: Database, every: float) -> AsyncIterator[None]:
    """When the server runs without autovacuum, ANALYZE the written tables every `every`
    seconds while the block runs, as autovacuum's analyze would on a production server.

    Without it a table that a phase fills from empty keeps the statistics of an empty table,
    and a backend keeps the plans it made then: a trigger's lookup planned as a scan of a
    few rows scans the whole table for each row once it holds a hundred thousand (the
    raw-record key check took 150-180 ms per 32 rows at 80,000 keys)."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        setting = (await uow.session.execute(text("SHOW autovacuum"))).scalar_one()
    if setting == "on" or every <= 0:
        yield
        return
    print(
        "autovacuum is off on this server: the bench analyzes the tables it writes "
        f"every {every:g} s"
    )

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            assert db.engine is not None
            try:
                async with db.engine.connect() as conn:
                    await conn.execute(text(f"ANALYZE {', '.join(_WRITTEN)}"))
                    await conn.commit()
            except Exception as exc:  # the phases go on; their figures say what it cost
                print(f"ANALYZE failed, tried again in {every:g} s: {exc!r}")

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _CpuMeter:
    """CPU seconds of the portal (this process), the sandbox and PostgreSQL over a phase."""

    def __init__(self, sandbox_pid: int) -> None:
        self._pid = sandbox_pid
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        return time.process_time(), cpu_seconds(self._pid), postgres_cpu_seconds()

    def report(self) -> None:
        spent = [b - a for a, b in zip(self._start, self._read(), strict=True)]
        print(
            "CPU seconds: portal {:.0f}, sandbox {:.0f}, PostgreSQL {:.0f}".format(*spent)
            + " (PostgreSQL counts every session on the machine)"
        )


async def _compare_charges(
    db: Database, http: httpx.AsyncClient, base: str, accounts: list[str]
) -> None:
    """Retries the sandbox accepted against attempts the portal sent: they must be equal."""
    accepted = 0
    for account_id in accounts:
        listed = await http.get(f"{base}/_sandbox/accounts/{account_id}/charges")
        listed.raise_for_status()
        accepted += len(listed.json()["data"])
    async with db.uow(SYSTEM_SCOPE) as uow:
        sent = (
            await uow.session.execute(
                text(
                    "SELECT count(*) FROM payment_attempt "
                    "WHERE actor = 'portal' AND processor_attempt_id IS NOT NULL"
                )
            )
        ).scalar_one()
    verdict = "equal" if accepted == sent else "DIFFERENT"
    print(f"charges: sandbox accepted {accepted:,}, portal recorded {sent:,} ({verdict})")


async def _pipeline(
    db: Database,
    clock: FixedClock,
    timers: Timers,
    adapters: Any,
    args: argparse.Namespace,
    advance: Callable[[datetime], Awaitable[None]],
) -> None:
    _time_sql(db, timers)
    phases: dict[str, tuple[float, int]] = {}
    # Statements and commits per phase, counted from the phase's start.
    sent: dict[str, tuple[int, int]] = {}
    # CPU seconds per phase: this process, and this database's PostgreSQL backends (the pool
    # keeps its connections, so the same backends serve the whole phase). Less sensitive to
    # other work on the machine than wall time.
    cpu: dict[str, tuple[float, float]] = {}
    backends: dict[int, float] = {}

    async def backend_pids() -> list[int]:
        async with db.uow(SYSTEM_SCOPE) as uow:
            rows = await uow.session.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return [pid for (pid,) in rows] + [
                (await uow.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            ]

    async def mark(phase: str) -> None:
        backends.clear()
        backends.update(backend_cpu_seconds(await backend_pids()))
        sent[phase] = (timers.statements, timers.commits)
        cpu[phase] = (time.process_time(), 0.0)

    async def count(phase: str) -> None:
        statements, commits = sent[phase]
        sent[phase] = (timers.statements - statements, timers.commits - commits)
        portal = time.process_time() - cpu[phase][0]
        now = backend_cpu_seconds(await backend_pids())
        database = sum(now[pid] - backends.get(pid, 0.0) for pid in now)
        cpu[phase] = (portal, database)

    async def decide_lane() -> int:
        decided = 0
        while True:
            async with db.uow(SYSTEM_SCOPE) as uow:
                done = await decide_pending(uow, now=clock.now(), limit=args.batch)
                await uow.commit()
            if not done:
                return decided
            decided += done

    await mark("decide")
    start = time.perf_counter()
    # As the decide cron runs its batches: `--decide-lanes` transactions at once.
    lanes = [decide_lane() for _ in range(args.decide_lanes)]
    decided = sum(await asyncio.gather(*lanes))
    phases["decide"] = (time.perf_counter() - start, decided)
    await count("decide")

    # Move time to when every schedule is due (the stub's are all a day out).
    async with db.uow(SYSTEM_SCOPE) as uow:
        latest = (
            await uow.session.execute(
                text("SELECT max(next_retry_at) FROM payment WHERE state = 'SCHEDULED'")
            )
        ).scalar_one()
    await advance((latest or T0) + timedelta(minutes=1))
    await mark("claim")
    start = time.perf_counter()
    queued: list[tuple[uuid.UUID, int]] = []

    async def claim_lane() -> None:
        while True:
            async with db.uow(SYSTEM_SCOPE) as uow:
                applied = await claim_due(uow, now=clock.now(), limit=args.batch)
                await uow.commit()
            if not applied.transitions:
                return
            queued.extend(applied.enqueue)

    # As the claim cron runs its batches: `--claim-lanes` transactions at once.
    await asyncio.gather(*(claim_lane() for _ in range(args.claim_lanes)))
    phases["claim"] = (time.perf_counter() - start, len(queued))
    await count("claim")
    if args.until == "claim":
        _print_phases(phases, sent, cpu)
        if args.profile:
            _print_profile(timers)
        return

    gate = asyncio.Semaphore(args.concurrency)
    statuses: dict[str, int] = {}

    async def one(pid: uuid.UUID, number: int) -> None:
        async with gate:
            result = await execute_attempt(
                db, payment_id=pid, attempt_number=number, adapters=adapters, clock=clock
            )
            statuses[result.status] = statuses.get(result.status, 0) + 1

    await mark("charge + record")
    start = time.perf_counter()
    await asyncio.gather(*(one(p, n) for p, n in queued))
    phases["charge + record"] = (time.perf_counter() - start, len(queued))
    await count("charge + record")

    _print_phases(phases, sent, cpu)
    total = sum(t for t, _ in phases.values())
    overall = len(queued) / total
    print(f"{'overall':16s} {len(queued):8,d} payments in {total:8.2f} s  = {overall:9,.0f} /s")
    print(f"attempt outcomes: {statuses}")
    # With concurrent attempts the timers add up task time, which exceeds wall time.
    busy = timers.sql + timers.processor
    other = max(0.0, total - busy) if args.concurrency == 1 else None
    print(
        f"SQL: {timers.statements:,} statements, {timers.sql:.1f} s; "
        f"processor: {timers.calls:,} calls, {timers.processor:.1f} s"
    )
    print(
        f"share of SQL + processor time: database {timers.sql / busy:.0%}, "
        f"processor {timers.processor / busy:.0%}"
        + (f"; other (engine, ORM) {other:.1f} s" if other is not None else "")
    )
    if args.profile:
        _print_profile(timers)


def _print_phases(
    phases: Mapping[str, tuple[float, int]],
    sent: Mapping[str, tuple[int, int]],
    cpu: Mapping[str, tuple[float, float]],
) -> None:
    for name, (seconds, n) in phases.items():
        rate = n / seconds if seconds else 0.0
        statements, commits = sent[name]
        per = f"{statements / max(n, 1):7.3f} statements, {commits / max(n, 1):6.3f} commits each"
        print(f"{name:16s} {n:8,d} payments in {seconds:8.2f} s  = {rate:9,.0f} /s  {per}")
        portal, database = cpu[name]
        print(
            f"{'':16s} CPU per payment: portal {portal / max(n, 1) * 1e6:7,.0f} µs, "
            f"PostgreSQL (this database's backends) {database / max(n, 1) * 1e6:7,.0f} µs"
        )


def _print_profile(timers: Timers) -> None:
    top = sorted(timers.by_statement.items(), key=lambda kv: -kv[1])[:10]
    for head, seconds in top:
        print(f"  {seconds:8.2f} s  {head}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--processor", choices=["stub", "sandbox"], default="stub")
    parser.add_argument("--accounts", type=int, default=1, help="sandbox accounts")
    parser.add_argument("--customers", type=int, default=2000, help="per sandbox account")
    parser.add_argument("--history-days", type=int, default=7, help="sandbox history")
    parser.add_argument(
        "--failure-rate", type=float, default=0.1, help="sandbox share of charges that fail"
    )
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--decide-lanes",
        type=int,
        default=DECIDE_LANES,
        help="decide batches run at once, as the decide cron runs them",
    )
    parser.add_argument(
        "--claim-lanes",
        type=int,
        default=CLAIM_LANES,
        help="claim batches run at once, as the claim cron runs them",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=Settings.model_fields["worker_charge_concurrency"].default,
        help="attempts charged at once, as one worker's charge slots run them",
    )
    parser.add_argument(
        "--analyze-every",
        type=float,
        default=15.0,
        help="seconds between ANALYZEs of the written tables when the server's autovacuum is "
        "off (0: never)",
    )
    parser.add_argument("--profile", action="store_true", help="print the costliest statements")
    parser.add_argument(
        "--until",
        choices=["claim", "record"],
        default="record",
        help="the last phase run (claim: decide and claim only)",
    )
    parser.add_argument(
        "--database-prefix", default="portal_bench", help="the scratch database's name prefix"
    )
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
