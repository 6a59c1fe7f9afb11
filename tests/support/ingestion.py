"""Ingestion test data: Stripe charges named by their invoice, from one starting time."""

from datetime import UTC, datetime
from typing import Any

from tests.support.retry import stripe_charge

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)


def invoiced_charge(
    charge_id: str,
    *,
    status: str = "failed",
    invoice: str | None = "in_1",
    created: datetime = T0,
    reason: str = "insufficient_funds",
    amount: int = 2900,
) -> dict[str, Any]:
    """A Stripe charge (`stripe_charge`) on the invoice named, or on none with None."""
    charge = stripe_charge(charge_id, created=created, status=status, reason=reason, amount=amount)
    charge["invoice"] = invoice
    return charge
