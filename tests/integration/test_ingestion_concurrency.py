"""Landing in concurrent transactions on a database of their own (not the test's savepoint):
two batches of the same records, each larger than a claim statement, wait for each other in
one order and never deadlock, whatever order each brought its records in."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from app.db import Database
from app.embedded import Services, create_scratch_database, drop_database
from app.processors.base import RawItem
from app.services import ingestion
from app.services.ingestion import IngestStats, land
from app.tenancy import SYSTEM_SCOPE
from portal.migrate import upgrade_database
from tests.support.factories import make_merchant
from tests.support.ingestion import invoiced_charge
from tests.support.retry import make_connection

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def db(services: Services) -> AsyncIterator[Database]:
    url = await create_scratch_database(services, "portal_ingest_race")
    await asyncio.to_thread(upgrade_database, url)
    database = Database.from_url(url, pool_size=4)
    try:
        yield database
    finally:
        await database.dispose()
        await drop_database(services, url)


async def _until_blocked(db: Database, pid: int) -> None:
    """Until the backend `pid` waits for a lock another transaction holds."""
    async with db.read(SYSTEM_SCOPE) as session:
        for _ in range(500):
            query = text("SELECT cardinality(pg_blocking_pids(:pid)) > 0")
            if (await session.execute(query, {"pid": pid})).scalar_one():
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the second landing never waited for the first")


async def test_overlapping_batches_in_opposite_orders_never_deadlock(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first transaction claims its first statement's keys and stops until the second
    waits for one of them; then it goes on. Claimed chunk by chunk in each batch's own order,
    the second would by then hold keys of the first's next chunk (records sorted by hash,
    highest first: the first's first chunk is the highest hashes, the second's the lowest),
    and PostgreSQL would abort one of them as deadlocked. Claimed in one content-hash order
    across the batch, the second waits at the first key and lands nothing once the first
    commits."""
    merchant = await make_merchant(db, "Opposite orders", now=NOW)
    connection = await make_connection(db, merchant, NOW)
    count = ingestion.CHUNK + ingestion.CHUNK // 2
    items = [
        RawItem.from_json(invoiced_charge(f"ch_cross_{i}", invoice=f"in_cross_{i}"), f"c{i}")
        for i in range(count)
    ]
    items.sort(key=lambda item: item.content_hash, reverse=True)
    second_pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    first_claimed = asyncio.Event()

    async def first_landing() -> tuple[list[Any], IngestStats]:
        async with db.uow(SYSTEM_SCOPE) as first:
            claims = 0
            execute = first.session.execute

            async def claim_then_wait(statement: Any, *args: Any, **kw: Any) -> Any:
                nonlocal claims
                result = await execute(statement, *args, **kw)
                if statement is ingestion._CLAIM_KEYS:
                    claims += 1
                    if claims == 1:
                        first_claimed.set()
                        await _until_blocked(db, await second_pid)
                return result

            monkeypatch.setattr(first.session, "execute", claim_then_wait)
            landed = await land(first, connection, items, now=NOW)
            await first.commit()
            assert claims == 2
            return landed

    async def second_landing() -> tuple[list[Any], IngestStats]:
        async with db.uow(SYSTEM_SCOPE) as second:
            pid = (await second.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            second_pid.set_result(pid)
            await first_claimed.wait()
            landed = await land(second, connection, items[::-1], now=NOW)
            await second.commit()
            return landed

    (won, won_stats), (lost, lost_stats) = await asyncio.wait_for(
        asyncio.gather(first_landing(), second_landing()), timeout=60
    )
    assert (len(won), won_stats.landed, won_stats.duplicates) == (count, count, 0)
    assert (len(lost), lost_stats.landed, lost_stats.duplicates) == (0, 0, count)
    # The ids come back in the batch's own order, not the order their keys were claimed in.
    async with db.read(SYSTEM_SCOPE) as session:
        rows = await session.execute(
            text("SELECT id, content_hash FROM raw_record WHERE connection_id = :c"),
            {"c": connection.id},
        )
        stored: dict[uuid.UUID, str] = {row.id: row.content_hash for row in rows}
    assert [stored[x] for x in won] == [item.content_hash for item in items]
