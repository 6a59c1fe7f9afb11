"""Dataloaders keyed by id, each batch fetched in its own short session bound to the caller's
scope, its statement outside any transaction (`Database.read`: one round trip, not three)."""

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from app.db import Database
from app.services.lookup import OwnedT, RowT, rows_by_ids, rows_by_merchant_ids
from app.tenancy import Scope

T = TypeVar("T")
Fetch = Callable[[AsyncSession, Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, T]]]


def by_id(db: Database, scope: Scope, fetch: Fetch[T]) -> DataLoader[uuid.UUID, T | None]:
    async def load(keys: list[uuid.UUID]) -> list[T | None]:
        async with db.read(scope) as session:
            found = await fetch(session, keys)
        return [found.get(k) for k in keys]

    return DataLoader(load_fn=load)


def count_by_id(db: Database, scope: Scope, fetch: Fetch[int]) -> DataLoader[uuid.UUID, int]:
    async def load(keys: list[uuid.UUID]) -> list[int]:
        async with db.read(scope) as session:
            found = await fetch(session, keys)
        return [found.get(k, 0) for k in keys]

    return DataLoader(load_fn=load)


def many_by_id(db: Database, scope: Scope, fetch: Fetch[list[T]]) -> DataLoader[uuid.UUID, list[T]]:
    async def load(keys: list[uuid.UUID]) -> list[list[T]]:
        async with db.read(scope) as session:
            found = await fetch(session, keys)
        return [found.get(k, []) for k in keys]

    return DataLoader(load_fn=load)


def row_by_id(db: Database, scope: Scope, model: type[RowT]) -> DataLoader[uuid.UUID, RowT | None]:
    """Rows of one model by their id."""
    return by_id(db, scope, lambda session, ids: rows_by_ids(session, model, ids))


def rows_by_merchant_id(
    db: Database, scope: Scope, model: type[OwnedT]
) -> DataLoader[uuid.UUID, list[OwnedT]]:
    """Each merchant's rows of one model, oldest first."""
    return many_by_id(db, scope, lambda session, ids: rows_by_merchant_ids(session, model, ids))
