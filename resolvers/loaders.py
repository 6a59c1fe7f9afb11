"""Per-request dataloaders, each batch in its own short session bound to the caller's scope."""

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from app.db import Database
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.models.retry_policy import RetryPolicy
from app.services.merchant import merchants_by_ids
from app.services.payment import (
    attempts_by_payment_ids,
    cards_by_ids,
    customers_by_ids,
    payments_by_ids,
)
from app.services.retry_policy import current_policies
from app.tenancy import Scope
from resolvers.retry_loaders import RetryLoaders

T = TypeVar("T")
Fetch = Callable[[AsyncSession, Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, T]]]


def _by_id(db: Database, scope: Scope, fetch: Fetch[T]) -> DataLoader[uuid.UUID, T | None]:
    async def load(keys: list[uuid.UUID]) -> list[T | None]:
        async with db.session(scope) as session:
            found = await fetch(session, keys)
        return [found.get(k) for k in keys]

    return DataLoader(load_fn=load)


def _many_by_id(
    db: Database, scope: Scope, fetch: Fetch[list[T]]
) -> DataLoader[uuid.UUID, list[T]]:
    async def load(keys: list[uuid.UUID]) -> list[list[T]]:
        async with db.session(scope) as session:
            found = await fetch(session, keys)
        return [found.get(k, []) for k in keys]

    return DataLoader(load_fn=load)


class Loaders:
    """The request's loaders; a new set per request, so nothing is cached across callers."""

    def __init__(self, db: Database, scope: Scope) -> None:
        self.merchant_by_id: DataLoader[uuid.UUID, Merchant | None] = _by_id(
            db, scope, merchants_by_ids
        )
        self.payment_by_id: DataLoader[uuid.UUID, Payment | None] = _by_id(
            db, scope, payments_by_ids
        )
        self.customer_by_id: DataLoader[uuid.UUID, Customer | None] = _by_id(
            db, scope, customers_by_ids
        )
        self.card_by_id: DataLoader[uuid.UUID, CardCredential | None] = _by_id(
            db, scope, cards_by_ids
        )
        self.attempts_by_payment_id: DataLoader[uuid.UUID, list[PaymentAttempt]] = _many_by_id(
            db, scope, attempts_by_payment_ids
        )
        self.retry_policy_by_merchant_id: DataLoader[uuid.UUID, RetryPolicy | None] = _by_id(
            db, scope, current_policies
        )
        self.retry = RetryLoaders(db, scope)
