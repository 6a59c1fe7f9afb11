"""Enumerations shared by every layer: processors, payment states, declines, actors, roles."""

from enum import StrEnum


class Processor(StrEnum):
    """A payment processor the portal reads failed payments from."""

    STRIPE = "stripe"
    BRAINTREE = "braintree"
    ADYEN = "adyen"
    CHECKOUT = "checkout"


class PaymentState(StrEnum):
    """Where a failed payment stands in recovery."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RETRYING = "RETRYING"
    RECOVERED = "RECOVERED"
    EXHAUSTED = "EXHAUSTED"
    NOT_RETRYABLE = "NOT_RETRYABLE"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        PaymentState.RECOVERED,
        PaymentState.EXHAUSTED,
        PaymentState.NOT_RETRYABLE,
        PaymentState.CANCELED,
    }
)


class DeclineCategory(StrEnum):
    """Canonical decline categories (docs/domain.md §1)."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    DO_NOT_HONOR = "do_not_honor"
    CARD_EXPIRED = "card_expired"
    LOST_STOLEN = "lost_stolen"
    FRAUD_SUSPECTED = "fraud_suspected"
    INVALID_ACCOUNT = "invalid_account"
    PROCESSING_ERROR = "processing_error"
    VELOCITY_EXCEEDED = "velocity_exceeded"
    AUTHENTICATION_REQUIRED = "authentication_required"
    CARD_DATA_INCORRECT = "card_data_incorrect"
    NOT_PERMITTED = "not_permitted"
    PAYMENT_REVOKED = "payment_revoked"
    PROCESSOR_BLOCKED = "processor_blocked"
    OTHER = "other"


class Advice(StrEnum):
    """What the decline says about retrying the same credential."""

    RETRY = "retry"
    RETRY_LATER = "retry_later"
    UPDATE_CREDENTIALS = "update_credentials"
    NEVER = "never"


class AttemptOutcome(StrEnum):
    """The result of one charge attempt."""

    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    ERROR = "error"
    # A portal charge written before it is sent: its outcome is not known yet.
    IN_FLIGHT = "in_flight"


class AttemptStatus(StrEnum):
    """What one run of a portal attempt did (the charge's own result is an AttemptOutcome)."""

    # The outcome is stored.
    RECORDED = "recorded"
    # Nothing to do: the outcome is recorded already, or the attempt is not ours to run.
    SKIPPED = "skipped"
    # Never sent: dropped.
    ABANDONED = "abandoned"
    # Pre-flight ended the payment without charging.
    PREVENTED = "prevented"
    # The processor did not answer: run again with the same idempotency key.
    PENDING = "pending"


class WebhookDeliveryStatus(StrEnum):
    """Where one event's delivery to one webhook endpoint stands."""

    # Sent again with backoff until delivered or given up.
    PENDING = "pending"
    DELIVERED = "delivered"
    # Given up, or never sent because the destination is refused.
    FAILED = "failed"


class Actor(StrEnum):
    """Who made an attempt or brought about a recovery."""

    PORTAL = "portal"
    PROCESSOR = "processor"
    BILLING_SYSTEM = "billing_system"
    CUSTOMER = "customer"


class CardFunding(StrEnum):
    """Card funding type, normalized."""

    CREDIT = "credit"
    DEBIT = "debit"
    PREPAID = "prepaid"
    UNKNOWN = "unknown"


class Role(StrEnum):
    """What an API key may do."""

    MERCHANT = "merchant"
    PARTNER = "partner"
    SUPPORT = "support"


class ApiKeyScope(StrEnum):
    """What an API key may do within its role: read (queries), write (mutations)."""

    READ = "read"
    WRITE = "write"


class RetryStrategy(StrEnum):
    """How retry times are chosen."""

    MODEL = "model"
    FIXED_SCHEDULE = "fixed_schedule"
    DECLINE_AWARE = "decline_aware"


class EndAction(StrEnum):
    """What happens to the invoice when the retry window ends without recovery."""

    MARK_EXHAUSTED = "mark_exhausted"
    CANCEL_SUBSCRIPTION = "cancel_subscription"
    LEAVE_INVOICE_OPEN = "leave_invoice_open"


class EndActionStatus(StrEnum):
    """Where carrying out an end action at the processor stands."""

    # Waiting for the end-action job (first try, or again after a failure).
    PENDING = "pending"
    # Done at the processor (or nothing to do there: the invoice is left open).
    DONE = "done"
    # The processor's API cannot do it (no subscription objects, no subscription named).
    NOT_SUPPORTED = "not_supported"
    # Not carried out: the payment was paid before the action ran.
    SKIPPED = "skipped"
    # Every try failed: a person must act; `last_error` says why.
    FAILED = "failed"


class MerchantStatus(StrEnum):
    """Whether a merchant's recovery runs."""

    ACTIVE = "active"
    PAUSED = "paused"


class ConnectionStatus(StrEnum):
    """Whether a processor connection is polled."""

    ACTIVE = "active"
    PAUSED = "paused"
    ERROR = "error"
    # Removed by a caller, for good: never polled or charged again, its credentials erased;
    # its raw records and payments stay.
    DISCONNECTED = "disconnected"


class ModelStatus(StrEnum):
    """Where a trained retry-timing model stands: acting, waiting, watching, or done."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"
    SHADOW = "shadow"
    RETIRED = "retired"


class BulkActionKind(StrEnum):
    """What a support bulk action does."""

    CANCEL_PAYMENT_RECOVERIES = "cancel_payment_recoveries"
    PAUSE_MERCHANTS_RECOVERY = "pause_merchants_recovery"


class BulkActionStatus(StrEnum):
    """Where a bulk action's job stands."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_finished(self) -> bool:
        return self in (BulkActionStatus.SUCCEEDED, BulkActionStatus.FAILED)
