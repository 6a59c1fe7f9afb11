"""Polling one connection: read a page, land it raw, normalize, advance the cursor, commit."""

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database
from app.enums import ConnectionStatus, Processor
from app.models.ingestion import ProcessorConnection
from app.processors.adapters import adapter_for
from app.processors.base import (
    PermanentProcessorError,
    ProcessorAdapter,
    ProcessorError,
    RawItem,
    TransientProcessorError,
)
from app.services.connection import connection_info
from app.services.ingestion import IngestStats, Prepared, ingest, prepare
from app.tenancy import SYSTEM_SCOPE

logger = logging.getLogger(__name__)

# Records committed together; a crash re-reads at most this many (landing deduplicates them).
BATCH_RECORDS = 1000

# The tables ingestion's lookups read. A backfill can double them well within autovacuum's
# one-minute round; until it refreshes their statistics the planner believes them nearly empty
# and answers a lookup of a thousand ids by filtering the merchant's whole history, so a batch
# costs more the more was ingested before it.
LOOKUP_TABLES = ("payment", "payment_attempt", "customer", "card_credential")
STATISTICS_FLOOR = 1000
_GROWN = text(
    """
    SELECT relname FROM pg_stat_user_tables
    WHERE schemaname = current_schema() AND relname = ANY(CAST(:tables AS text[]))
      AND n_mod_since_analyze >= :floor AND n_mod_since_analyze * 2 >= n_live_tup
    ORDER BY relname
    """
)


@dataclass
class PollResult:
    """How a poll ended: pages read, rows written, and whether more is waiting."""

    pages: int
    stats: IngestStats
    more: bool
    error: str | None = None


async def poll_connection(
    db: Database,
    connection_id: uuid.UUID,
    *,
    client: httpx.AsyncClient,
    box: CredentialBox,
    clock: Clock,
    max_pages: int = 50,
) -> PollResult:
    """Read up to `max_pages` pages. Rows and the cursor after them commit together, so a
    crash between batches loses nothing and a restart resumes at the stored cursor.
    Transient processor errors propagate (the job retries later); permanent ones mark the
    connection as failed with the reason."""
    stats = IngestStats()
    async with db.session(SYSTEM_SCOPE) as session:
        connection = (
            await session.execute(
                select(ProcessorConnection).where(col(ProcessorConnection.id) == connection_id)
            )
        ).scalar_one_or_none()
    if connection is None or connection.status is not ConnectionStatus.ACTIVE:
        return PollResult(0, stats, more=False)
    adapter = adapter_for(connection_info(connection, box), client)
    cursor = dict(connection.cursor)
    pages = 0

    async def commit(prepared: Prepared, new_cursor: dict[str, Any]) -> bool:
        """Land, normalize and move the cursor in one transaction; False if another worker
        moved the cursor meanwhile (its rows are committed: writing ours would go back)."""
        now = clock.now()
        async with db.uow(SYSTEM_SCOPE) as uow:
            current = (
                await uow.session.execute(
                    select(ProcessorConnection)
                    .where(col(ProcessorConnection.id) == connection_id)
                    .with_for_update()
                )
            ).scalar_one()
            if current.cursor != cursor:
                return False
            stats.add(await ingest(uow, current, prepared, now=now))
            current.cursor = new_cursor
            current.cursor_at = now
            current.last_polled_at = now
            current.last_error = None
            await uow.commit()
        return True

    # The next batch is read while the current one is written: the processor's latency and
    # the database's overlap. A read ahead of a batch that fails to commit is discarded.
    kind = connection.kind
    reading = asyncio.create_task(_read(adapter, kind, cursor, max_pages))
    try:
        while True:
            batch = await reading
            pages += batch.pages
            if isinstance(batch.error, PermanentProcessorError):
                await _mark_error(db, connection_id, str(batch.error))
                return PollResult(pages, stats, more=False, error=str(batch.error))
            ahead = batch.error is None and batch.more and pages < max_pages
            if ahead:
                reading = asyncio.create_task(_read(adapter, kind, batch.cursor, max_pages - pages))
            if batch.error is not None:
                if batch.prepared.landings:
                    await commit(batch.prepared, batch.cursor)  # keep what was read before it
                raise batch.error
            if not await commit(batch.prepared, batch.cursor):
                return PollResult(pages, stats, more=True)
            cursor = batch.cursor
            await refresh_statistics(db)
            if not ahead:
                return PollResult(pages, stats, more=batch.more)
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


@dataclass
class _Batch:
    """Pages read (and prepared) for one transaction; `error` is the processor error that
    ended the read."""

    prepared: Prepared
    cursor: dict[str, Any]
    more: bool
    pages: int
    error: ProcessorError | None = None


async def _read(
    adapter: ProcessorAdapter, kind: Processor, cursor: dict[str, Any], max_pages: int
) -> _Batch:
    """Several pages per transaction, so per-statement costs are shared by more records."""
    items: list[RawItem] = []
    more, pages, error = True, 0, None
    try:
        while more and pages < max_pages and len(items) < BATCH_RECORDS:
            page = await adapter.list_page(cursor)
            items += page.items
            cursor, more = dict(page.cursor), page.more
            pages += 1
    except (TransientProcessorError, PermanentProcessorError) as exc:
        error = exc
    return _Batch(prepare(kind, items), cursor, more, pages, error)


async def refresh_statistics(
    db: Database, tables: tuple[str, ...] = LOOKUP_TABLES, floor: int = STATISTICS_FLOOR
) -> list[str]:
    """ANALYZE the lookup tables that at least doubled since their statistics were taken (the
    usual advice after a bulk load; a steady trickle of new records never triggers it).

    Only an optimisation: a database without PostgreSQL's statistics views, or a role that may
    not analyze, is left to its own statistics."""
    try:
        async with db.session(SYSTEM_SCOPE) as session:
            grown = list(
                (await session.execute(_GROWN, {"tables": list(tables), "floor": floor})).scalars()
            )
            for name in grown:
                if name in tables:  # a name the caller gave, as the catalog spells it
                    await session.execute(text(f"ANALYZE {name}"))
            await session.commit()
    except DBAPIError as exc:
        logger.warning("planner statistics not refreshed: %s", type(exc.orig).__name__)
        return []
    return grown


async def _mark_error(db: Database, connection_id: uuid.UUID, message: str) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = (
            await uow.session.execute(
                select(ProcessorConnection).where(col(ProcessorConnection.id) == connection_id)
            )
        ).scalar_one()
        if connection.status is ConnectionStatus.DISCONNECTED:
            return  # disconnected while it was being read: it stays so
        connection.status = ConnectionStatus.ERROR
        connection.last_error = message[:2000]
        await uow.commit()
