"""A merchant's events as a feed: positions in commit order, and keyset pages over them.

An outbox event is inserted by whatever transaction made the change it reports, and those
transactions commit in any order. A position taken at insert (a sequence default) would
therefore become visible out of order: a reader that has seen position 11 could later find a
10 that committed after it, and skip it for good. So positions are given after commit, by
`sequence_events`: it takes a transaction-scoped advisory lock (one sequencer at a time), gives
the waiting events the next values of `outbox_event_position_seq`, and commits. The next
sequencer can only take the lock after that commit, and only then draws larger values; so
every position a reader sees was committed after every smaller one, and reading `position > p`
never skips an event. A rolled-back batch leaves a gap, which a reader never waits for.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db import UnitOfWork
from app.models.retry import OutboxEvent
from app.retry.events import PING_EVENT_TYPE

# pg_advisory_xact_lock key of the sequencer: "feed" in ASCII.
SEQUENCER_LOCK = 0x66656564
SEQUENCE_BATCH = 1_000

_SEQUENCE = text(
    """
    UPDATE outbox_event AS e SET position = s.position
    FROM (
        SELECT id, created_at, nextval('outbox_event_position_seq') AS position
        FROM (
            SELECT id, created_at FROM outbox_event
            WHERE position IS NULL
            ORDER BY created_at, id
            LIMIT :limit
            FOR UPDATE
        ) AS waiting
    ) AS s
    -- By the whole key: each event is looked up in its own month's partition only.
    WHERE e.id = s.id AND e.created_at = s.created_at
    RETURNING e.merchant_id
    """
)


@dataclass(frozen=True)
class Sequenced:
    """What one sequencing batch positioned: how many events, of which merchants."""

    events: int
    merchants: frozenset[uuid.UUID]


async def sequence_events(uow: UnitOfWork, *, limit: int = SEQUENCE_BATCH) -> Sequenced:
    """Give up to `limit` committed events without a position their positions, oldest first.
    The caller commits at once (the lock is held until then) and then tells subscribers
    (`app.event_notices.publish`)."""
    await uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK})
    merchants = (await uow.session.execute(_SEQUENCE, {"limit": limit})).scalars().all()
    return Sequenced(events=len(merchants), merchants=frozenset(merchants))


@dataclass(frozen=True)
class FeedEvent:
    """One event of a feed."""

    id: uuid.UUID
    position: int
    event_type: str
    version: int
    created_at: datetime
    payload: dict[str, object]


def feed_query(query: Any, merchant_id: uuid.UUID, types: Sequence[str] | None) -> Any:
    """`query` over outbox events narrowed to the merchant's feed (optionally some `types`)."""
    query = query.where(
        col(OutboxEvent.merchant_id) == merchant_id,
        col(OutboxEvent.position).is_not(None),
        # A test event sent to one endpoint on request reports no change: not in the feed.
        col(OutboxEvent.event_type) != PING_EVENT_TYPE,
    )
    if types is not None:
        query = query.where(col(OutboxEvent.event_type).in_(list(types)))
    return query


def event_count_query(merchant_id: uuid.UUID, types: Sequence[str] | None) -> Any:
    """The events of a merchant's feed, for its `totalCount`."""
    return feed_query(select(col(OutboxEvent.id)), merchant_id, types)


async def feed_page(
    session: AsyncSession,
    *,
    merchant_id: uuid.UUID,
    after: int | None,
    types: Sequence[str] | None,
    limit: int,
) -> list[FeedEvent]:
    """Up to `limit` of the merchant's events past position `after` (from its oldest kept
    event when None), in feed order, optionally of the given `types` only; test pings to one
    endpoint (`sendTestWebhook`) are not events of the merchant's and are left out."""
    query = (
        feed_query(select(OutboxEvent), merchant_id, types)
        .order_by(col(OutboxEvent.position))
        .limit(limit)
    )
    if after is not None:
        query = query.where(col(OutboxEvent.position) > after)
    rows = (await session.execute(query)).scalars().all()
    return [
        FeedEvent(
            id=row.id,
            position=row.position,
            event_type=row.event_type,
            version=row.version,
            created_at=row.created_at,
            payload=row.payload,
        )
        for row in rows
        if row.position is not None
    ]


async def head_position(session: AsyncSession, *, merchant_id: uuid.UUID) -> int:
    """The merchant's last position in the feed so far (0 before any event)."""
    last = await session.scalar(
        select(func.max(col(OutboxEvent.position))).where(
            col(OutboxEvent.merchant_id) == merchant_id,
            col(OutboxEvent.position).is_not(None),
        )
    )
    return int(last or 0)


__all__ = ["FeedEvent", "Sequenced", "feed_page", "head_position", "sequence_events"]
