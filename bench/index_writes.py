"""What the indexes on `payment` cost the retry engine's writes: WAL and buffers per update.

Builds two scratch databases, one migrated to `--base` and one to head, writes `--payments`
failed payments into each (as `retry_engine.py` does), and runs the engine's three set-based
updates (decide, claim, record a recovery) under `EXPLAIN (ANALYZE, WAL, BUFFERS)`. WAL records
and bytes count only the statement's own writes, so the figures hold on a busy machine where
throughput does not.

    PYTHONPATH=.:bench .venv/bin/python bench/index_writes.py --payments 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

import asyncpg
from alembic import command
from retry_engine import T0, _generate, _merchant
from sqlalchemy import text

from app.db import Database
from app.embedded import resolve_services
from app.settings import Settings
from portal.migrate import alembic_config

UPDATES = {
    "decide (PENDING -> SCHEDULED)": (
        "UPDATE payment SET state = 'SCHEDULED', needs_decision = false, decision_at = :t, "
        "next_retry_at = CAST(:t AS timestamptz) + random() * interval '3 days', "
        "updated_at = :t WHERE state = 'PENDING'"
    ),
    "claim (SCHEDULED -> RETRYING)": (
        "UPDATE payment SET state = 'RETRYING', retrying_since = :t, updated_at = :t "
        "WHERE state = 'SCHEDULED'"
    ),
    "record (RETRYING -> RECOVERED)": (
        "UPDATE payment SET state = 'RECOVERED', recovered_at = :t, recovered_by = 'portal', "
        "next_retry_at = NULL, retrying_since = NULL, attempt_count = attempt_count + 1, "
        "updated_at = :t WHERE state = 'RETRYING'"
    ),
}

BUFFERS = ("Hit", "Read", "Dirtied")


async def _measure(revision: str, payments: int) -> tuple[int, dict[str, dict[str, int]]]:
    services = await resolve_services(Settings(environment="test"))
    name = f"portal_bench_{uuid.uuid4().hex[:8]}"
    head = services.database_url.partition("?")[0].rsplit("/", 1)[0]
    admin = await asyncpg.connect(f"{head}/postgres".replace("+asyncpg", ""))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{head}/{name}"
    db = Database.from_url(url)
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
        await _generate(db, await _merchant(db, "http://127.0.0.1:1/stripe", "sk_stub"), payments)
        assert db.engine is not None
        found: dict[str, dict[str, int]] = {}
        async with db.engine.connect() as conn:
            indexes = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_indexes WHERE tablename = 'payment'")
                )
            ).scalar_one()
            for label, sql in UPDATES.items():
                explain = text("EXPLAIN (ANALYZE, WAL, BUFFERS, FORMAT JSON) " + sql)
                raw: Any = (await conn.execute(explain, {"t": T0})).scalar_one()
                plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
                found[label] = {
                    "wal_records": plan.get("WAL Records", 0),
                    "wal_bytes": plan.get("WAL Bytes", 0),
                    "buffers": sum(
                        plan.get(k, 0)
                        for k in (
                            "Shared Hit Blocks",
                            "Shared Read Blocks",
                            "Shared Dirtied Blocks",
                        )
                    ),
                }
                await conn.commit()
        return int(indexes), found
    finally:
        await db.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        services.close()


async def _run(args: argparse.Namespace) -> None:
    results = {rev: await _measure(rev, args.payments) for rev in (args.base, "head")}
    (base_indexes, base), (head_indexes, now) = results[args.base], results["head"]
    print(f"indexes on payment: {base_indexes} at {args.base}, {head_indexes} at head")
    for label in UPDATES:
        print(label)
        for metric in ("wal_records", "wal_bytes", "buffers"):
            before, after = base[label][metric], now[label][metric]
            change = 100 * (after - before) / before if before else 0.0
            print(f"  {metric:12} {before:>12,} -> {after:>12,}  ({change:+.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--base", default="0020_ingest_indexes", help="revision to compare with")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
