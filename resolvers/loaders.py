"""Per-request dataloaders, each batch in its own short session bound to the caller's scope."""

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from app.db import Database
from app.models.api_key import ApiKey
from app.models.audit import AuditLog
from app.models.bulk_action import BulkAction
from app.models.customer import CardCredential, Customer
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.models.retry_policy import RetryPolicy
from app.services.api_key import api_keys_by_ids, grants_by_api_key_ids
from app.services.audit import entries_by_merchant_ids
from app.services.connection import payment_counts
from app.services.counting import Count
from app.services.payment import (
    PaymentFilter,
    PaymentKey,
    PaymentOrder,
    attempts_by_payment_ids,
    payments_by_customer_ids,
    payments_by_merchant_ids,
)
from app.services.retry_policy import current_policies
from app.services.stats.figures import StatsGroups
from app.services.stats.query import StatsQuery
from app.services.stats.rollups import load_stat_groups
from app.tenancy import Scope
from resolvers.batch import by_id, count_by_id, many_by_id, row_by_id, rows_by_merchant_id
from resolvers.counts import CountOf, count_loader
from resolvers.model_loaders import ModelLoaders
from resolvers.retry_loaders import RetryLoaders
from resolvers.webhook_loaders import WebhookLoaders

T = TypeVar("T")


Keyset = tuple[datetime, uuid.UUID]
# A parent's id with the page asked of its nested list: (parent id, page size, after).
PageKey = tuple[uuid.UUID, int, Keyset | None]


class PageFetch(Protocol[T]):
    def __call__(
        self,
        session: AsyncSession,
        parent_ids: Sequence[uuid.UUID],
        /,
        *,
        first: int,
        before_key: Keyset | None,
    ) -> Awaitable[Mapping[uuid.UUID, list[T]]]: ...


def _pages(db: Database, scope: Scope, fetch: PageFetch[T]) -> DataLoader[PageKey, list[T]]:
    """Nested pages of many parents in one query per distinct (size, after), usually one."""

    async def load(keys: list[PageKey]) -> list[list[T]]:
        groups: dict[tuple[int, Keyset | None], list[uuid.UUID]] = defaultdict(list)
        for parent_id, size, after in keys:
            groups[(size, after)].append(parent_id)
        found: dict[PageKey, list[T]] = {}
        async with db.read(scope) as session:
            for (size, after), parent_ids in groups.items():
                rows = await fetch(session, parent_ids, first=size, before_key=after)
                for parent_id in parent_ids:
                    found[(parent_id, size, after)] = rows.get(parent_id, [])
        return [found[k] for k in keys]

    return DataLoader(load_fn=load)


# A merchant's or customer's page of payments: (its id, filter, order, page size, after).
PaymentPageKey = tuple[uuid.UUID, PaymentFilter, PaymentOrder, int, PaymentKey | None]


class PaymentPages(Protocol):
    def __call__(
        self,
        session: AsyncSession,
        parent_ids: Sequence[uuid.UUID],
        /,
        *,
        filters: PaymentFilter,
        order: PaymentOrder,
        first: int,
        before_key: PaymentKey | None,
    ) -> Awaitable[Mapping[uuid.UUID, list[Payment]]]: ...


def _payment_pages(
    db: Database, scope: Scope, fetch: PaymentPages
) -> DataLoader[PaymentPageKey, list[Payment]]:
    """Parents' pages of payments in one statement per distinct (filter, order, size,
    after), usually one: every merchant (or customer) of a request at once."""

    async def load(keys: list[PaymentPageKey]) -> list[list[Payment]]:
        groups: dict[tuple[PaymentFilter, PaymentOrder, int, PaymentKey | None], list[uuid.UUID]]
        groups = defaultdict(list)
        for parent_id, filters, order, size, after in keys:
            groups[(filters, order, size, after)].append(parent_id)
        found: dict[PaymentPageKey, list[Payment]] = {}
        async with db.read(scope) as session:
            for (filters, order, size, after), ids in groups.items():
                rows = await fetch(
                    session, ids, filters=filters, order=order, first=size, before_key=after
                )
                for parent_id in ids:
                    found[(parent_id, filters, order, size, after)] = rows.get(parent_id, [])
        return [found[k] for k in keys]

    return DataLoader(load_fn=load)


def _recovery_stats(
    db: Database, scope: Scope
) -> DataLoader[tuple[uuid.UUID, StatsQuery], StatsGroups]:
    """Statistics of many merchants in one query per distinct request (usually one), as
    summed vectors: the API builds only the figures a request selects."""

    async def load(keys: list[tuple[uuid.UUID, StatsQuery]]) -> list[StatsGroups]:
        groups: dict[StatsQuery, list[uuid.UUID]] = defaultdict(list)
        for merchant_id, query in keys:
            groups[query].append(merchant_id)
        found: dict[tuple[uuid.UUID, StatsQuery], StatsGroups] = {}
        async with db.read(scope) as session:
            for query, ids in groups.items():
                stats = await load_stat_groups(session, query, merchant_ids=ids, per_merchant=True)
                for merchant_id in ids:
                    found[(merchant_id, query)] = stats[merchant_id]
        return [found[k] for k in keys]

    return DataLoader(load_fn=load)


class Loaders:
    """The request's loaders; a new set per request, so nothing is cached across callers."""

    def __init__(self, db: Database, scope: Scope) -> None:
        self.merchant_by_id: DataLoader[uuid.UUID, Merchant | None] = row_by_id(db, scope, Merchant)
        self.payment_by_id: DataLoader[uuid.UUID, Payment | None] = row_by_id(db, scope, Payment)
        self.customer_by_id: DataLoader[uuid.UUID, Customer | None] = row_by_id(db, scope, Customer)
        self.card_by_id: DataLoader[uuid.UUID, CardCredential | None] = row_by_id(
            db, scope, CardCredential
        )
        self.attempts_by_payment_id: DataLoader[uuid.UUID, list[PaymentAttempt]] = many_by_id(
            db, scope, attempts_by_payment_ids
        )
        self.retry_policy_by_merchant_id: DataLoader[uuid.UUID, RetryPolicy | None] = by_id(
            db, scope, current_policies
        )
        self.retry = RetryLoaders(db, scope)
        self.model = ModelLoaders(db, scope)
        self.webhook = WebhookLoaders(db, scope)
        self.processor_connection_by_id: DataLoader[uuid.UUID, ProcessorConnection | None] = (
            row_by_id(db, scope, ProcessorConnection)
        )
        self.processor_connections_by_merchant_id: DataLoader[
            uuid.UUID, list[ProcessorConnection]
        ] = rows_by_merchant_id(db, scope, ProcessorConnection)
        self.payment_count_by_connection_id: DataLoader[uuid.UUID, int] = count_by_id(
            db, scope, payment_counts
        )
        self.api_key_by_id: DataLoader[uuid.UUID, ApiKey | None] = by_id(db, scope, api_keys_by_ids)
        self.merchant_ids_by_api_key_id: DataLoader[uuid.UUID, list[uuid.UUID]] = many_by_id(
            db, scope, grants_by_api_key_ids
        )
        self.audit_page_by_merchant_id: DataLoader[PageKey, list[AuditLog]] = _pages(
            db, scope, entries_by_merchant_ids
        )
        # Support's bulk actions: other keys' scoped sessions never see them.
        self.bulk_action_by_id: DataLoader[uuid.UUID, BulkAction | None] = row_by_id(
            db, scope, BulkAction
        )
        self.merchant_payments: DataLoader[PaymentPageKey, list[Payment]] = _payment_pages(
            db, scope, payments_by_merchant_ids
        )
        self.customer_payments: DataLoader[PaymentPageKey, list[Payment]] = _payment_pages(
            db, scope, payments_by_customer_ids
        )
        self.count: DataLoader[CountOf, Count] = count_loader(db, scope)
        self.recovery_stats_by_merchant: DataLoader[tuple[uuid.UUID, StatsQuery], StatsGroups] = (
            _recovery_stats(db, scope)
        )
