"""Events the retry state machine consumes and the actions it asks the jobs to carry out."""

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from app.enums import Actor, EndAction, PaymentState, RetryStrategy
from app.retry.rules import DeclineView

# --- Events: facts, named in the past tense ------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailureIngested:
    """The payment's first failed charge was read from the processor."""

    name: ClassVar[str] = "failure_ingested"
    decline: DeclineView


@dataclass(frozen=True, slots=True)
class DecisionMade:
    """A scheduler chose when to retry; `chosen_at` None means it sees no worthwhile time."""

    name: ClassVar[str] = "decision_made"
    chosen_at: datetime | None
    reason: str
    strategy: RetryStrategy


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """The due-payment claim picked this payment for a charge."""

    name: ClassVar[str] = "attempt_started"


@dataclass(frozen=True, slots=True)
class AttemptSucceeded:
    """A charge the portal started succeeded (possibly confirmed late, by reconciliation)."""

    name: ClassVar[str] = "attempt_succeeded"


@dataclass(frozen=True, slots=True)
class AttemptDeclined:
    """The charge the portal has in flight was declined."""

    name: ClassVar[str] = "attempt_declined"
    decline: DeclineView


@dataclass(frozen=True, slots=True)
class AttemptAbandoned:
    """The in-flight charge provably never reached the processor (reconciled by its key)."""

    name: ClassVar[str] = "attempt_abandoned"
    reason: str


@dataclass(frozen=True, slots=True)
class ExternalAttemptDeclined:
    """A processor or billing system retried this payment on its own and was declined."""

    name: ClassVar[str] = "external_attempt_declined"
    decline: DeclineView
    actor: Actor


@dataclass(frozen=True, slots=True)
class PaidElsewhere:
    """The invoice was paid other than by a portal charge."""

    name: ClassVar[str] = "paid_elsewhere"
    actor: Actor


@dataclass(frozen=True, slots=True)
class SubscriptionCanceled:
    """The subscription behind the payment was canceled or reached its end; `detail` says
    what was seen (the processor's answer), when anything more than the fact."""

    name: ClassVar[str] = "subscription_canceled"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InvoiceVoided:
    """The invoice behind the payment was voided or written off."""

    name: ClassVar[str] = "invoice_voided"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RecoveryCanceled:
    """Recovery of the payment was stopped on request (a person, with their reason) or because
    the portal can no longer charge it (its processor connection was disconnected)."""

    name: ClassVar[str] = "recovery_canceled"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CustomerDeleted:
    """The processor no longer has the payment's customer: there is nobody left to charge."""

    name: ClassVar[str] = "customer_deleted"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CredentialUpdated:
    """The customer's card number or expiry changed (account updater or the customer)."""

    name: ClassVar[str] = "credential_updated"
    at: datetime
    actor: Actor


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """The merchant's retry policy changed; the new one is the `policy` passed alongside."""

    name: ClassVar[str] = "policy_changed"


@dataclass(frozen=True, slots=True)
class WindowExpired:
    """The merchant's retry window for this payment has run out."""

    name: ClassVar[str] = "window_expired"


@dataclass(frozen=True, slots=True)
class MerchantPaused:
    """The merchant paused recovery."""

    name: ClassVar[str] = "merchant_paused"


@dataclass(frozen=True, slots=True)
class MerchantResumed:
    """The merchant resumed recovery."""

    name: ClassVar[str] = "merchant_resumed"


Event = (
    FailureIngested
    | DecisionMade
    | AttemptStarted
    | AttemptSucceeded
    | AttemptDeclined
    | AttemptAbandoned
    | ExternalAttemptDeclined
    | PaidElsewhere
    | SubscriptionCanceled
    | InvoiceVoided
    | CustomerDeleted
    | CredentialUpdated
    | PolicyChanged
    | WindowExpired
    | MerchantPaused
    | MerchantResumed
    | RecoveryCanceled
)

EVENT_TYPES: tuple[type[Event], ...] = (
    FailureIngested,
    DecisionMade,
    AttemptStarted,
    AttemptSucceeded,
    AttemptDeclined,
    AttemptAbandoned,
    ExternalAttemptDeclined,
    PaidElsewhere,
    SubscriptionCanceled,
    InvoiceVoided,
    CustomerDeleted,
    CredentialUpdated,
    PolicyChanged,
    WindowExpired,
    MerchantPaused,
    MerchantResumed,
    RecoveryCanceled,
)

# The test event `sendTestWebhook` sends on request (the domain events' types are listed with
# their payloads in app/webhook_events.py).
PING_EVENT_TYPE = "ping"

# --- Actions: what the jobs must do, in order, in the transaction that stores the state -----


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """Set the payment's next retry time (and the decision shown for it).

    `blocking_rule` names the rule that moved the retry later than the time asked for (None
    when the time asked for is allowed); `reason` says the same in words.
    """

    at: datetime
    reason: str
    strategy: RetryStrategy
    blocking_rule: str | None = None


@dataclass(frozen=True, slots=True)
class ClearSchedule:
    """Unset the payment's next retry time."""


@dataclass(frozen=True, slots=True)
class RecordAttempt:
    """Store the new attempt as in flight now, so every later rule check counts it."""

    attempt_number: int
    at: datetime


@dataclass(frozen=True, slots=True)
class EnqueueAttempt:
    """Enqueue the charge job; its job id and idempotency key derive from the number."""

    attempt_number: int


@dataclass(frozen=True, slots=True)
class RequestDecision:
    """Ask the payment's scheduler for a (new) retry time."""

    reason: str


@dataclass(frozen=True, slots=True)
class EmitEvent:
    """Write a domain event to the outbox for the merchant's webhook."""

    name: str


@dataclass(frozen=True, slots=True)
class RecordTransition:
    """Append a row to the payment's timeline."""

    from_state: PaymentState
    to_state: PaymentState
    event: str
    reason: str
    actor: Actor
    at: datetime


@dataclass(frozen=True, slots=True)
class ApplyEndAction:
    """Carry out the merchant's end-of-window choice for the invoice."""

    end_action: EndAction


@dataclass(frozen=True, slots=True)
class CancelSubscriptionRetries:
    """Stop recovery of every open payment of the same subscription (stop-payment order)."""

    reason: str


@dataclass(frozen=True, slots=True)
class AlertDuplicateCharge:
    """A charge succeeded on a payment already paid or canceled: a human must refund it."""

    reason: str


Action = (
    ScheduleRetry
    | ClearSchedule
    | RecordAttempt
    | EnqueueAttempt
    | RequestDecision
    | EmitEvent
    | RecordTransition
    | ApplyEndAction
    | CancelSubscriptionRetries
    | AlertDuplicateCharge
)


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of one event: the new state, the actions to carry out, and why.

    `blocking_rule` names the rule (`app.retry.rules`) that ended the payment, moved its
    retry time or still forbids a retry, when one did; `reason` says it in words, for people.
    """

    previous_state: PaymentState
    new_state: PaymentState
    actions: tuple[Action, ...]
    reason: str
    blocking_rule: str | None = None

    @property
    def changed(self) -> bool:
        """False for a no-op (an absorbed or duplicate event): nothing to store."""
        return self.new_state is not self.previous_state or bool(self.actions)

    @property
    def next_retry_at(self) -> datetime | None:
        """The retry time this transition sets, if it sets one."""
        for action in self.actions:
            if isinstance(action, ScheduleRetry):
                return action.at
        return None


class IllegalTransitionError(Exception):
    """An event that cannot happen in the payment's state: a bug or a race upstream."""

    def __init__(self, state: PaymentState, event: Event) -> None:
        super().__init__(f"{event.name} is not allowed in state {state}")
        self.state = state
        self.event = event
