"""Support's merchant mutations: createMerchant, pauseMerchantRecovery, resumeMerchantRecovery."""

from typing import Annotated

import strawberry

from app.enums import MerchantStatus
from app.errors import (
    CreateMerchantErrorCode,
    PauseMerchantRecoveryErrorCode,
    ResumeMerchantRecoveryErrorCode,
)
from resolvers import merchant_admin as admin_resolvers
from resolvers.context import Context
from schema.merchant import Merchant
from schema.payload import REFUSALS, payload_errors

Info = strawberry.Info[Context, None]


@strawberry.input(description="A new merchant.")
class CreateMerchantInput:
    name: str = strawberry.field(description="The merchant's name, 1-200 characters.")


@strawberry.type(description="An error of createMerchant.")
class CreateMerchantError:
    code: CreateMerchantErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The input field at fault, if one is.")


@strawberry.type(description="The result of createMerchant.")
class CreateMerchantPayload:
    merchant: Merchant | None = strawberry.field(
        description="The new merchant (with the default retry policy), when it was created."
    )
    errors: list[CreateMerchantError] = strawberry.field(
        description="Why the merchant was refused; empty on success."
    )


async def create_merchant(info: Info, input: CreateMerchantInput) -> CreateMerchantPayload:
    def error(code: str, message: str, field: str | None) -> CreateMerchantError:
        return CreateMerchantError(code=CreateMerchantErrorCode(code), message=message, field=field)

    try:
        row = await admin_resolvers.create(info.context, name=input.name)
    except REFUSALS as exc:
        return CreateMerchantPayload(
            merchant=None, errors=payload_errors(exc, error, id_field="name")
        )
    return CreateMerchantPayload(merchant=Merchant.from_model(row), errors=[])


@strawberry.type(description="An error of pauseMerchantRecovery.")
class PauseMerchantRecoveryError:
    code: PauseMerchantRecoveryErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of pauseMerchantRecovery.")
class PauseMerchantRecoveryPayload:
    merchant: Merchant | None = strawberry.field(
        description="The merchant, paused, when the change was applied."
    )
    errors: list[PauseMerchantRecoveryError] = strawberry.field(
        description="Why the change was refused; empty on success."
    )


async def pause_merchant_recovery(
    info: Info,
    merchant_id: Annotated[
        strawberry.ID, strawberry.argument(description="The merchant's global id.")
    ],
    reason: Annotated[str, strawberry.argument(description="Why; kept in the audit log.")],
) -> PauseMerchantRecoveryPayload:
    def error(code: str, message: str, field: str | None) -> PauseMerchantRecoveryError:
        return PauseMerchantRecoveryError(
            code=PauseMerchantRecoveryErrorCode(code), message=message, field=field
        )

    try:
        row = await admin_resolvers.set_recovery(
            info.context,
            merchant_global_id=str(merchant_id),
            status=MerchantStatus.PAUSED,
            reason=reason,
        )
    except REFUSALS as exc:
        return PauseMerchantRecoveryPayload(
            merchant=None, errors=payload_errors(exc, error, id_field="merchantId")
        )
    return PauseMerchantRecoveryPayload(merchant=Merchant.from_model(row), errors=[])


@strawberry.type(description="An error of resumeMerchantRecovery.")
class ResumeMerchantRecoveryError:
    code: ResumeMerchantRecoveryErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of resumeMerchantRecovery.")
class ResumeMerchantRecoveryPayload:
    merchant: Merchant | None = strawberry.field(
        description="The merchant, active again, when the change was applied."
    )
    errors: list[ResumeMerchantRecoveryError] = strawberry.field(
        description="Why the change was refused; empty on success."
    )


async def resume_merchant_recovery(
    info: Info,
    merchant_id: Annotated[
        strawberry.ID, strawberry.argument(description="The merchant's global id.")
    ],
    reason: Annotated[str, strawberry.argument(description="Why; kept in the audit log.")],
) -> ResumeMerchantRecoveryPayload:
    def error(code: str, message: str, field: str | None) -> ResumeMerchantRecoveryError:
        return ResumeMerchantRecoveryError(
            code=ResumeMerchantRecoveryErrorCode(code), message=message, field=field
        )

    try:
        row = await admin_resolvers.set_recovery(
            info.context,
            merchant_global_id=str(merchant_id),
            status=MerchantStatus.ACTIVE,
            reason=reason,
        )
    except REFUSALS as exc:
        return ResumeMerchantRecoveryPayload(
            merchant=None, errors=payload_errors(exc, error, id_field="merchantId")
        )
    return ResumeMerchantRecoveryPayload(merchant=Merchant.from_model(row), errors=[])
