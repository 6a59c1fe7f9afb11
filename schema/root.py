"""The root Query and Mutation, and the Schema with its guards and caches."""

from datetime import datetime
from typing import Annotated

import strawberry
from graphql import NoSchemaIntrospectionCustomRule, lexicographic_sort_schema, print_schema
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig

from app.settings import Settings
from resolvers import merchant as merchant_resolvers
from resolvers import payment as payment_resolvers
from resolvers.context import Context
from resolvers.counts import CountOf, counter
from schema import (
    api_key,
    bulk_action,
    connection,
    merchant_admin,
    model,
    payment_recovery,
    retry_policy,
    support_jobs,
    webhook_endpoint,
)
from schema.api_key import ApiKey, ApiKeyConnection, api_keys
from schema.bulk_action import BulkAction
from schema.connection import ProcessorConnection
from schema.enums import Role
from schema.events import Subscription, WebhookEventType, webhook_event_types
from schema.extensions import (
    DocumentCache,
    PortalExecutor,
    PortalSchema,
    PreparedDocuments,
    ShapeErrors,
)
from schema.merchant import Merchant, MerchantConnection
from schema.model import Model, models
from schema.node import Node, NodeTypes, node_type
from schema.payment import (
    Card,
    Customer,
    FilterArg,
    OrderByArg,
    Payment,
    PaymentConnection,
    filter_values,
    order_values,
    payment_connection,
)
from schema.relay import AfterArg, FirstArg
from schema.scalars import SCALAR_MAP
from schema.stats import (
    STATS_DESCRIPTION,
    FromArg,
    Granularity,
    GranularityArg,
    RecoveryStats,
    TimezoneArg,
    ToArg,
    viewer_recovery_stats,
)
from schema.support_jobs import BackgroundJob, background_job
from schema.webhook_endpoint import WebhookEndpoint

# What `node(id:)` answers with; a global id may name only these types.
NODE_TYPES = NodeTypes(
    node_type(Merchant, lambda loaders: loaders.merchant_by_id),
    node_type(Payment, lambda loaders: loaders.payment_by_id),
    node_type(Customer, lambda loaders: loaders.customer_by_id),
    node_type(Card, lambda loaders: loaders.card_by_id),
    node_type(ProcessorConnection, lambda loaders: loaders.processor_connection_by_id),
    node_type(ApiKey, lambda loaders: loaders.api_key_by_id),
    node_type(WebhookEndpoint, lambda loaders: loaders.webhook.webhook_endpoint_by_id),
    node_type(BulkAction, lambda loaders: loaders.bulk_action_by_id),
)

Info = strawberry.Info[Context, None]


async def merchants(
    info: Info, first: FirstArg = None, after: AfterArg = None
) -> MerchantConnection:
    page = await merchant_resolvers.merchants_page(info.context, first=first, after=after)
    count = counter(info.context, CountOf("merchants"))
    return MerchantConnection.from_page(page, Merchant.from_model, count)


@strawberry.type(description="The caller: the API key making the request.")
class Viewer:
    role: Role = strawberry.field(description="What the key may do.")
    name: str = strawberry.field(description="The key's name.")
    merchants: MerchantConnection = strawberry.field(
        resolver=merchants, description="The merchants this key may see, oldest first."
    )

    @strawberry.field(
        description=(
            "Payments of every merchant the key may see, merged into one list: support keys "
            "see every merchant's, partner keys their granted merchants', a merchant key its "
            "own. With `filter.search`, the lookup of a processor's charge id (an invoice, a "
            "customer reference, a card's last four digits) across merchants."
        )
    )
    async def payments(
        self,
        info: Info,
        first: FirstArg = None,
        after: AfterArg = None,
        filter: FilterArg = None,
        order_by: OrderByArg = None,
    ) -> PaymentConnection:
        page, count = await payment_resolvers.viewer_payments_page(
            info.context,
            filters=filter_values(filter),
            first=first,
            after=after,
            order=order_values(order_by),
        )
        return await payment_connection(info, page, count)

    @strawberry.field(
        description=STATS_DESCRIPTION + " Added up over every merchant the key may see."
    )
    async def recovery_stats(
        self,
        info: Info,
        from_: FromArg,
        to: ToArg,
        granularity: GranularityArg = Granularity.DAY,
        timezone: TimezoneArg = None,
    ) -> RecoveryStats:
        return await viewer_recovery_stats(info, from_, to, granularity, timezone)


def viewer(info: Info) -> Viewer:
    principal = info.context.require_principal()
    return Viewer(role=principal.role, name=principal.name)


@strawberry.type(description="Entry points for reading.")
class Query:
    models: list[Model] = strawberry.field(
        resolver=models,
        description="Trained retry-timing models, newest first (support only).",
    )
    api_keys: ApiKeyConnection = strawberry.field(
        resolver=api_keys,
        description=(
            "API keys, newest first: support sees every key; other keys see the keys whose "
            "every granted merchant they may see."
        ),
    )
    viewer: Viewer = strawberry.field(
        resolver=viewer, description="The caller and what it may see."
    )
    merchants: MerchantConnection = strawberry.field(
        resolver=merchants, description="Merchants visible to the caller, oldest first."
    )
    background_job: BackgroundJob | None = strawberry.field(
        resolver=background_job,
        description=(
            "A job queued by replayConnection or retrainModel, by its id (support only); null "
            "for an id that names no such job."
        ),
    )
    webhook_event_types: list[WebhookEventType] = strawberry.field(
        resolver=webhook_event_types,
        description=(
            "Every event type webhooks, `Merchant.events` and `paymentEvents` carry, with the "
            "JSON Schema of its payload."
        ),
    )

    @strawberry.field(description="One merchant by global id; null when not visible.")
    async def merchant(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="Global id.")],
    ) -> Merchant | None:
        row = await merchant_resolvers.merchant_by_global_id(info.context, str(id))
        return None if row is None else Merchant.from_model(row)

    @strawberry.field(
        description=(
            "The portal's clock: what it counts as now (a demo or test stack runs a simulated, "
            "accelerated clock). Ranges such as the last 30 days of `recoveryStats` end here, "
            "not at the client's own time."
        )
    )
    def server_time(self, info: Info) -> datetime:
        info.context.require_principal()
        return info.context.clock.now()

    @strawberry.field(description="Any object by global id; null when not visible.")
    async def node(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="Global id.")],
    ) -> Node | None:
        return await NODE_TYPES.fetch(info.context, str(id))


@strawberry.type(description="Entry points for changing configuration.")
class Mutation:
    update_retry_policy = retry_policy.update_retry_policy
    preview_retry_policy = retry_policy.preview_retry_policy
    cancel_payment_recovery = payment_recovery.cancel_payment_recovery
    retry_payment_now = payment_recovery.retry_payment_now
    connect_processor = connection.connect_processor
    sync_processor_connection = connection.sync_processor_connection
    pause_processor_connection = connection.pause_processor_connection
    resume_processor_connection = connection.resume_processor_connection
    create_api_key = api_key.create_api_key
    revoke_api_key = api_key.revoke_api_key
    promote_model = model.promote_model
    create_merchant = merchant_admin.create_merchant
    pause_merchant_recovery = merchant_admin.pause_merchant_recovery
    resume_merchant_recovery = merchant_admin.resume_merchant_recovery
    create_webhook_endpoint = webhook_endpoint.create_webhook_endpoint
    rotate_webhook_secret = webhook_endpoint.rotate_webhook_secret
    set_webhook_endpoint_enabled = webhook_endpoint.set_webhook_endpoint_enabled
    # Support's bulk actions.
    cancel_payment_recoveries = bulk_action.cancel_payment_recoveries
    pause_merchants_recovery = bulk_action.pause_merchants_recovery
    replay_connection = support_jobs.replay_connection
    retrain_model = support_jobs.retrain_model
    # Managing what was created.
    update_webhook_endpoint = webhook_endpoint.update_webhook_endpoint
    delete_webhook_endpoint = webhook_endpoint.delete_webhook_endpoint
    send_test_webhook = webhook_endpoint.send_test_webhook
    redeliver_webhook = webhook_endpoint.redeliver_webhook
    update_processor_credentials = connection.update_processor_credentials
    disconnect_processor = connection.disconnect_processor


def build_schema(settings: Settings) -> strawberry.Schema:
    """The schema with its guards; documents are parsed and validated once per query text."""
    rules = [
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    ]
    if not settings.introspection_enabled:
        # `__schema` and `__type` become validation errors; `__typename` stays (clients need it).
        rules.append(NoSchemaIntrospectionCustomRule)
    documents = DocumentCache(rules, max_tokens=settings.max_tokens)
    return PortalSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=NODE_TYPES.classes,
        config=StrawberryConfig(
            disable_field_suggestions=settings.environment == "production",
            scalar_map=SCALAR_MAP,
        ),
        execution_context_class=PortalExecutor,
        extensions=[
            lambda: PreparedDocuments(documents),
            lambda: ShapeErrors(retry_after_seconds=settings.outage_retry_after_seconds),
        ],
    )


__all__ = ["Mutation", "Query", "Subscription", "build_schema", "export_sdl"]


def export_sdl(schema: strawberry.Schema) -> str:
    """The schema as SDL, types and fields sorted, as committed in schema/schema.graphql."""
    return print_schema(lexicographic_sort_schema(schema._schema)) + "\n"
