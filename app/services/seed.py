"""Demo data: realistic payments across states, processors, currencies and declines."""

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import insert
from sqlmodel import col, select

from app.db import UnitOfWork
from app.declines import Decline
from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    CardFunding,
    DeclineCategory,
    PaymentState,
    Processor,
)
from app.errors import NotFound
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt, decline_columns


@dataclass(frozen=True)
class _DeclineKind:
    category: DeclineCategory
    retryable: bool
    advice: Advice
    raw_code: str
    network_code: str
    weight: int

    @property
    def decline(self) -> Decline:
        """As the taxonomy reads it, from a processor that sent no advice code."""
        return Decline(
            self.category, self.retryable, self.advice, None, self.raw_code, self.network_code, None
        )


# Weights follow the simulator's decline mix (docs/domain.md §4): mostly generic declines and
# low funds.
_DECLINES = (
    _DeclineKind(DeclineCategory.DO_NOT_HONOR, True, Advice.RETRY, "do_not_honor", "05", 44),
    _DeclineKind(
        DeclineCategory.INSUFFICIENT_FUNDS, True, Advice.RETRY, "insufficient_funds", "51", 18
    ),
    _DeclineKind(
        DeclineCategory.VELOCITY_EXCEEDED,
        True,
        Advice.RETRY_LATER,
        "card_velocity_exceeded",
        "61",
        10,
    ),
    _DeclineKind(DeclineCategory.PROCESSING_ERROR, True, Advice.RETRY, "processing_error", "96", 8),
    _DeclineKind(
        DeclineCategory.CARD_EXPIRED, False, Advice.UPDATE_CREDENTIALS, "expired_card", "54", 5
    ),
    _DeclineKind(DeclineCategory.LOST_STOLEN, False, Advice.NEVER, "stolen_card", "43", 4),
    _DeclineKind(DeclineCategory.FRAUD_SUSPECTED, False, Advice.NEVER, "fraudulent", "59", 4),
    _DeclineKind(DeclineCategory.INVALID_ACCOUNT, False, Advice.NEVER, "invalid_account", "14", 3),
    _DeclineKind(
        DeclineCategory.AUTHENTICATION_REQUIRED,
        False,
        Advice.NEVER,
        "authentication_required",
        "1A",
        2,
    ),
    _DeclineKind(DeclineCategory.NOT_PERMITTED, False, Advice.NEVER, "not_permitted", "57", 2),
)
_BRANDS = (("visa", "4", 55), ("mastercard", "5", 33), ("amex", "3", 8), ("discover", "6", 4))
_TIMEZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
)
_COUNTRY_OF_TZ = {
    "America": "US",
    "Europe/London": "GB",
    "Europe/Paris": "FR",
    "Europe/Berlin": "DE",
    "Asia/Tokyo": "JP",
    "Australia/Sydney": "AU",
}
_CURRENCIES = (
    ("USD", 55, 999, 9_999),
    ("EUR", 20, 899, 8_999),
    ("GBP", 15, 799, 7_999),
    ("JPY", 10, 980, 9_800),
)


def _country(tz: str) -> str:
    return _COUNTRY_OF_TZ.get(tz, _COUNTRY_OF_TZ.get(tz.split("/")[0], "US"))


@dataclass(frozen=True, slots=True)
class _Owner:
    """A seeded customer and the card their payments failed on."""

    customer_id: uuid.UUID
    card_id: uuid.UUID


@dataclass
class _Rows:
    """The rows seeded, per table, in the order they are inserted."""

    customers: list[dict[str, object]] = field(default_factory=list)
    cards: list[dict[str, object]] = field(default_factory=list)
    payments: list[dict[str, object]] = field(default_factory=list)
    attempts: list[dict[str, object]] = field(default_factory=list)


async def seed_payments(
    uow: UnitOfWork, *, merchant_id: uuid.UUID, count: int, now: datetime, seed: int = 0
) -> int:
    """Insert `count` payments (with customers, cards and attempts); returns the count."""
    if (
        await uow.session.execute(select(col(Merchant.id)).where(col(Merchant.id) == merchant_id))
    ).first() is None:
        raise NotFound("merchant not found", field="merchant")
    rng = random.Random(f"{merchant_id}:{seed}")
    rows = _Rows()
    owners = [_add_customer(rng, rows, merchant_id, now) for _ in range(max(1, count * 3 // 4))]
    for i in range(count):
        _add_payment(rng, rows, merchant_id, i, owners, now)
    for table, chunk in (
        (Customer, rows.customers),
        (CardCredential, rows.cards),
        (Payment, rows.payments),
        (PaymentAttempt, rows.attempts),
    ):
        for start in range(0, len(chunk), 2_000):
            await uow.session.execute(insert(table), chunk[start : start + 2_000])
    return count


def _add_customer(rng: random.Random, rows: _Rows, merchant_id: uuid.UUID, now: datetime) -> _Owner:
    tz = rng.choice(_TIMEZONES)
    customer_id = uuid.uuid4()
    brand, first_digit, _w = rng.choices(_BRANDS, weights=[b[2] for b in _BRANDS])[0]
    rows.customers.append(
        {
            "id": customer_id,
            "merchant_id": merchant_id,
            "external_ref": f"cus_{uuid.uuid4().hex[:14]}",
            "timezone": tz,
            "country": _country(tz),
            "created_at": now,
        }
    )
    card_id = uuid.uuid4()
    card_bin = first_digit + "".join(rng.choices("0123456789", k=5))
    rows.cards.append(
        {
            "id": card_id,
            "merchant_id": merchant_id,
            "customer_id": customer_id,
            "brand": brand,
            "funding": CardFunding.CREDIT if rng.random() < 0.6 else CardFunding.DEBIT,
            "issuer_country": _country(tz),
            "bin": card_bin,
            "last4": f"{rng.randrange(10_000):04d}",
            "exp_month": rng.randint(1, 12),
            "exp_year": now.year + rng.randint(0, 4),
            "fingerprint": hashlib.sha256(f"{customer_id}".encode()).hexdigest()[:32],
            "created_at": now,
        }
    )
    return _Owner(customer_id, card_id)


def _state(rng: random.Random, decline: _DeclineKind, age_days: float) -> PaymentState:
    """Where a payment this old with this decline would be by now."""
    if not decline.retryable:
        return PaymentState.NOT_RETRYABLE
    if age_days > 14:
        return rng.choices(
            [PaymentState.RECOVERED, PaymentState.EXHAUSTED, PaymentState.CANCELED],
            weights=[55, 38, 7],
        )[0]
    return rng.choices(
        [PaymentState.SCHEDULED, PaymentState.RECOVERED, PaymentState.PENDING],
        weights=[60, 35, 5],
    )[0]


def _add_payment(
    rng: random.Random,
    rows: _Rows,
    merchant_id: uuid.UUID,
    i: int,
    owners: list[_Owner],
    now: datetime,
) -> None:
    index = rng.randrange(len(owners))
    owner = owners[index]
    decline = rng.choices(_DECLINES, weights=[d.weight for d in _DECLINES])[0]
    currency, _w, low, high = rng.choices(_CURRENCIES, weights=[c[1] for c in _CURRENCIES])[0]
    failed_at = now - timedelta(minutes=rng.randrange(1, 60 * 24 * 30))
    processor = rng.choice(list(Processor))
    payment_id = uuid.uuid4()
    state = _state(rng, decline, (now - failed_at).total_seconds() / 86_400)
    retries = {
        PaymentState.RECOVERED: rng.randint(1, 3),
        PaymentState.EXHAUSTED: 4,
        PaymentState.SCHEDULED: rng.randint(0, 2),
    }.get(state, 0)
    at = failed_at
    rows.attempts.append(_attempt(merchant_id, payment_id, 1, at, decline, Actor.PROCESSOR))
    for n in range(2, retries + 2):
        at = min(at + timedelta(days=rng.randint(1, 3), hours=rng.randint(0, 12)), now)
        succeeded = state is PaymentState.RECOVERED and n == retries + 1
        rows.attempts.append(
            _attempt(merchant_id, payment_id, n, at, None if succeeded else decline, Actor.PORTAL)
        )
    rows.payments.append(
        {
            "id": payment_id,
            "merchant_id": merchant_id,
            "processor": processor,
            "processor_payment_id": f"{processor.value[:2]}_{uuid.uuid4().hex[:20]}",
            "amount_minor": rng.randrange(low, high),
            "currency": currency,
            "customer_id": owner.customer_id,
            "card_id": owner.card_id,
            "invoice_ref": f"in_{i:06d}{rng.randrange(10**6):06d}",
            "subscription_ref": f"sub_{index:06d}",
            "first_failed_at": failed_at,
            **decline_columns(decline.decline),
            "state": state,
            "next_retry_at": now + timedelta(hours=rng.randint(1, 72))
            if state is PaymentState.SCHEDULED
            else None,
            "recovered_at": at if state is PaymentState.RECOVERED else None,
            "recovered_by": Actor.PORTAL if state is PaymentState.RECOVERED else None,
            "attempt_count": retries + 1,
            "created_at": now,
            "updated_at": now,
        }
    )


def _attempt(
    merchant_id: uuid.UUID,
    payment_id: uuid.UUID,
    number: int,
    at: datetime,
    decline: _DeclineKind | None,
    actor: Actor,
) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "merchant_id": merchant_id,
        "payment_id": payment_id,
        "number": number,
        "attempted_at": at,
        "outcome": AttemptOutcome.DECLINED if decline else AttemptOutcome.SUCCEEDED,
        "actor": actor,
        "decline_raw_code": decline.raw_code if decline else None,
        "decline_category": decline.category if decline else None,
        "created_at": at,
    }
