"""Support's view of ingestion: a connection's raw records and dead letters, by page, with
their payloads scrubbed for display (`app/processors/normalize/display.py`).

Who may read them: support, and the merchant's own key (its own processor account's records,
which it can read at the processor anyway). Partner keys may not: a payload carries the
merchant's customers' personal data (names, e-mail and billing addresses), which a partner's
view of payments never shows. The scoped session hides other tenants' rows whoever asks."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.errors import Forbidden
from app.models.ingestion import DeadLetter, RawRecord
from app.processors.normalize.display import payload_for_display
from app.tenancy import Principal

Key = tuple[datetime, uuid.UUID]


def require_reader(principal: Principal, merchant_id: uuid.UUID) -> None:
    """Refuse (`Forbidden`) unless the caller is support or the merchant's own key."""
    if not principal.may_configure(merchant_id):
        raise Forbidden(
            "only support or the merchant's own key may read its raw records and dead letters"
        )


@dataclass(frozen=True)
class RawRecordView:
    """A stored raw record with its payload scrubbed for display."""

    row: RawRecord
    payload: dict[str, Any]


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter with the raw record it was read from, scrubbed for display."""

    row: DeadLetter
    raw: RawRecordView


def _view(row: RawRecord) -> RawRecordView:
    return RawRecordView(row=row, payload=payload_for_display(row.payload))


def raw_records_query(
    query: Any, connection_id: uuid.UUID, since: datetime | None, unnormalized_only: bool
) -> Any:
    """`query` over raw records narrowed to a connection's, as the page narrows them."""
    query = query.where(col(RawRecord.connection_id) == connection_id)
    if since is not None:
        query = query.where(col(RawRecord.received_at) >= since)
    if unnormalized_only:
        query = query.where(col(RawRecord.normalized_at).is_(None))
    return query


def raw_record_count_query(
    connection_id: uuid.UUID, since: datetime | None, unnormalized_only: bool
) -> Any:
    """The raw records a connection's page lists, for its `totalCount`."""
    return raw_records_query(select(col(RawRecord.id)), connection_id, since, unnormalized_only)


def dead_letter_count_query(connection_id: uuid.UUID) -> Any:
    """A connection's dead letters, for their `totalCount`."""
    return select(col(DeadLetter.id)).where(col(DeadLetter.connection_id) == connection_id)


async def raw_records_page(
    session: AsyncSession,
    connection_id: uuid.UUID,
    *,
    first: int,
    after: Key | None,
    since: datetime | None = None,
    unnormalized_only: bool = False,
) -> list[RawRecordView]:
    """Up to `first + 1` raw records of a connection, newest received first, keyset on
    (received_at, id); `since` keeps those received at or after it, `unnormalized_only` those
    the normalizer has not read yet (webhook deliveries waiting)."""
    query = raw_records_query(select(RawRecord), connection_id, since, unnormalized_only)
    if after is not None:
        query = query.where(tuple_(col(RawRecord.received_at), col(RawRecord.id)) < tuple_(*after))
    query = query.order_by(col(RawRecord.received_at).desc(), col(RawRecord.id).desc())
    rows = (await session.execute(query.limit(first + 1))).scalars().all()
    return [_view(r) for r in rows]


async def dead_letters_page(
    session: AsyncSession, connection_id: uuid.UUID, *, first: int, after: Key | None
) -> list[DeadLetterView]:
    """Up to `first + 1` dead letters of a connection, newest first, keyset on
    (created_at, id), each with its raw record (one query)."""
    query = (
        select(DeadLetter, RawRecord)
        .join(RawRecord, col(RawRecord.id) == col(DeadLetter.raw_record_id))
        .where(col(DeadLetter.connection_id) == connection_id)
    )
    if after is not None:
        query = query.where(tuple_(col(DeadLetter.created_at), col(DeadLetter.id)) < tuple_(*after))
    query = query.order_by(col(DeadLetter.created_at).desc(), col(DeadLetter.id).desc())
    rows = (await session.execute(query.limit(first + 1))).all()
    return [DeadLetterView(row=letter, raw=_view(raw)) for letter, raw in rows]
