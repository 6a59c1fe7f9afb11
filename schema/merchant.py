"""The Merchant type: a tenant, with its payments and retry policy."""

from datetime import datetime
from typing import Self

import strawberry

from app.models.merchant import Merchant as MerchantModel
from resolvers import audit as audit_resolvers
from resolvers import connection as connection_resolvers
from resolvers import events as event_resolvers
from resolvers import payment as payment_resolvers
from resolvers import retry_policy as policy_resolvers
from resolvers import webhook_endpoint as webhook_resolvers
from resolvers.context import Context
from resolvers.counts import CountOf, counter
from schema.audit import AuditEntry, AuditEntryConnection
from schema.connection import ProcessorConnection
from schema.enums import MerchantStatus
from schema.events import EVENTS_DESCRIPTION, PaymentEvent, PaymentEventConnection, TypesArg
from schema.node import Node
from schema.payment import (
    FilterArg,
    OrderByArg,
    PaymentConnection,
    filter_values,
    order_values,
    payment_connection,
)
from schema.relay import AfterArg, Connection, FirstArg, connection
from schema.retry_policy import RetryPolicy
from schema.rows import from_row
from schema.stats import (
    STATS_DESCRIPTION,
    FromArg,
    Granularity,
    GranularityArg,
    RecoveryStats,
    TimezoneArg,
    ToArg,
    merchant_recovery_stats,
)
from schema.webhook_endpoint import WebhookEndpoint

Info = strawberry.Info[Context, None]


@strawberry.type(description="A business whose failed payments the portal recovers.")
class Merchant(Node):
    name: str = strawberry.field(description="The merchant's name.")
    status: MerchantStatus = strawberry.field(description="Whether recovery runs.")
    created_at: datetime = strawberry.field(description="When the merchant was added.")
    _row: strawberry.Private[MerchantModel]

    @classmethod
    def from_model(cls, row: MerchantModel) -> Self:
        return from_row(cls, row, id=cls.global_id(row.id), _row=row)

    @strawberry.field(
        description="Payments in recovery, newest failure first unless `orderBy` says otherwise."
    )
    async def payments(
        self,
        info: Info,
        first: FirstArg = None,
        after: AfterArg = None,
        filter: FilterArg = None,
        order_by: OrderByArg = None,
    ) -> PaymentConnection:
        page, count = await payment_resolvers.payments_page(
            info.context,
            merchant_id=self._row.id,
            filters=filter_values(filter),
            first=first,
            after=after,
            order=order_values(order_by),
        )
        return await payment_connection(info, page, count)

    @strawberry.field(description="The current retry policy.")
    async def retry_policy(self, info: Info) -> RetryPolicy | None:
        row = await policy_resolvers.current(info.context, self._row.id)
        return None if row is None else RetryPolicy.from_model(row)

    @strawberry.field(description="The processor accounts payments are read from, oldest first.")
    async def processor_connections(self, info: Info) -> list[ProcessorConnection]:
        rows = await connection_resolvers.for_merchant(info.context, self._row.id)
        return [ProcessorConnection.from_model(c) for c in rows]

    @strawberry.field(description="Where the merchant's events are posted, oldest first.")
    async def webhook_endpoints(self, info: Info) -> list[WebhookEndpoint]:
        rows = await webhook_resolvers.for_merchant(info.context, self._row.id)
        return [WebhookEndpoint.from_model(e) for e in rows]

    @strawberry.field(description="Every configuration change, newest first.")
    async def audit_log(
        self, info: Info, first: FirstArg = None, after: AfterArg = None
    ) -> AuditEntryConnection:
        page = await audit_resolvers.audit_page(
            info.context, merchant_id=self._row.id, first=first, after=after
        )
        count = counter(info.context, CountOf("audit_log", self._row.id))
        return AuditEntryConnection.from_page(page, AuditEntry.from_model, count)

    @strawberry.field(description=EVENTS_DESCRIPTION)
    async def events(
        self, info: Info, first: FirstArg = None, after: AfterArg = None, types: TypesArg = None
    ) -> PaymentEventConnection:
        page = await event_resolvers.events_page(
            info.context, merchant_id=self._row.id, first=first, after=after, types=types
        )
        count = counter(
            info.context,
            CountOf("events", self._row.id, types=None if types is None else tuple(types)),
        )
        return PaymentEventConnection.from_page(page, PaymentEvent.from_event, count)

    @strawberry.field(description=STATS_DESCRIPTION)
    async def recovery_stats(
        self,
        info: Info,
        from_: FromArg,
        to: ToArg,
        granularity: GranularityArg = Granularity.DAY,
        timezone: TimezoneArg = None,
    ) -> RecoveryStats:
        return await merchant_recovery_stats(info, self._row.id, from_, to, granularity, timezone)


@connection(
    "A page of merchants, oldest first.",
    edge="A merchant and its cursor.",
    noun="merchant",
    nouns="merchants",
)
class MerchantConnection(Connection[Merchant]):
    pass
