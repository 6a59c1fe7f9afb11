"""Batch reads behind the API's dataloaders: rows by id, and each merchant's rows of a kind."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select


class Identified(Protocol):
    id: uuid.UUID


class MerchantOwned(Protocol):
    id: uuid.UUID
    merchant_id: uuid.UUID
    created_at: datetime


RowT = TypeVar("RowT", bound=Identified)
OwnedT = TypeVar("OwnedT", bound=MerchantOwned)


async def rows_by_ids(
    session: AsyncSession, model: type[RowT], ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RowT]:
    """The rows of `model` with these ids (those the session's scope lets it see), by id."""
    rows = await session.execute(select(model).where(col(model.id).in_(ids)))
    return {row.id: row for row in rows.scalars()}


async def rows_by_merchant_ids(
    session: AsyncSession, model: type[OwnedT], merchant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[OwnedT]]:
    """Each merchant's rows of `model`, oldest first."""
    rows = await session.execute(
        select(model)
        .where(col(model.merchant_id).in_(merchant_ids))
        .order_by(col(model.created_at), col(model.id))
    )
    grouped: dict[uuid.UUID, list[OwnedT]] = defaultdict(list)
    for row in rows.scalars():
        grouped[row.merchant_id].append(row)
    return grouped
