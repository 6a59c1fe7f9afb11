"""How long writers wait while a migration partitions a large append-only table.

`--table timelines` (the default): loads `--rows` payment transitions (and a tenth as many
model decisions) into a scratch database at revision 0020, then runs the upgrade to
0024_partition_timelines while a writer inserts a transition every `--interval-ms`
milliseconds and a reader reads one payment's timeline as often.

`--table outbox`: loads `--rows` outbox events over the past year, each with a finished
delivery to one of two endpoints and half of them with a feed position, at revision 0027, then
runs 0028 and 0029 (the outbox, then the deliveries, partitioned) while a writer inserts an
event and its delivery in one transaction, as the application does, and a reader reads a page
of the merchant's event feed.

Prints the migration's time and the writer's and reader's latencies during it: the longest
wait is what the swaps' locks cost the application, against the time the migration took.
With `--table outbox` it then fills one later month with a tenth as many events and
deliveries and drops it as the retention does (the month of deliveries, then the month of
events detached and dropped; the archive copy left out), under the same traffic, and prints
each step's time: detaching the events runs PostgreSQL's check that no delivery refers to them
under the outbox's exclusive lock.

    python bench/partition_migration.py --rows 2000000
    python bench/partition_migration.py --table outbox --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

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


ENDPOINTS = ("00000000-0000-0000-0000-0000000000e1", "00000000-0000-0000-0000-0000000000e2")

OUTBOX_SETUP = f"""
INSERT INTO merchant (id, name, status, created_at) VALUES ('{MERCHANT}', 'M', 'active', now());
INSERT INTO webhook_endpoint (id, merchant_id, url, secret_encrypted, enabled, created_at)
VALUES ('{ENDPOINTS[0]}', '{MERCHANT}', 'https://m.example/a', '\\x01'::bytea, true, now()),
       ('{ENDPOINTS[1]}', '{MERCHANT}', 'https://m.example/b', '\\x01'::bytea, true, now());
"""  # noqa: S608 - built from this module's constants

EVENTS = f"""
INSERT INTO outbox_event (id, merchant_id, event_type, payload, created_at, dispatched_at,
    position)
SELECT gen_random_uuid(), '{MERCHANT}', 'payment.recovered',
       jsonb_build_object('payment_id', gen_random_uuid(), 'amount_minor', 2900),
       t, t, CASE WHEN n % 2 = 0 THEN nextval('outbox_event_position_seq') END
FROM (SELECT n, now() - make_interval(secs => (random() * 31536000)::int) AS t
      FROM generate_series(1, $1::int) AS n) AS s
"""  # noqa: S608 - built from this module's constants

DELIVERIES = f"""
INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, status, attempts,
    next_attempt_at, created_at, delivered_at, last_status_code)
SELECT gen_random_uuid(), merchant_id, id,
       (ARRAY['{ENDPOINTS[0]}', '{ENDPOINTS[1]}']::uuid[])[1 + (random() < 0.5)::int],
       'delivered', 1, created_at, created_at, created_at, 200
FROM outbox_event
"""  # noqa: S608 - built from this module's constants


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


async def _load_outbox(url: str, rows: int) -> None:
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(OUTBOX_SETUP)
        await conn.execute(EVENTS.replace("$1::int", str(rows)))
        await conn.execute(DELIVERIES)
        await conn.execute("VACUUM ANALYZE outbox_event")
        await conn.execute("VACUUM ANALYZE webhook_delivery")
    finally:
        await conn.close()


MONTH_EVENTS = f"""
INSERT INTO outbox_event (id, merchant_id, event_type, payload, created_at, dispatched_at)
SELECT gen_random_uuid(), '{MERCHANT}', 'payment.recovered', '{{}}', t, t
FROM (SELECT $2::timestamptz + make_interval(secs => (random() * 2419200)::int) AS t
      FROM generate_series(1, $1::int)) AS s
"""  # noqa: S608 - built from this module's constants

MONTH_DELIVERIES = f"""
INSERT INTO webhook_delivery (id, merchant_id, event_id, event_created_at, endpoint_id, status,
    attempts, next_attempt_at, created_at)
SELECT gen_random_uuid(), merchant_id, id, created_at, '{ENDPOINTS[1]}', 'delivered', 1,
       created_at, created_at
FROM outbox_event WHERE created_at >= $1 AND created_at < $1 + interval '1 month'
"""  # noqa: S608 - built from this module's constants


async def _drop_month(url: str, rows: int) -> list[tuple[str, float]]:
    """Fill the first month after the initial partition, then drop it as the retention does."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        start = await conn.fetchval(
            "SELECT min(substring(pg_get_expr(relpartbound, oid) FROM 'FROM \\(''([^'']+)')"
            "::timestamptz) FROM pg_class WHERE relname LIKE 'outbox_event_p2%'"
        )
        await conn.execute(MONTH_EVENTS, rows, start)
        await conn.execute(MONTH_DELIVERIES, start)
        await conn.execute("ANALYZE outbox_event")
        await conn.execute("ANALYZE webhook_delivery")
        month = f"{start:%Y%m}"
        steps: list[tuple[str, float]] = []
        for name, statement in (
            ("drop the month of deliveries", f"DROP TABLE webhook_delivery_p{month}"),
            (
                "detach the month of events",
                f"ALTER TABLE outbox_event DETACH PARTITION outbox_event_p{month}",
            ),
            ("drop the month of events", f"DROP TABLE outbox_event_p{month}"),
        ):
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '2s'")
                await conn.execute(statement)
            steps.append((name, time.perf_counter() - started))
        return steps
    finally:
        await conn.close()


async def _outbox_traffic(
    url: str, interval: float, stop: asyncio.Event
) -> tuple[list[float], ...]:
    """Insert an event and its delivery, and read a feed page, every `interval` seconds."""
    writer = await asyncpg.connect(_dsn(url))
    reader = await asyncpg.connect(_dsn(url))
    writes: list[float] = []
    reads: list[float] = []
    failures: list[str] = []
    event = (
        "INSERT INTO outbox_event (id, merchant_id, event_type, payload, created_at, "
        "dispatched_at) VALUES ($1, $2, 'payment.recovered', '{}', now(), now()) "
        "RETURNING created_at"
    )
    # Until 0028 adds the column, and while its trigger fills it, a delivery is written
    # without `event_created_at`; with it once it exists (required after 0029).
    with_time = (
        "INSERT INTO webhook_delivery (id, merchant_id, event_id, event_created_at, endpoint_id,"
        " status, attempts, next_attempt_at, created_at) VALUES (gen_random_uuid(), $1, $2, $3,"
        " $4, 'pending', 0, now(), now())"
    )
    without = (
        "INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, status, attempts,"
        " next_attempt_at, created_at) VALUES (gen_random_uuid(), $1, $2, $3, 'pending', 0,"
        " now(), now())"
    )

    async def write() -> None:
        has_column = False
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with writer.transaction():
                    event_id = uuid.uuid4()
                    at = await writer.fetchval(event, event_id, MERCHANT)
                    if has_column:
                        await writer.execute(with_time, MERCHANT, event_id, at, ENDPOINTS[0])
                    else:
                        await writer.execute(without, MERCHANT, event_id, ENDPOINTS[0])
            except asyncpg.NotNullViolationError:
                # 0029's swap made the column required: from now on it is set.
                has_column = True
                continue
            except asyncpg.PostgresError as error:
                failures.append(type(error).__name__)
                continue
            writes.append(time.perf_counter() - started)
            if not has_column:
                has_column = bool(
                    await writer.fetchval(
                        "SELECT count(*) FROM information_schema.columns WHERE table_name = "
                        "'webhook_delivery' AND column_name = 'event_created_at'"
                    )
                )
            await asyncio.sleep(interval)

    async def read() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await reader.fetch(
                "SELECT id, position, event_type, payload FROM outbox_event WHERE merchant_id = $1"
                " AND position IS NOT NULL AND position > $2 ORDER BY position LIMIT 50",
                MERCHANT,
                1000,
            )
            reads.append(time.perf_counter() - started)
            await asyncio.sleep(interval)

    try:
        await asyncio.gather(write(), read())
    finally:
        await writer.close()
        await reader.close()
        if failures:
            print(f"writer: {len(failures)} transactions failed: {sorted(set(failures))}")
    return writes, reads


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
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="payment transitions, or outbox events"
    )
    parser.add_argument("--table", choices=("timelines", "outbox"), default="timelines")
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()
    outbox = args.table == "outbox"
    start, target = (
        ("0027_payment_orders", "0029_partition_webhook_delivery")
        if outbox
        else ("0020_ingest_indexes", "0024_partition_timelines")
    )

    services = await resolve_services(Settings())
    url = await create_scratch_database(services, "portal_partition_bench")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.upgrade, cfg, start)
        started = time.perf_counter()
        await (_load_outbox if outbox else _load)(url, args.rows)
        what = "outbox events and as many deliveries" if outbox else "transitions"
        print(f"loaded {args.rows:,} {what} in {time.perf_counter() - started:.0f} s")

        stop = asyncio.Event()
        traffic = asyncio.create_task(
            (_outbox_traffic if outbox else _traffic)(url, args.interval_ms / 1000, stop)
        )
        await asyncio.sleep(1)
        started = time.perf_counter()
        await asyncio.to_thread(command.upgrade, cfg, target)
        took = time.perf_counter() - started
        await asyncio.sleep(1)
        stop.set()
        writes, reads = await traffic
        print(f"migration {start} -> {target}: {took:.1f} s")
        if outbox:
            print(_summary("writer (insert an event and its delivery)", writes))
            print(_summary("reader (a page of the event feed)", reads))
            stop = asyncio.Event()
            traffic = asyncio.create_task(_outbox_traffic(url, args.interval_ms / 1000, stop))
            month_rows = max(1, args.rows // 10)
            steps = await _drop_month(url, month_rows)
            await asyncio.sleep(1)
            stop.set()
            writes, reads = await traffic
            print(f"a month of {month_rows:,} events and deliveries filled, then dropped:")
            for name, seconds in steps:
                print(f"  {name}: {seconds * 1000:.0f} ms")
            print(_summary("writer (insert an event and its delivery)", writes))
            print(_summary("reader (a page of the event feed)", reads))
        else:
            print(_summary("writer (insert one transition)", writes))
            print(_summary("reader (one payment's timeline)", reads))
    finally:
        await drop_database(services, url)


if __name__ == "__main__":
    asyncio.run(main())
