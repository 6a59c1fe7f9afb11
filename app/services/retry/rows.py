"""A payment as one read row: what the claim reads and changes, without a model object.

Hydrating a `Payment` (pydantic and SQLAlchemy set-up, identity map) and setting its attributes
(both libraries' bookkeeping on every set) cost more than the claim's rules. A claim reads the
columns below into a `PaymentRow`, runs the state machine on them and writes the columns it
changed in the batch's one statement. `PaymentLike` is either, for the code shared by the two
(a `PaymentRow` has the `Payment` columns that code reads and sets).
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

from app.enums import Actor, Advice, DeclineCategory, PaymentState, Processor, RetryStrategy
from app.models.payment import Payment


@dataclass(slots=True)
class PaymentRow:
    """A payment's columns as plain values, read from one row (`ROW_COLUMNS`, in field order).
    The state machine's changes are set on it; `changed` says which columns differ from what
    was read."""

    id: uuid.UUID
    merchant_id: uuid.UUID
    customer_id: uuid.UUID
    card_id: uuid.UUID | None
    processor: Processor
    processor_payment_id: str
    amount_minor: int
    currency: str
    invoice_ref: str | None
    subscription_ref: str | None
    first_failed_at: datetime
    decline_category: DeclineCategory
    decline_retryable: bool
    decline_advice: Advice
    decline_network_code: str | None
    decline_network_advice_code: str | None
    credential_since: datetime | None
    credential_fingerprint: str | None
    state: PaymentState
    next_retry_at: datetime | None
    retrying_since: datetime | None
    recovered_at: datetime | None
    recovered_by: Actor | None
    blocking_rule: str | None
    attempt_count: int
    updated_at: datetime
    decision_at: datetime | None
    decision_reason: str | None
    decision_strategy: RetryStrategy | None
    policy_version: int | None
    needs_decision: bool


PaymentLike = Payment | PaymentRow

# The payment's columns a `PaymentRow` is read from, in its field order.
ROW_COLUMNS: tuple[str, ...] = tuple(PaymentRow.__dataclass_fields__)


def changed_columns(rows: Sequence[tuple[PaymentRow, Sequence[object]]]) -> list[str]:
    """The columns that differ, on any of the rows, from the values read (each row with its
    values as read, in `ROW_COLUMNS` order), in that order."""
    changed: set[int] = set()
    for row, read in rows:
        now = _values(row)
        if now != read:
            changed.update(i for i, (a, b) in enumerate(zip(now, read, strict=True)) if a != b)
    return [ROW_COLUMNS[i] for i in sorted(changed)]


_values = attrgetter(*ROW_COLUMNS)
