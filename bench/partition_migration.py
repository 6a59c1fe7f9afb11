"""How long writers wait while migration 0021 partitions a large timeline.

Loads `--rows` payment transitions (and a tenth as many model decisions) into a scratch
database at revision 0020, then runs the upgrade to 0021 while a writer inserts a transition
every `--interval-ms` milliseconds and a reader reads one payment's timeline as often. Prints
the migration's time and the writer's and reader's latencies during it: the longest wait is
what the swap's locks cost the application, against the time the migration took in all.

    python bench/partition_migration.py --rows 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
from alembic import command

from app.embedded import create_scratch_database, drop_database, resolve_services
from app.settings import Settings
from portal.migrate import alembic_config

MERCHANT = "00000000-0000-0000-0000-00000000000a"
CUSTOMER = "00000000-0000-0000-0000-00000000000c"

SETUP = f"""
INSERT INTO merchant (id, name, status, created_at) VALUES ('{MERCHANT}', 'M', 'active', now());
INSERT INTO customer (id, merchant_id, external_ref, created_at)
VALUES ('{CUSTOMER}', '{MERCHANT}', 'cus_1', now());
INSERT INTO payment (id, merchant_id, processor, processor_payment_id, amount_minor, currency,
    customer_id, first_failed_at, decline_category, decline_retryable, decline_advice, state,
    attempt_count, created_at, updated_at)
SELECT gen_random_uuid(), '{MERCHANT}', 'stripe', 'ch_' || n, 2900, 'USD', '{CUSTOMER}', now(),
       'insufficient_funds', true, 'retry', 'SCHEDULED', 1, now(), now()
FROM generate_series(1, $1::int) AS n;
"""  # noqa: S608 - built from this module's constants

TRANSITIONS = """
INSERT INTO payment_transition (merchant_id, id, payment_id, seq, from_state, to_state, event,
    reason, actor, at)
SELECT p.merchant_id, gen_random_uuid(), p.id, k, 'SCHEDULED', 'RETRYING', 'claimed',
       'due at its scheduled time', 'portal',
       now() - make_interval(mins => (random() * 525600)::int)
FROM payment AS p, generate_series(1, $1::int) AS k
"""

DECISIONS = """
INSERT INTO model_decision (merchant_id, id, payment_id, role, source, decided_at,
    expected_recovered_minor, reason, explanation)
SELECT merchant_id, gen_random_uuid(), payment_id, 'acting', 'model', at, 0, reason, '[]'
FROM payment_transition TABLESAMPLE SYSTEM (10)
"""


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _load(url: str, rows: int) -> None:
    payments = max(1, rows // 4)
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(SETUP.replace("$1::int", str(payments)))
        await conn.execute(TRANSITIONS, 4)
        await conn.execute(DECISIONS)
        await conn.execute("VACUUM ANALYZE payment_transition")
        await conn.execute("VACUUM ANALYZE model_decision")
    finally:
        await conn.close()


async def _traffic(url: str, interval: float, stop: asyncio.Event) -> tuple[list[float], ...]:
    """Insert a transition and read a timeline every `interval` seconds until `stop`."""
    writer = await asyncpg.connect(_dsn(url))
    reader = await asyncpg.connect(_dsn(url))
    payment = await reader.fetchval("SELECT id FROM payment LIMIT 1")
    writes: list[float] = []
    reads: list[float] = []

    async def write() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await writer.execute(
                "INSERT INTO payment_transition (merchant_id, id, payment_id, seq, from_state, "
                "to_state, event, reason, actor, at) VALUES ($1, gen_random_uuid(), $2, 0, "
                "'RETRYING', 'SCHEDULED', 'declined', 'r', 'portal', now())",
                MERCHANT,
                payment,
            )
            writes.append(time.perf_counter() - started)
            await asyncio.sleep(interval)

    async def read() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await reader.fetch(
                "SELECT * FROM payment_transition WHERE payment_id = $1 ORDER BY at, seq",
                payment,
            )
            reads.append(time.perf_counter() - started)
            await asyncio.sleep(interval)

    try:
        await asyncio.gather(write(), read())
    finally:
        await writer.close()
        await reader.close()
    return writes, reads


def _summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name}: {len(ms)} statements, median {statistics.median(ms):.2f} ms, "
        f"p99 {p99:.2f} ms, longest {ms[-1]:.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="payment transitions")
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()

    services = await resolve_services(Settings())
    url = await create_scratch_database(services, "portal_partition_bench")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, "0020_ingest_indexes")
        started = time.perf_counter()
        await _load(url, args.rows)
        print(f"loaded {args.rows:,} transitions in {time.perf_counter() - started:.0f} s")

        stop = asyncio.Event()
        traffic = asyncio.create_task(_traffic(url, args.interval_ms / 1000, stop))
        await asyncio.sleep(1)
        started = time.perf_counter()
        await asyncio.to_thread(command.upgrade, cfg, "0024_partition_timelines")
        took = time.perf_counter() - started
        await asyncio.sleep(1)
        stop.set()
        writes, reads = await traffic
        print(f"migration 0020 -> 0021: {took:.1f} s")
        print(_summary("writer (insert one transition)", writes))
        print(_summary("reader (one payment's timeline)", reads))
    finally:
        await drop_database(services, url)


if __name__ == "__main__":
    asyncio.run(main())
