"""The cancelPaymentRecovery and retryPaymentNow mutations and their payloads."""

from typing import Annotated

import strawberry

from app.errors import ErrorCode
from resolvers import payment_recovery as recovery_resolvers
from resolvers.context import Context
from schema.mutation import Payload, ReasonArg, mutation
from schema.payment import Payment

Info = strawberry.Info[Context, None]

PaymentIdArg = Annotated[strawberry.ID, strawberry.argument(description="The payment's global id.")]


class CancelPaymentRecoveryPayload(Payload):
    payment: Payment | None = strawberry.field(description="The payment, now CANCELED.")


@mutation(
    refuses=(ErrorCode.NOT_FOUND, ErrorCode.INVALID_STATE, ErrorCode.INVALID),
    errors="Why the cancel was refused",
    subject="paymentId",
    description=(
        "Stop recovering a payment (support, or the merchant's own key); refused while a "
        "charge is in flight. Audited."
    ),
)
async def cancel_payment_recovery(
    info: Info, payment_id: PaymentIdArg, reason: ReasonArg
) -> CancelPaymentRecoveryPayload:
    result = await recovery_resolvers.cancel(
        info.context, payment_global_id=str(payment_id), reason=reason
    )
    return CancelPaymentRecoveryPayload(payment=Payment.from_model(result.payment))


class RetryPaymentNowPayload(Payload):
    payment: Payment | None = strawberry.field(
        description=(
            "The payment: SCHEDULED for now (or the earliest time the rules allow), or ended "
            "by the rule that forbids a retry."
        ),
    )
    explanation: str | None = strawberry.field(
        description="How the engine placed the retry, naming any rule that moved it.",
    )


@mutation(
    refuses=(
        ErrorCode.NOT_FOUND,
        ErrorCode.INVALID_STATE,
        ErrorCode.RECOVERY_DISABLED,
        ErrorCode.INVALID,
    ),
    errors="Why the request was refused",
    subject="paymentId",
    description=(
        "Schedule a payment's next retry for now (support, or the merchant's own key). The "
        "card-network rules and the policy still apply. Audited."
    ),
)
async def retry_payment_now(
    info: Info, payment_id: PaymentIdArg, reason: ReasonArg
) -> RetryPaymentNowPayload:
    result = await recovery_resolvers.retry(
        info.context, payment_global_id=str(payment_id), reason=reason
    )
    return RetryPaymentNowPayload(
        payment=Payment.from_model(result.payment), explanation=result.reason
    )
