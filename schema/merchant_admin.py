"""Merchant mutations: createMerchant (support, or a partner onboarding one),
pauseMerchantRecovery and resumeMerchantRecovery (support)."""

from typing import Annotated

import strawberry

from app.enums import MerchantStatus
from app.errors import ErrorCode
from resolvers import merchant_admin as admin_resolvers
from resolvers.context import Context
from schema.merchant import Merchant
from schema.mutation import Payload, ReasonArg, mutation

Info = strawberry.Info[Context, None]
MerchantIdArg = Annotated[
    strawberry.ID, strawberry.argument(description="The merchant's global id.")
]


@strawberry.input(description="A new merchant.")
class CreateMerchantInput:
    name: str = strawberry.field(description="The merchant's name, 1-200 characters.")


class CreateMerchantPayload(Payload):
    merchant: Merchant | None = strawberry.field(
        description="The new merchant (with the default retry policy), when it was created.",
    )


@mutation(
    refuses=(ErrorCode.INVALID,),
    why="refused a merchant",
    errors="Why the merchant was refused",
    description=(
        "Add a merchant with the default retry policy (support, or a partner key, which is "
        "then granted the new merchant: it may connect its processors and register its "
        "webhooks at once). Audited."
    ),
)
async def create_merchant(info: Info, input: CreateMerchantInput) -> CreateMerchantPayload:
    row = await admin_resolvers.create(info.context, name=input.name)
    return CreateMerchantPayload(merchant=Merchant.from_model(row))


class PauseMerchantRecoveryPayload(Payload):
    merchant: Merchant | None = strawberry.field(
        description="The merchant, paused, when the change was applied."
    )


class ResumeMerchantRecoveryPayload(Payload):
    merchant: Merchant | None = strawberry.field(
        description="The merchant, active again, when the change was applied."
    )


RecoveryPayload = PauseMerchantRecoveryPayload | ResumeMerchantRecoveryPayload


def _set_recovery(
    payload: type[RecoveryPayload], status: MerchantStatus, description: str
) -> RecoveryPayload:
    """pauseMerchantRecovery and resumeMerchantRecovery: the same change to two states."""

    @mutation(
        payload=payload,
        refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID),
        subject="merchantId",
        description=description,
    )
    async def set_recovery(
        info: Info, merchant_id: MerchantIdArg, reason: ReasonArg
    ) -> RecoveryPayload:
        row = await admin_resolvers.set_recovery(
            info.context, merchant_global_id=str(merchant_id), status=status, reason=reason
        )
        return payload(merchant=Merchant.from_model(row))

    return set_recovery


pause_merchant_recovery = _set_recovery(
    PauseMerchantRecoveryPayload,
    MerchantStatus.PAUSED,
    "Stop a merchant's recovery (support only). Audited.",
)
resume_merchant_recovery = _set_recovery(
    ResumeMerchantRecoveryPayload,
    MerchantStatus.ACTIVE,
    "Restart a merchant's recovery (support only). Audited.",
)
