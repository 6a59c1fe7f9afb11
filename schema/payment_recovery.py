"""The cancelPaymentRecovery and retryPaymentNow mutations, their payloads and typed errors."""

from typing import Annotated

import strawberry

from app.errors import (
    CancelPaymentRecoveryErrorCode,
    InvalidId,
    InvalidState,
    NotFound,
    RecoveryDisabled,
    RetryPaymentNowErrorCode,
    ValidationFailed,
)
from resolvers import payment_recovery as recovery_resolvers
from resolvers.context import Context
from schema.payment import Payment

Info = strawberry.Info[Context, None]

strawberry.enum(CancelPaymentRecoveryErrorCode, description="Why cancelPaymentRecovery refused.")
strawberry.enum(RetryPaymentNowErrorCode, description="Why retryPaymentNow refused.")

PaymentIdArg = Annotated[strawberry.ID, strawberry.argument(description="The payment's global id.")]
ReasonArg = Annotated[str, strawberry.argument(description="Why; kept in the audit log.")]


@strawberry.type(description="An error of cancelPaymentRecovery.")
class CancelPaymentRecoveryError:
    code: CancelPaymentRecoveryErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of cancelPaymentRecovery.")
class CancelPaymentRecoveryPayload:
    payment: Payment | None = strawberry.field(description="The payment, now CANCELED.")
    errors: list[CancelPaymentRecoveryError] = strawberry.field(
        description="Why the cancel was refused; empty on success."
    )


@strawberry.type(description="An error of retryPaymentNow.")
class RetryPaymentNowError:
    code: RetryPaymentNowErrorCode = strawberry.field(description="What went wrong.")
    message: str = strawberry.field(description="A human-readable explanation.")
    field: str | None = strawberry.field(description="The argument at fault, if one is.")


@strawberry.type(description="The result of retryPaymentNow.")
class RetryPaymentNowPayload:
    payment: Payment | None = strawberry.field(
        description=(
            "The payment: SCHEDULED for now (or the earliest time the rules allow), or ended "
            "by the rule that forbids a retry."
        )
    )
    explanation: str | None = strawberry.field(
        description="How the engine placed the retry, naming any rule that moved it."
    )
    errors: list[RetryPaymentNowError] = strawberry.field(
        description="Why the request was refused; empty on success."
    )


async def cancel_payment_recovery(
    info: Info, payment_id: PaymentIdArg, reason: ReasonArg
) -> CancelPaymentRecoveryPayload:
    code = CancelPaymentRecoveryErrorCode

    def fail(
        c: CancelPaymentRecoveryErrorCode, message: str, field: str | None
    ) -> CancelPaymentRecoveryPayload:
        return CancelPaymentRecoveryPayload(
            payment=None, errors=[CancelPaymentRecoveryError(code=c, message=message, field=field)]
        )

    try:
        result = await recovery_resolvers.cancel(
            info.context, payment_global_id=str(payment_id), reason=reason
        )
    except (NotFound, InvalidId) as exc:
        return fail(code.NOT_FOUND, exc.message, "paymentId")
    except InvalidState as exc:
        return fail(code.INVALID_STATE, exc.message, "paymentId")
    except ValidationFailed as exc:
        return CancelPaymentRecoveryPayload(
            payment=None,
            errors=[
                CancelPaymentRecoveryError(code=code.INVALID, message=m, field=f)
                for f, m in exc.problems
            ],
        )
    return CancelPaymentRecoveryPayload(payment=Payment.from_model(result.payment), errors=[])


async def retry_payment_now(
    info: Info, payment_id: PaymentIdArg, reason: ReasonArg
) -> RetryPaymentNowPayload:
    code = RetryPaymentNowErrorCode

    def fail(
        c: RetryPaymentNowErrorCode, message: str, field: str | None
    ) -> RetryPaymentNowPayload:
        return RetryPaymentNowPayload(
            payment=None,
            explanation=None,
            errors=[RetryPaymentNowError(code=c, message=message, field=field)],
        )

    try:
        result = await recovery_resolvers.retry(
            info.context, payment_global_id=str(payment_id), reason=reason
        )
    except (NotFound, InvalidId) as exc:
        return fail(code.NOT_FOUND, exc.message, "paymentId")
    except InvalidState as exc:
        return fail(code.INVALID_STATE, exc.message, "paymentId")
    except RecoveryDisabled as exc:
        return fail(code.RECOVERY_DISABLED, exc.message, None)
    except ValidationFailed as exc:
        return RetryPaymentNowPayload(
            payment=None,
            explanation=None,
            errors=[
                RetryPaymentNowError(code=code.INVALID, message=m, field=f) for f, m in exc.problems
            ],
        )
    return RetryPaymentNowPayload(
        payment=Payment.from_model(result.payment), explanation=result.reason, errors=[]
    )
