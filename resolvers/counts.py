"""`totalCount` of every connection: one loader, so the counts a request asks for (one per
parent of a nested list too) are one statement, plus one `EXPLAIN` for lists past the limit."""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from strawberry.dataloader import DataLoader

from app.db import Database
from app.services.api_key import api_key_count_query
from app.services.audit import audit_count_query
from app.services.counting import COUNT_LIMIT, Count, bounded_counts
from app.services.event_feed import event_count_query
from app.services.ingestion_view import dead_letter_count_query, raw_record_count_query
from app.services.merchant import merchant_count_query
from app.services.payment import PaymentFilter, payment_count_query
from app.services.retry_policy import policy_history_count_query
from app.tenancy import Scope

if TYPE_CHECKING:  # the context holds the loaders, this module's loader among them
    from resolvers.context import Context

# What a connection lists.
Listing = Literal[
    "merchant_payments",
    "customer_payments",
    "viewer_payments",
    "merchants",
    "api_keys",
    "audit_log",
    "policy_history",
    "raw_records",
    "dead_letters",
    "events",
]
# Reads a connection's count when (and only when) `totalCount` or `isEstimate` is asked for.
Counter = Callable[[], Awaitable[Count]]


@dataclass(frozen=True)
class CountOf:
    """One connection's rows: what it lists, of which parent, with which filter."""

    listing: Listing
    parent_id: uuid.UUID | None = None
    filters: PaymentFilter | None = None
    # Raw records' filters.
    since: datetime | None = None
    unnormalized_only: bool = False
    # The event feed's.
    types: tuple[str, ...] | None = None


def count_query(key: CountOf, scope: Scope) -> Any:
    """The rows a connection's `totalCount` counts, in the scope's merchants."""
    filters = key.filters or PaymentFilter()
    match key.listing:
        case "merchant_payments":
            return payment_count_query("merchant", key.parent_id, filters, scope.merchant_ids)
        case "customer_payments":
            return payment_count_query("customer", key.parent_id, filters, scope.merchant_ids)
        case "viewer_payments":
            return payment_count_query("viewer", None, filters, scope.merchant_ids)
        case "merchants":
            return merchant_count_query(scope)
        case "api_keys":
            return api_key_count_query(scope)
        case "audit_log" if key.parent_id is not None:
            return audit_count_query(key.parent_id)
        case "policy_history" if key.parent_id is not None:
            return policy_history_count_query(key.parent_id)
        case "raw_records" if key.parent_id is not None:
            return raw_record_count_query(key.parent_id, key.since, key.unnormalized_only)
        case "dead_letters" if key.parent_id is not None:
            return dead_letter_count_query(key.parent_id)
        case "events" if key.parent_id is not None:
            return event_count_query(key.parent_id, key.types)
    raise ValueError(f"nothing to count for {key!r}")


def count_loader(db: Database, scope: Scope) -> DataLoader[CountOf, Count]:
    async def load(keys: list[CountOf]) -> list[Count]:
        async with db.session(scope) as session:
            queries = [count_query(k, scope) for k in keys]
            return await bounded_counts(session, queries, limit=COUNT_LIMIT)

    return DataLoader(load_fn=load)


def counter(ctx: "Context", key: CountOf) -> Counter:
    return lambda: ctx.loaders.count.load(key)
