"""Replaying a connection's stored raw records through the current normalizer: a workflow,
it commits batch by batch."""

import uuid
from datetime import datetime

from app.clock import Clock
from app.db import Database
from app.errors import NotFound
from app.models.ingestion import ProcessorConnection
from app.services.ingestion import IngestStats, normalize_raw_records, pending_raw_ids
from app.tenancy import SYSTEM_SCOPE


async def replay_connection(
    db: Database,
    connection_id: uuid.UUID,
    *,
    since: datetime | None,
    clock: Clock,
    batch: int = 1000,
) -> IngestStats:
    """Re-normalize every raw record of a connection (since a time) with the current
    normalizer, batch by batch; clean rows are updated in place, never duplicated."""
    total = IngestStats()
    after: uuid.UUID | None = None
    while True:
        async with db.uow(SYSTEM_SCOPE) as uow:
            connection = await uow.session.get(ProcessorConnection, connection_id)
            if connection is None:
                raise NotFound("connection not found", field="connection")
            ids = await pending_raw_ids(
                uow, connection_id, since=since, replay=True, limit=batch, after=after
            )
            if not ids:
                return total
            total.add(await normalize_raw_records(uow, connection, ids, now=clock.now()))
            await uow.commit()
        after = ids[-1]
