"""Polling one connection: read a page, land it raw, normalize, advance the cursor, commit."""

import uuid
from dataclasses import dataclass

import httpx
from sqlmodel import col, select

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database
from app.enums import ConnectionStatus
from app.models.ingestion import ProcessorConnection
from app.processors.base import PermanentProcessorError
from app.processors.registry import adapter_for
from app.services.connection import connection_info
from app.services.ingestion import IngestStats, land, normalize_raw
from app.tenancy import SYSTEM_SCOPE


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
    """Read up to `max_pages` pages. Each page's rows and the cursor after it commit together,
    so a crash between pages loses nothing and a restart resumes at the stored cursor.
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
    for page_number in range(1, max_pages + 1):
        try:
            page = await adapter.list_page(cursor)
        except PermanentProcessorError as exc:
            await _mark_error(db, connection_id, str(exc))
            return PollResult(page_number - 1, stats, more=False, error=str(exc))
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
                # Another worker advanced this connection meanwhile: its rows are committed,
                # so stop rather than write a stale cursor over a newer one.
                return PollResult(page_number - 1, stats, more=True)
            raw_ids, landed = await land(uow, current, page.items, now=now)
            stats.add(landed)
            stats.add(await normalize_raw(uow, current, raw_ids, now=now))
            current.cursor = page.cursor
            current.cursor_at = now
            current.last_polled_at = now
            current.last_error = None
            await uow.commit()
        cursor = dict(page.cursor)
        if not page.more:
            return PollResult(page_number, stats, more=False)
    return PollResult(max_pages, stats, more=True)


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
