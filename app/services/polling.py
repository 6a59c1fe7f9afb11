"""Polling one connection: read a page, land it raw, normalize, advance the cursor, commit."""

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlmodel import col, select

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database
from app.enums import ConnectionStatus
from app.models.ingestion import ProcessorConnection
from app.processors.base import PermanentProcessorError, RawItem, TransientProcessorError
from app.processors.registry import adapter_for
from app.services.connection import connection_info
from app.services.ingestion import IngestStats, land, normalize_raw
from app.tenancy import SYSTEM_SCOPE

# Records committed together; a crash re-reads at most this many (landing deduplicates them).
BATCH_RECORDS = 1000


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

    async def commit(items: list[RawItem], new_cursor: dict[str, Any]) -> bool:
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
            raw_ids, landed = await land(uow, current, items, now=now)
            stats.add(landed)
            stats.add(await normalize_raw(uow, current, raw_ids, now=now))
            current.cursor = new_cursor
            current.cursor_at = now
            current.last_polled_at = now
            current.last_error = None
            await uow.commit()
        return True

    while pages < max_pages:
        # Several pages per transaction: per-statement costs are shared by more records.
        items: list[RawItem] = []
        batch_cursor = cursor
        more = True
        try:
            while more and pages < max_pages and len(items) < BATCH_RECORDS:
                page = await adapter.list_page(batch_cursor)
                items += page.items
                batch_cursor, more = dict(page.cursor), page.more
                pages += 1
        except TransientProcessorError:
            if items:
                await commit(items, batch_cursor)  # keep what was read before the failure
            raise
        except PermanentProcessorError as exc:
            await _mark_error(db, connection_id, str(exc))
            return PollResult(pages, stats, more=False, error=str(exc))
        if not await commit(items, batch_cursor):
            return PollResult(pages, stats, more=True)
        cursor = batch_cursor
        if not more:
            return PollResult(pages, stats, more=False)
    return PollResult(pages, stats, more=True)


async def _mark_error(db: Database, connection_id: uuid.UUID, message: str) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        connection = (
            await uow.session.execute(
                select(ProcessorConnection).where(col(ProcessorConnection.id) == connection_id)
            )
        ).scalar_one()
        connection.status = ConnectionStatus.ERROR
        connection.last_error = message[:2000]
        await uow.commit()
