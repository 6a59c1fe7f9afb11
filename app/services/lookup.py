"""Rows of a model by id: in batches for the API's dataloaders (by id, by merchant), and one
locked for a configuration change."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import Uuid
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db import UnitOfWork
from app.errors import NotFound
from app.tenancy import Principal


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
    """The rows of `model` with these ids (those the session's scope lets it see), by id.

    The ids travel as one array parameter (`= ANY($1)`), so the statement's text is the same
    for any number of ids: PostgreSQL's prepared statement and plan serve every batch, where
    an `IN` list would be a new statement, prepared and planned, for each batch size."""
    rows = await session.execute(_by_ids(model), {"ids": list(ids)})
    return {row.id: row for row in rows.scalars()}


@cache
def _by_ids(model: type[Any]) -> Any:
    """The statement of `rows_by_ids` for `model`, the ids bound as `ids`: built once, so
    neither the statement nor its cache key is built again for each batch (together they
    cost more of a by-id batch than the ORM's execution of it). The session's tenancy
    criteria are added to a copy at execution, as to any statement."""
    ids = sa.bindparam("ids", type_=postgresql.ARRAY(Uuid))
    return select(model).where(col(model.id) == sa.any_(ids))


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


async def configurable_row(
    uow: UnitOfWork,
    principal: Principal,
    model: type[OwnedT],
    row_id: uuid.UUID,
    *,
    not_found: str,
    field: str,
    integration: bool = False,
) -> OwnedT:
    """The row, locked, if visible and the caller may configure its merchant (manage its
    integrations, when `integration`: partner keys too); else `NotFound` with the message
    `not_found` on the argument `field`."""
    row = (
        await uow.session.execute(select(model).where(col(model.id) == row_id).with_for_update())
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(not_found, field=field)
    if integration:
        principal.require_integrate(row.merchant_id)
    else:
        principal.require_configure(row.merchant_id)
    return row
