"""A customer's successful charges: stored from ingested records, read as of a failure."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text, union
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import aliased
from sqlmodel import col

from app.db import UnitOfWork
from app.enums import AttemptOutcome, Processor
from app.models.customer import Customer, CustomerSuccess
from app.models.payment import Payment, PaymentAttempt
from app.processors.normalize.records import CanonicalRecord

# How many of the latest successes a payment's view carries: the timing model's slots.
RECENT_SUCCESSES = 6
# The one customer that charges without a processor customer reference are filed under: their
# charges are many people's, so they say nothing about anyone's pay cycle.
UNKNOWN_CUSTOMER = "unknown"

_UPSERT = text(
    """
    INSERT INTO customer_success
        (merchant_id, processor, processor_payment_id, customer_id, succeeded_at)
    SELECT :merchant_id, :processor, s.charge, s.customer_id, s.at
    FROM unnest(CAST(:charges AS text[]), CAST(:customer_ids AS uuid[]),
                CAST(:ats AS timestamptz[])) AS s(charge, customer_id, at)
    ON CONFLICT (merchant_id, processor, processor_payment_id) DO UPDATE
        SET customer_id = EXCLUDED.customer_id, succeeded_at = EXCLUDED.succeeded_at
        WHERE (customer_success.customer_id, customer_success.succeeded_at)
              IS DISTINCT FROM (EXCLUDED.customer_id, EXCLUDED.succeeded_at)
    """
)


async def record_successes(
    uow: UnitOfWork,
    merchant_id: uuid.UUID,
    processor: Processor,
    records: Sequence[CanonicalRecord],
    customer_ids: dict[str, uuid.UUID],
) -> int:
    """Store successful charges that opened no recovery, in one statement for the batch.

    Keyed by the processor's charge id: a charge delivered twice, or replayed, is one row, and
    a replay with a better normalizer rewrites its reading in place. Charges without a known
    customer say nothing about anyone's pay cycle and are skipped. Returns the charges sent.
    """
    latest: dict[str, tuple[uuid.UUID, datetime]] = {}
    for record in records:
        if record.status != "succeeded" or record.customer_id in (None, UNKNOWN_CUSTOMER):
            continue
        customer = customer_ids.get(record.customer_id)
        if customer is not None:
            # One row per charge in the statement: ON CONFLICT may touch a row only once.
            latest[record.processor_payment_id[:255]] = (customer, record.attempted_at)
    if not latest:
        return 0
    charges = sorted(latest)
    await uow.session.execute(
        _UPSERT,
        {
            "merchant_id": merchant_id,
            "processor": processor.value,
            "charges": charges,
            "customer_ids": [latest[c][0] for c in charges],
            "ats": [latest[c][1] for c in charges],
        },
    )
    return len(charges)


def successes_before_failure(limit: int = RECENT_SUCCESSES) -> sa.Label[Any]:
    """A column for a query over `Payment`: its customer's latest successful charges before
    its first failure (at most `limit`, oldest first, NULL when none), from ordinary successes
    and successful attempts on the customer's payments alike.

    Only charges before the first failure count, so a payment's own recovery, and anything
    else that happened after it, never leaks into what the model reads of it; payments of the
    unknown customer read none. A correlated subquery: it adds no round trip to the query that
    loads the payments.
    """
    other = aliased(Payment)
    ordinary: sa.Select[tuple[datetime]] = (
        sa.select(col(CustomerSuccess.succeeded_at).label("at"))
        .where(
            col(CustomerSuccess.customer_id) == col(Payment.customer_id),
            col(CustomerSuccess.succeeded_at) < col(Payment.first_failed_at),
        )
        .order_by(col(CustomerSuccess.succeeded_at).desc())
        .limit(limit)
        .correlate(Payment)
    )
    recovered: sa.Select[tuple[datetime]] = (
        sa.select(col(PaymentAttempt.attempted_at).label("at"))
        .join(other, col(other.id) == col(PaymentAttempt.payment_id))
        .where(
            col(other.customer_id) == col(Payment.customer_id),
            col(PaymentAttempt.outcome) == AttemptOutcome.SUCCEEDED,
            col(PaymentAttempt.attempted_at) < col(Payment.first_failed_at),
        )
        .order_by(col(PaymentAttempt.attempted_at).desc())
        .limit(limit)
        .correlate(Payment)
    )
    both = union(ordinary, recovered).subquery("both_successes")
    latest = sa.select(both.c.at).order_by(both.c.at.desc()).limit(limit).subquery("latest")
    known = (
        sa.select(col(Customer.external_ref))
        .where(col(Customer.id) == col(Payment.customer_id))
        .correlate(Payment)
        .scalar_subquery()
    )
    return (
        sa.select(sa.func.array_agg(aggregate_order_by(latest.c.at, latest.c.at)))
        .where(known != UNKNOWN_CUSTOMER)
        .correlate(Payment)
        .scalar_subquery()
        .label("past_success_at")
    )


def success_times(value: Sequence[datetime] | None) -> tuple[datetime, ...]:
    """The column's value as the views hold it."""
    return tuple(value or ())
