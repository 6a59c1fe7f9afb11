"""A data set at scale: merchants with millions of failed payments, through the real schema.

    python bench/generate.py --payments 10000000 --merchants 20

Creates the database (default `portal_scale`, next to the portal's own database), runs the
migrations, then loads, set-based (`INSERT … SELECT` over `generate_series`, one statement per
chunk of payments, each in its own transaction):

- merchants with their default retry policy in a time zone of their own (the largest in
  Europe/Paris, the others in turn from `ZONES`) and one processor connection each (through
  the portal's services), skewed: the first merchant holds `--top-share` (default 40%) of the
  payments, the others split the rest by 1/rank;
- customers (one per three payments) with one card each (brand, funding, BIN, last4, expiry,
  fingerprint; never a card number);
- payments over the last `--days` (default 365), a third of them on billing days (the 1st of a
  month, 09:00-12:00 UTC), with the demo's decline mix, currencies and amounts; their state
  follows their age and decline (hard declines NOT_RETRYABLE, old ones RECOVERED, EXHAUSTED
  or CANCELED, recent ones SCHEDULED, PENDING or RECOVERED);
- every attempt (the failed charge, then the portal's retries two days apart; the last one
  approved when the payment was recovered), about three per payment;
- two timeline transitions per payment (the failure ingested, and where it stands now);
- one raw record per payment: the failed charge as the processor's list API returned it;
- the recovery rollups, kept by the schema's own triggers as the payments are inserted.

Every table's indexes and triggers stay in place while it loads (the rollup trigger adds each
chunk's payments in one statement; the raw records' key is claimed row by row by its trigger);
only foreign keys are set aside and validated in one pass at the end. What makes it fast:
`--connections` sessions (default 2) load at once, each taking the merchant with the most
payments left that no other session is loading; a merchant's payments are loaded in time order,
a chunk a slice of its history (see `PAYMENTS_SQL`); ids are laid out in load order (see `_id`);
each session sorts and hashes a chunk in memory (`WORK_MEM`) and compresses the WAL's full-page
images where it may. `VACUUM (ANALYZE)` then runs table by table on every session.

Prints rows per table and, per phase, wall time, rows per second and the loading sessions' CPU
time per row (their backends', read from /proc: the figure that does not depend on what else the
machine runs), and the database's size. The database is kept for `bench/api_scale.py`;
`--recreate` drops it first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from app.crypto import CredentialBox
from app.db import Database
from app.embedded import resolve_services
from app.enums import Processor, Role
from app.services.connection import create_connection
from app.services.merchant import create_merchant
from app.services.retry_policy import PolicyChanges, update_retry_policy
from app.services.seed import _BRANDS, _CURRENCIES, _DECLINES
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Principal, Scope
from app.urls import UrlPolicy
from portal.cli import upgrade_database
from procstat import backend_cpu_seconds

SUPPORT = Principal(key_id=None, name="generate", role=Role.SUPPORT, scope=Scope(None))
BOX = CredentialBox("bench-secret")
LOOPBACK = UrlPolicy(require_https=False, allow_loopback=True)
PROCESSORS = (Processor.STRIPE, Processor.BRAINTREE, Processor.ADYEN, Processor.CHECKOUT)
CHUNK = 250_000
# A loading session's memory for a chunk's sorts and hashes, and for the foreign keys' checks.
WORK_MEM = "256MB"
MAINTENANCE_WORK_MEM = "1GB"
# The merchants' own time zones, in turn: local days that are not UTC days, DST included.
ZONES = ("Europe/Paris", "America/New_York", "Asia/Kolkata", "UTC", "Australia/Sydney")


def _literal(values: list[str]) -> str:
    """A SQL text array of this module's own constants (no input reaches it)."""
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


def _pick(column: str, weights: list[int]) -> str:
    """A 1-based index drawn by `weights` from the uniform value in `column`."""
    total, cumulative, arms = sum(weights), 0, []
    for k, w in enumerate(weights[:-1], start=1):
        cumulative += w
        arms.append(f"WHEN {column} < {cumulative / total:.6f} THEN {k}")
    return f"CASE {' '.join(arms)} ELSE {len(weights)} END"


DECLINE_INDEX = _pick("r_decline", [d.weight for d in _DECLINES])
CURRENCY_INDEX = _pick("r_currency", [c[1] for c in _CURRENCIES])
BRAND_INDEX = _pick("r_brand", [b[2] for b in _BRANDS])
CATEGORIES = _literal([d.category.value for d in _DECLINES])
RETRYABLE = "ARRAY[" + ",".join("true" if d.retryable else "false" for d in _DECLINES) + "]"
ADVICE = _literal([d.advice.value for d in _DECLINES])
RAW_CODES = _literal([d.raw_code for d in _DECLINES])
NETWORK_CODES = _literal([d.network_code for d in _DECLINES])
CURRENCIES = _literal([c[0] for c in _CURRENCIES])
LOW = "ARRAY[" + ",".join(str(c[2]) for c in _CURRENCIES) + "]"
HIGH = "ARRAY[" + ",".join(str(c[3]) for c in _CURRENCIES) + "]"
BRANDS = _literal([b[0] for b in _BRANDS])
BIN_FIRST = _literal([b[1] for b in _BRANDS])


def _id(kind: str, number: str) -> str:
    """The id of row `number` of one kind for the merchant tagged `$2`: a per-merchant, per-kind
    prefix, then the number. Rows are loaded in number order, so every index keyed on an id
    (their own, and the payment, customer and card ids rows refer to) grows at its end instead
    of taking inserts all over: at ten million payments, random ids touched a different page of
    each of those indexes for nearly every row, and each page rewritten in full to the WAL
    after every checkpoint."""
    return f"(left(md5($2 || ':{kind}'), 16) || lpad(to_hex({number}), 16, '0'))::uuid"


CUSTOMERS_SQL = f"""
WITH c AS (
    SELECT i, random() AS r_brand, random() AS r_fund, random() AS r_exp
    FROM generate_series($3::bigint, $4::bigint - 1) AS i
), customers AS (
    INSERT INTO customer (merchant_id, id, external_ref, timezone, country, created_at)
    SELECT $1, {_id("c", "i")}, 'cus_' || i,
           (ARRAY['America/New_York','Europe/London','Europe/Berlin','Asia/Tokyo'])[1 + i % 4],
           (ARRAY['US','GB','DE','JP'])[1 + i % 4], $5
    FROM c
    RETURNING 1
)
INSERT INTO card_credential (merchant_id, id, customer_id, brand, funding, issuer_country, bin,
                             last4, exp_month, exp_year, fingerprint, created_at)
SELECT $1, {_id("k", "i")}, {_id("c", "i")},
       ({BRANDS})[{BRAND_INDEX}],
       CASE WHEN r_fund < 0.6 THEN 'credit' WHEN r_fund < 0.95 THEN 'debit' ELSE 'prepaid' END,
       (ARRAY['US','GB','DE','JP'])[1 + i % 4],
       ({BIN_FIRST})[{BRAND_INDEX}] || lpad((i % 100000)::text, 5, '0'),
       lpad((i % 10000)::text, 4, '0'), 1 + (i % 12)::int, 2027 + floor(r_exp * 4)::int,
       md5($2 || ':fp:' || i), $5
FROM c
"""  # noqa: S608 - built from this module's constants

# $1 merchant, $2 merchant tag, $3 first payment, $4 end, $5 customers, $6 now, $7 connection,
# $8 processor, $9 days of history, $10 the merchant's payments.
#
# A payment's failure time follows its number (spread over the history, the merchant's first
# payment the oldest), so a chunk is a slice of time, as payments arrive: its rollup rows are
# new quarter hours and days rather than updates of every day of the year (each chunk updated
# all of them when failure times were drawn at random), and the indexes on failure time, like
# the heap, grow in time order. Every third payment moves to the billing day (the 1st) of its
# month, between 09:00 and 12:00 UTC.
PAYMENTS_SQL = f"""
WITH b AS (
    SELECT i, {_id("p", "i")} AS id, i % $5 AS c,
           random() AS r_decline, random() AS r_currency, random() AS r_amount,
           random() AS r_state, random() AS r_retries,
           $6::timestamptz - ($10::bigint - i - random()) / $10::bigint
                             * make_interval(days => $9::int) AS spread
    FROM generate_series($3::bigint, $4::bigint - 1) AS i
), d AS (
    SELECT b.*, {DECLINE_INDEX} AS k, {CURRENCY_INDEX} AS cu,
           CASE WHEN i % 3 = 0
                THEN date_trunc('month', spread) + interval '9 hours'
                     + r_retries * interval '3 hours'
                ELSE spread
           END AS failed_at
    FROM b
), s AS (
    SELECT d.*,
           CASE WHEN NOT ({RETRYABLE})[k] THEN 'NOT_RETRYABLE'
                WHEN $6::timestamptz - failed_at > interval '14 days' THEN
                    CASE WHEN r_state < 0.55 THEN 'RECOVERED'
                         WHEN r_state < 0.93 THEN 'EXHAUSTED' ELSE 'CANCELED' END
                ELSE CASE WHEN r_state < 0.60 THEN 'SCHEDULED'
                          WHEN r_state < 0.95 THEN 'RECOVERED' ELSE 'PENDING' END
           END AS state
    FROM d
), p AS (
    SELECT s.*,
           CASE state WHEN 'RECOVERED' THEN 1 + floor(r_retries * 3)::int
                      WHEN 'EXHAUSTED' THEN 4
                      WHEN 'SCHEDULED' THEN floor(r_retries * 3)::int ELSE 0 END AS retries,
           ({LOW})[cu] + floor(r_amount * (({HIGH})[cu] - ({LOW})[cu]))::bigint AS amount
    FROM s
), pt AS (
    SELECT p.*, least(failed_at + retries * interval '2 days', $6::timestamptz) AS last_at
    FROM p
), payments AS (
    INSERT INTO payment (
        merchant_id, id, processor, processor_payment_id, amount_minor, currency, customer_id,
        card_id, invoice_ref, subscription_ref, first_failed_at, decline_category,
        decline_retryable, decline_advice, decline_raw_code, decline_network_code, state,
        next_retry_at, recovered_at, recovered_by, attempt_count, created_at, updated_at,
        connection_id, normalizer_version, decision_at, decision_reason, decision_strategy,
        needs_decision, policy_version, credential_fingerprint)
    SELECT $1, id, $8, 'pay_' || i, amount, ({CURRENCIES})[cu], {_id("c", "c")},
           {_id("k", "c")}, 'in_' || i, 'sub_' || c, failed_at, ({CATEGORIES})[k],
           ({RETRYABLE})[k], ({ADVICE})[k], ({RAW_CODES})[k], ({NETWORK_CODES})[k], state,
           CASE WHEN state = 'SCHEDULED' THEN last_at + interval '2 days' END,
           CASE WHEN state = 'RECOVERED' THEN last_at END,
           CASE WHEN state = 'RECOVERED' THEN 'portal' END,
           retries + 1, failed_at, last_at, $7, 2,
           CASE WHEN state = 'SCHEDULED' THEN last_at END,
           CASE WHEN state = 'SCHEDULED' THEN 'fixed schedule: next day of the policy' END,
           CASE WHEN state = 'SCHEDULED' THEN 'fixed_schedule' END,
           false, 1, md5($2 || ':fp:' || c)
    FROM pt
    RETURNING 1
), attempts AS (
    INSERT INTO payment_attempt (
        merchant_id, id, payment_id, number, attempted_at, outcome, actor, processor_attempt_id,
        decline_raw_code, decline_category, decline_retryable, decline_advice,
        decline_network_code, created_at, normalizer_version, portal_number, idempotency_key,
        sent_at, card_id)
    SELECT $1, {_id("a", "i * 8 + n")}, id, n,
           least(failed_at + (n - 1) * interval '2 days', $6::timestamptz),
           CASE WHEN state = 'RECOVERED' AND n = retries + 1 THEN 'succeeded' ELSE 'declined' END,
           CASE WHEN n = 1 THEN 'billing_system' ELSE 'portal' END,
           'pay_' || i || CASE WHEN n = 1 THEN '' ELSE '_r' || n END,
           CASE WHEN state = 'RECOVERED' AND n = retries + 1 THEN NULL ELSE ({RAW_CODES})[k] END,
           CASE WHEN state = 'RECOVERED' AND n = retries + 1 THEN NULL ELSE ({CATEGORIES})[k] END,
           CASE WHEN state = 'RECOVERED' AND n = retries + 1 THEN NULL ELSE ({RETRYABLE})[k] END,
           CASE WHEN state = 'RECOVERED' AND n = retries + 1 THEN NULL ELSE ({ADVICE})[k] END,
           CASE WHEN state = 'RECOVERED' AND n = retries + 1 THEN NULL
                ELSE ({NETWORK_CODES})[k] END,
           least(failed_at + (n - 1) * interval '2 days', $6::timestamptz), 2,
           CASE WHEN n > 1 THEN n - 1 END,
           CASE WHEN n > 1 THEN 'retry-' || id || '-' || (n - 1) END,
           CASE WHEN n > 1 THEN least(failed_at + (n - 1) * interval '2 days', $6::timestamptz) END,
           {_id("k", "c")}
    FROM pt, generate_series(1, retries + 1) AS n
    RETURNING 1
), transitions AS (
    INSERT INTO payment_transition (merchant_id, id, payment_id, seq, from_state, to_state, event,
                                    reason, actor, at)
    SELECT $1, {_id("t", "i * 2 + step")}, id, 0,
           CASE step WHEN 0 THEN 'PENDING' ELSE 'RETRYING' END,
           CASE step WHEN 0 THEN CASE WHEN state = 'NOT_RETRYABLE' THEN state ELSE 'PENDING' END
                     ELSE state END,
           CASE step WHEN 0 THEN 'failure_ingested' ELSE 'attempt_recorded' END,
           CASE step WHEN 0 THEN 'failure ingested' ELSE 'where the payment stands' END,
           CASE step WHEN 0 THEN 'processor' ELSE 'portal' END,
           CASE step WHEN 0 THEN failed_at ELSE last_at END
    FROM pt, generate_series(0, 1) AS step
    WHERE step = 0 OR retries > 0
    RETURNING 1
)
INSERT INTO raw_record (merchant_id, id, connection_id, processor, external_id, received_at,
                        content_hash, payload, normalized_at, normalizer_version)
SELECT $1, {_id("r", "i")}, $7, $8, 'pay_' || i, failed_at,
       encode(sha256(convert_to(body::text, 'UTF8')), 'hex'), body, failed_at, 2
FROM (
    SELECT pt.*, jsonb_build_object(
        'id', 'pay_' || i, 'object', 'charge', 'amount', amount,
        'currency', lower(({CURRENCIES})[cu]), 'status', 'failed',
        'customer', 'cus_' || c, 'invoice', 'in_' || i,
        'failure_code', ({RAW_CODES})[k], 'created', extract(epoch FROM failed_at)::bigint
    ) AS body
    FROM pt
) AS r
"""  # noqa: S608 - built from this module's constants

# Loaded tables whose foreign keys are set aside during the load and restored after it, each
# validated in one pass (`NOT VALID`, then `VALIDATE CONSTRAINT`) rather than row by row.
LOADED = (
    "customer",
    "card_credential",
    "payment",
    "payment_attempt",
    "payment_transition",
    "raw_record",
)

# What the summary counts: the loaded tables, and what the load made besides.
TABLES = ("merchant", *LOADED, "recovery_rollup")


def shares(merchants: int, top_share: float) -> list[float]:
    """The first merchant's share, then the rest by 1/rank."""
    if merchants == 1:
        return [1.0]
    weights = [1 / rank for rank in range(1, merchants)]
    rest = 1 - top_share
    return [top_share] + [rest * w / sum(weights) for w in weights]


async def _create_database(settings: Settings, name: str, recreate: bool) -> str:
    services = await resolve_services(settings)
    base, _, query = services.database_url.partition("?")
    head = base.rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{head}/postgres".replace("+asyncpg", ""))
    try:
        if recreate:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            raise SystemExit(f"database {name} exists: pass --recreate to load it again")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{head}/{name}" + (f"?{query}" if query else "")
    await asyncio.to_thread(upgrade_database, url)
    return url


async def _foreign_keys(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """The loaded tables' foreign keys as (table, name, definition), those of their
    partitions (inherited from the parent's) left out."""
    rows = await conn.fetch(
        "SELECT conrelid::regclass::text AS t, conname, pg_get_constraintdef(oid) AS d "
        "FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
        "AND conrelid::regclass::text = ANY($1::text[]) ORDER BY 1, 2",
        list(LOADED),
    )
    return [(r["t"], r["conname"], r["d"]) for r in rows]


async def _drop_foreign_keys(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """Drop the loaded tables' foreign keys; return (table, name, definition) to restore."""
    keys = await _foreign_keys(conn)
    for table, name, _ in keys:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    return keys


async def _restore_foreign_keys(conn: asyncpg.Connection, keys: list[tuple[str, str, str]]) -> None:
    for table, name, definition in keys:
        # A partitioned table takes no NOT VALID foreign key: adding it checks every row once.
        partitioned = await conn.fetchval(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::regclass", table
        )
        if partitioned:
            await conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            continue
        await conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition} NOT VALID')
        await conn.execute(f'ALTER TABLE {table} VALIDATE CONSTRAINT "{name}"')


async def _finish(url: str, name: str, connections: int) -> None:
    """Finish a load that stopped before its end (its process killed): add back the foreign
    keys it had set aside, as a freshly migrated database has them, then vacuum and analyze.
    The payments committed chunk by chunk stay as they are, each chunk whole."""
    reference = f"{name}_reference"
    reference_url = await _create_database(Settings(), reference, recreate=True)
    try:
        ref = await asyncpg.connect(reference_url.replace("+asyncpg", ""))
        try:
            wanted = await _foreign_keys(ref)
        finally:
            await ref.close()
    finally:
        await _drop_database(reference)
    conns = [await _session(url) for _ in range(max(1, connections))]
    try:
        present = {(t, n) for t, n, _ in await _foreign_keys(conns[0])}
        missing = [key for key in wanted if (key[0], key[1]) not in present]
        print(f"database {name}: {len(missing)} of {len(wanted)} foreign keys to restore")
        await _restore_foreign_keys(conns[0], missing)
        await _vacuum(conns)
        for table in TABLES:
            rows = await conns[0].fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            print(f"{table:<22}{rows:>14,}")
    finally:
        for c in conns:
            await c.close()


async def _drop_database(name: str) -> None:
    services = await resolve_services(Settings())
    head = services.database_url.partition("?")[0].rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{head}/postgres".replace("+asyncpg", ""))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _merchants(url: str, count: int, now: datetime) -> list[tuple[str, str, Processor]]:
    """Merchants with their policy and one connection each, through the services."""
    db = Database.from_url(url)
    made: list[tuple[str, str, Processor]] = []
    try:
        for m in range(count):
            kind = PROCESSORS[m % len(PROCESSORS)]
            async with db.uow(SYSTEM_SCOPE) as uow:
                merchant = await create_merchant(
                    uow, name=f"Scale merchant {m + 1}", principal=SUPPORT, now=now
                )
                connection = await create_connection(
                    uow,
                    principal=SUPPORT,
                    merchant_id=merchant.id,
                    kind=kind,
                    base_url="http://127.0.0.1:9",
                    policy=LOOPBACK,
                    credentials={
                        "api_key": f"sk_scale_{m}",
                        "hmac_key_hex": "00",
                        "public_key": f"pk_scale_{m}",
                        "private_key": f"sk_scale_{m}",
                    },
                    account_ref=f"acct_scale_{m}",
                    box=BOX,
                    now=now,
                )
                await update_retry_policy(
                    uow,
                    principal=SUPPORT,
                    merchant_id=merchant.id,
                    expected_version=1,
                    changes=PolicyChanges(timezone=ZONES[m % len(ZONES)]),
                    reason="the merchant's own time zone",
                    now=now,
                )
                await uow.commit()
            made.append((str(merchant.id), str(connection.id), kind))
    finally:
        await db.dispose()
    return made


def _cpu(pids: list[int]) -> float:
    """CPU seconds of the loading sessions' backends (when PostgreSQL runs on this machine)."""
    return sum(backend_cpu_seconds(pids).values())


@dataclass
class Share:
    """One merchant's part of the load, and how far it has gone."""

    merchant_id: str
    connection_id: str
    kind: Processor
    payments: int
    customers: int
    loaded: int = 0


async def _session(url: str) -> asyncpg.Connection:
    """A loading session: commits not waited for; no JIT (the load's row estimates are far off,
    a series per payment, and compiling each chunk's statement cost more than it saved); a
    chunk's sorts and hashes (the rollup trigger's grouping, the foreign keys' checks) in memory
    rather than in temporary files; full-page images compressed in the WAL where the server
    allows this session to ask for it (a superuser's setting)."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    await conn.execute(
        "SET synchronous_commit = off; SET jit = off; "
        f"SET work_mem = '{WORK_MEM}'; SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'"
    )
    with contextlib.suppress(
        asyncpg.InsufficientPrivilegeError, asyncpg.InvalidParameterValueError
    ):
        await conn.execute("SET wal_compression = lz4")
    return conn


async def _customers(conns: list[asyncpg.Connection], loads: list[Share], now: datetime) -> None:
    """Every merchant's customers and cards, chunk by chunk, on every connection at once."""
    chunks = iter(
        [
            (s, start, min(s.customers, start + CHUNK))
            for s in loads
            for start in range(0, s.customers, CHUNK)
        ]
    )

    async def work(conn: asyncpg.Connection) -> None:
        for share, start, end in chunks:
            await conn.execute(CUSTOMERS_SQL, share.merchant_id, share.merchant_id, start, end, now)

    await asyncio.gather(*(work(c) for c in conns))


async def _payments(
    conns: list[asyncpg.Connection],
    loads: list[Share],
    now: datetime,
    days: int,
    chunk: int,
    started: float,
) -> None:
    """Every merchant's payments, chunk by chunk in time order, on every connection at once.
    A connection takes the merchant with the most payments left that no other connection is
    loading, and only when there is none one that another is loading: two chunks of one
    merchant are two slices of its time, but may share a month's rollup rows, the second
    waiting at its end for the first's commit."""
    busy: dict[str, int] = {}

    def claim() -> Share | None:
        left = [s for s in loads if s.loaded < s.payments]
        free = [s for s in left if not busy.get(s.merchant_id)] or left
        return max(free, key=lambda s: s.payments - s.loaded, default=None)

    async def work(conn: asyncpg.Connection) -> None:
        while (share := claim()) is not None:
            busy[share.merchant_id] = busy.get(share.merchant_id, 0) + 1
            start, end = share.loaded, min(share.payments, share.loaded + chunk)
            share.loaded = end
            try:
                await conn.execute(
                    PAYMENTS_SQL,
                    share.merchant_id,
                    share.merchant_id,
                    start,
                    end,
                    share.customers,
                    now,
                    share.connection_id,
                    share.kind.value,
                    days,
                    share.payments,
                )
            finally:
                busy[share.merchant_id] -= 1
            done = time.perf_counter() - started
            print(f"  merchant {share.merchant_id[:8]}: {end:,}/{share.payments:,} ({done:,.0f} s)")

    await asyncio.gather(*(work(c) for c in conns))


async def _vacuum(conns: list[asyncpg.Connection]) -> None:
    """`VACUUM (ANALYZE)` of every table (a partitioned one with its partitions), the largest
    first, on every connection at once."""
    rows = await conns[0].fetch(
        "SELECT c.oid::regclass::text AS name FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'm') "
        "AND NOT c.relispartition ORDER BY (SELECT sum(pg_total_relation_size(t.relid)) "
        "FROM pg_partition_tree(c.oid) t) DESC NULLS LAST, 1"
    )
    tables = iter([r["name"] for r in rows])

    async def work(conn: asyncpg.Connection) -> None:
        for table in tables:
            await conn.execute(f"VACUUM (ANALYZE) {table}")

    await asyncio.gather(*(work(c) for c in conns))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=20)
    parser.add_argument("--top-share", type=float, default=0.4)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--database", default="portal_scale")
    parser.add_argument("--connections", type=int, default=2, help="Sessions loading at once.")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="Payments a statement.")
    parser.add_argument("--recreate", action="store_true")
    parser.add_argument(
        "--finish",
        action="store_true",
        help="Only restore the foreign keys and vacuum a database whose load was killed.",
    )
    args = parser.parse_args()
    if args.finish:
        services = await resolve_services(Settings())
        base, _, query = services.database_url.partition("?")
        url = f"{base.rsplit('/', 1)[0]}/{args.database}" + (f"?{query}" if query else "")
        await _finish(url, args.database, args.connections)
        return

    now = datetime.now(UTC).replace(microsecond=0)
    started = time.perf_counter()
    url = await _create_database(Settings(), args.database, args.recreate)
    merchants = await _merchants(url, args.merchants, now)
    print(f"database {args.database}: migrated, {len(merchants)} merchants and connections")
    loads = []
    for (merchant_id, connection_id, kind), share in zip(
        merchants, shares(args.merchants, args.top_share), strict=True
    ):
        payments = max(1, round(args.payments * share))
        loads.append(Share(merchant_id, connection_id, kind, payments, max(1, payments // 3)))
    conns = [await _session(url) for _ in range(max(1, args.connections))]
    conn = conns[0]
    compressed = await conn.fetchval("SHOW wal_compression")
    print(
        f"{len(conns)} sessions, {args.chunk:,} payments a statement, WAL compression {compressed}"
    )
    pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
    timings: dict[str, tuple[float, float, int, str]] = {}

    def phase(name: str, began: tuple[float, float], rows: int, unit: str) -> None:
        """Record a phase's wall time and its sessions' CPU time (their backends', from /proc)."""
        timings[name] = (time.perf_counter() - began[0], _cpu(pids) - began[1], rows, unit)

    try:
        keys = await _drop_foreign_keys(conn)
        customers = sum(s.customers for s in loads)
        payments = sum(s.payments for s in loads)
        t = (time.perf_counter(), _cpu(pids))
        await _customers(conns, loads, now)
        phase("customers and cards", t, customers, "customers")
        t = (time.perf_counter(), _cpu(pids))
        await _payments(conns, loads, now, args.days, args.chunk, started)
        phase("payments and the rest", t, payments, "payments")
        t = (time.perf_counter(), _cpu(pids))
        await _restore_foreign_keys(conn, keys)
        phase("foreign keys validated", t, payments, "payments")
        t = (time.perf_counter(), _cpu(pids))
        await _vacuum(conns)
        phase("vacuum and analyze", t, payments, "payments")
        print()
        print(f"{'table':<22}{'rows':>14}")
        for table in TABLES:
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - constants
            print(f"{table:<22}{rows:>14,}")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    finally:
        for c in conns:
            await c.close()
    print()
    print(f"{'phase':<24}{'wall s':>9}{'rows/s':>10}{'':<10}{'CPU s':>9}{'CPU µs/row':>12}")
    for name, (took, cpu, rows, unit) in timings.items():
        print(
            f"{name:<24}{took:>9.1f}{rows / max(took, 1e-9):>10,.0f} {unit:<9}{cpu:>9.1f}"
            f"{cpu / max(rows, 1) * 1e6:>12,.0f}"
        )
    print(f"{'total':<24}{time.perf_counter() - started:>10.1f} s   database size {size}")
    print(f"DATABASE_URL={url}")


if __name__ == "__main__":
    asyncio.run(main())
