"""The root Query and Mutation, and the Schema with its guards and caches."""

from typing import Annotated

import strawberry
from graphql import lexicographic_sort_schema, print_schema
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from app.models.customer import CardCredential as CardModel
from app.models.customer import Customer as CustomerModel
from app.models.merchant import Merchant as MerchantModel
from app.models.payment import Payment as PaymentModel
from app.settings import Settings
from resolvers import merchant as merchant_resolvers
from resolvers import node as node_resolvers
from resolvers.context import Context
from schema.enums import Role
from schema.extensions import ShapeErrors
from schema.merchant import Merchant, MerchantConnection
from schema.node import Node
from schema.payment import Card, Customer, Payment
from schema.payment_recovery import (
    CancelPaymentRecoveryPayload,
    RetryPaymentNowPayload,
    cancel_payment_recovery,
    retry_payment_now,
)
from schema.retry_policy import UpdateRetryPolicyPayload, update_retry_policy
from schema.scalars import SCALAR_MAP

Info = strawberry.Info[Context, None]


@strawberry.type(description="The caller: the API key making the request.")
class Viewer:
    role: Role = strawberry.field(description="What the key may do.")
    name: str = strawberry.field(description="The key's name.")

    @strawberry.field(description="The merchants this key may see, oldest first.")
    async def merchants(
        self,
        info: Info,
        first: Annotated[int | None, strawberry.argument(description="Page size, 1-100.")] = None,
        after: Annotated[str | None, strawberry.argument(description="Cursor to follow.")] = None,
    ) -> MerchantConnection:
        page = await merchant_resolvers.merchants_page(info.context, first=first, after=after)
        return MerchantConnection.from_page(page)


@strawberry.type(description="Entry points for reading.")
class Query:
    @strawberry.field(description="The caller and what it may see.")
    def viewer(self, info: Info) -> Viewer:
        principal = info.context.require_principal()
        return Viewer(role=principal.role, name=principal.name)

    @strawberry.field(description="Merchants visible to the caller, oldest first.")
    async def merchants(
        self,
        info: Info,
        first: Annotated[int | None, strawberry.argument(description="Page size, 1-100.")] = None,
        after: Annotated[str | None, strawberry.argument(description="Cursor to follow.")] = None,
    ) -> MerchantConnection:
        page = await merchant_resolvers.merchants_page(info.context, first=first, after=after)
        return MerchantConnection.from_page(page)

    @strawberry.field(description="One merchant by global id; null when not visible.")
    async def merchant(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="Global id.")],
    ) -> Merchant | None:
        row = await merchant_resolvers.merchant_by_global_id(info.context, str(id))
        return None if row is None else Merchant.from_model(row)

    @strawberry.field(description="Any object by global id; null when not visible.")
    async def node(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="Global id.")],
    ) -> Node | None:
        row = await node_resolvers.node(info.context, str(id))
        if isinstance(row, MerchantModel):
            return Merchant.from_model(row)
        if isinstance(row, PaymentModel):
            return Payment.from_model(row)
        if isinstance(row, CustomerModel):
            return Customer.from_model(row)
        if isinstance(row, CardModel):
            return Card.from_model(row)
        return None


@strawberry.type(description="Entry points for changing configuration.")
class Mutation:
    update_retry_policy: UpdateRetryPolicyPayload = strawberry.mutation(
        resolver=update_retry_policy,
        description=(
            "Change a merchant's retry policy (support, or the merchant's own key). "
            "Adds a version and an audit entry."
        ),
    )
    cancel_payment_recovery: CancelPaymentRecoveryPayload = strawberry.mutation(
        resolver=cancel_payment_recovery,
        description=(
            "Stop recovering a payment (support, or the merchant's own key); refused while a "
            "charge is in flight. Audited."
        ),
    )
    retry_payment_now: RetryPaymentNowPayload = strawberry.mutation(
        resolver=retry_payment_now,
        description=(
            "Schedule a payment's next retry for now (support, or the merchant's own key). The "
            "card-network rules and the policy still apply. Audited."
        ),
    )


def build_schema(settings: Settings) -> strawberry.Schema:
    """The schema with its guards; validation rules are built once so the cache can hit."""
    rules = [
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    ]
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        types=[Merchant, Payment, Customer, Card],
        config=StrawberryConfig(
            disable_field_suggestions=settings.environment == "production",
            scalar_map=SCALAR_MAP,
        ),
        extensions=[
            lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
            ParserCache,
            lambda: AddValidationRules(rules),
            ValidationCache,
            ShapeErrors,
        ],
    )


__all__ = ["Mutation", "Query", "build_schema", "export_sdl"]


def export_sdl(schema: strawberry.Schema) -> str:
    """The schema as SDL, types and fields sorted, as committed in schema/schema.graphql."""
    return print_schema(lexicographic_sort_schema(schema._schema)) + "\n"
