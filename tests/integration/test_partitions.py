"""Monthly partitions: created ahead, stray rows moved out of the default partition, and months
past their retention window archived (the file checked against the rows) and dropped."""

import asyncio
import csv
import gzip
import hashlib
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy import text

from app.db import Database
from app.enums import PaymentState
from app.models.partitioning import (
    PARTITIONED,
    PAYMENT_TRANSITION,
    Partitioned,
    add_months,
    month_start,
)
from app.models.retry import PaymentTransition
from app.services.partitions import ensure_partitions, expire_partitions, partitions
from app.tenancy import SYSTEM_SCOPE
from tests.support.factories import make_merchant, make_payments

NOW = datetime(2031, 1, 15, 9, 30, tzinfo=UTC)


async def _names(db: Database, table: Partitioned) -> set[str]:
    async with db.session(SYSTEM_SCOPE) as s:
        return {p.name for p in await partitions(s, table)}


async def _transitions_at(db: Database, *moments: datetime) -> list[uuid.UUID]:
    merchant = await make_merchant(db, "Partitioned", now=moments[0])
    [payment] = await make_payments(db, merchant, 1, now=moments[0], attempts_each=1)
    rows = [
        PaymentTransition(
            merchant_id=merchant.id,
            payment_id=payment.id,
            seq=i,
            from_state=PaymentState.SCHEDULED,
            to_state=PaymentState.RETRYING,
            event="claimed",
            reason="due",
            actor="portal",
            at=at,
        )
        for i, at in enumerate(moments)
    ]
    async with db.uow(SYSTEM_SCOPE) as uow:
        uow.session.add_all(rows)
        await uow.commit()
    return [r.id for r in rows]


async def _partition_of(db: Database, transition_id: uuid.UUID) -> str:
    async with db.session(SYSTEM_SCOPE) as s:
        return str(
            await s.scalar(
                text("SELECT tableoid::regclass::text FROM payment_transition WHERE id = :i"),
                {"i": transition_id},
            )
        )


def _files(folder: Path, pattern: str) -> list[Path]:
    return list(folder.rglob(pattern))


def test_month_arithmetic_crosses_years() -> None:
    start = month_start(datetime(2030, 12, 31, 23, 59, tzinfo=UTC))
    assert start == datetime(2030, 12, 1, tzinfo=UTC)
    assert add_months(start, 1) == datetime(2031, 1, 1, tzinfo=UTC)
    assert add_months(start, -12) == datetime(2029, 12, 1, tzinfo=UTC)
    assert add_months(start, 25) == datetime(2033, 1, 1, tzinfo=UTC)


async def test_partitions_are_created_for_this_month_and_the_next_ones_once(
    db: Database,
) -> None:
    created = await ensure_partitions(db, now=NOW, months_ahead=2)
    months = {"p203101", "p203102", "p203103"}
    assert {c.partition for c in created} == {f"{t.table}_{m}" for t in PARTITIONED for m in months}
    assert all(c.moved == 0 for c in created)
    assert {f"payment_transition_{m}" for m in months} <= await _names(db, PAYMENT_TRANSITION)
    assert await ensure_partitions(db, now=NOW, months_ahead=2) == []


async def test_rows_waiting_in_the_default_partition_move_into_their_month(db: Database) -> None:
    stray, later = await _transitions_at(
        db, datetime(2032, 3, 10, tzinfo=UTC), datetime(2032, 5, 2, tzinfo=UTC)
    )
    assert await _partition_of(db, stray) == "payment_transition_default"

    created = await ensure_partitions(db, now=datetime(2032, 3, 1, tzinfo=UTC), months_ahead=1)

    assert {(c.partition, c.moved) for c in created if c.partition.startswith("payment_")} == {
        ("payment_transition_p203203", 1),
        ("payment_transition_p203204", 0),
    }
    assert await _partition_of(db, stray) == "payment_transition_p203203"
    # May has no partition yet: its row waits where it was.
    assert await _partition_of(db, later) == "payment_transition_default"


async def test_months_past_the_window_are_archived_then_dropped(
    db: Database, tmp_path: Path
) -> None:
    await ensure_partitions(db, now=NOW, months_ahead=2)
    january = await _transitions_at(
        db, datetime(2031, 1, 10, tzinfo=UTC), datetime(2031, 1, 31, 23, 59, tzinfo=UTC)
    )
    february = await _transitions_at(db, datetime(2031, 2, 20, tzinfo=UTC))

    # 30 days before 15 March is 13 February: January has ended before it, February has not.
    archived = await expire_partitions(
        db,
        now=datetime(2031, 3, 15, tzinfo=UTC),
        retention_days={"payment_transition": 30},
        archive_dir=tmp_path,
    )

    by_name = {a.partition: a for a in archived}
    assert "payment_transition_p203101" in by_name
    assert "payment_transition_p203102" not in by_name
    assert not any(name.startswith("model_decision") for name in by_name)  # no window: kept
    left = await _names(db, PAYMENT_TRANSITION)
    assert "payment_transition_p203101" not in left
    assert {"payment_transition_p203102", "payment_transition_default"} <= left
    assert await _partition_of(db, february[0]) == "payment_transition_p203102"

    january_file = by_name["payment_transition_p203101"]
    raw = gzip.decompress(january_file.path.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == january_file.sha256
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert january_file.rows == len(rows) == 2
    assert {uuid.UUID(r["id"]) for r in rows} == set(january)
    manifest = json.loads(
        january_file.path.with_name("payment_transition_p203101.json").read_text()
    )
    assert manifest["rows"] == 2
    assert manifest["from"] == "2031-01-01T00:00:00+00:00"
    assert manifest["to"] == "2031-02-01T00:00:00+00:00"
    assert manifest["columns"][:2] == ["merchant_id", "id"]
    assert not _files(tmp_path, "*.partial")


async def test_without_a_window_nothing_is_archived_or_dropped(
    db: Database, tmp_path: Path
) -> None:
    await ensure_partitions(db, now=NOW, months_ahead=0)
    async with db.session(SYSTEM_SCOPE) as s:
        await s.execute(text("SET LOCAL TimeZone = 'UTC'"))
        before = await partitions(s, PAYMENT_TRANSITION)

    archived = await expire_partitions(
        db,
        now=datetime(2040, 1, 1, tzinfo=UTC),
        retention_days={"payment_transition": 0},
        archive_dir=tmp_path,
    )

    assert archived == []
    async with db.session(SYSTEM_SCOPE) as s:
        await s.execute(text("SET LOCAL TimeZone = 'UTC'"))
        assert await partitions(s, PAYMENT_TRANSITION) == before
    assert not _files(tmp_path, "*")


async def test_two_transactions_landing_one_record_store_it_once(database_url: str) -> None:
    """The key is claimed by the trigger: the second landing waits for the first and, once that
    commits, stores nothing (what ON CONFLICT DO NOTHING did on the unpartitioned table)."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    merchant, connection = uuid.uuid4(), uuid.uuid4()
    content = uuid.uuid4().hex
    land = (
        "INSERT INTO raw_record (merchant_id, id, connection_id, processor, received_at, "
        "content_hash, payload) VALUES ($1, $2, $3, 'stripe', now(), $4, '{}') RETURNING id"
    )
    try:
        await first.execute(
            "INSERT INTO merchant (id, name, status, created_at) VALUES ($1, 'M', 'active', now())",
            merchant,
        )
        await first.execute(
            "INSERT INTO processor_connection (id, merchant_id, kind, name, base_url, "
            "credentials_encrypted, status, cursor, created_at) VALUES ($1, $2, 'stripe', 'S', "
            "'http://127.0.0.1:1', '\\x01'::bytea, 'active', '{}', now())",
            connection,
            merchant,
        )
        tx = first.transaction()
        await tx.start()
        won = await first.fetch(land, merchant, uuid.uuid4(), connection, content)
        waiting = asyncio.create_task(
            second.fetch(land, merchant, uuid.uuid4(), connection, content)
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()  # waits for the first transaction's key
        await tx.commit()
        lost = await asyncio.wait_for(waiting, timeout=10)
        assert len(won) == 1
        assert lost == []
        stored = await first.fetchval(
            "SELECT count(*) FROM raw_record WHERE connection_id = $1", connection
        )
        assert stored == 1
    finally:
        await first.execute("DELETE FROM raw_record WHERE connection_id = $1", connection)
        await first.execute("DELETE FROM raw_record_key WHERE connection_id = $1", connection)
        await first.execute("DELETE FROM processor_connection WHERE id = $1", connection)
        await first.execute("DELETE FROM merchant WHERE id = $1", merchant)
        await first.close()
        await second.close()
