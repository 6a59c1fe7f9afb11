"""Loading what the retry rules need for a batch of payments in a fixed number of queries."""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import tuple_, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.declines import HARD_CATEGORY_ADVICE, SOFT_CATEGORIES
from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    CardFunding,
    DeclineCategory,
    MerchantStatus,
)
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment, PaymentAttempt
from app.models.retry import PaymentTransition
from app.models.retry_policy import RetryPolicy
from app.retry.rules import (
    AttemptRecord,
    DeclineView,
    PaymentLedger,
    RetryPolicyView,
    normalize_network,
)
from app.retry.schedule import PaymentView, effective_policy
from app.services.customer_success import success_times, successes_before_failure
from app.services.retry_policy import current_policies

# The customer cap looks back one hour; a day of customer history is plenty.
CUSTOMER_LOOKBACK = timedelta(days=1)

CardKey = tuple[uuid.UUID, str]


@dataclass
class PaymentContext:
    """One payment with everything a transition or a decision reads about it."""

    payment: Payment
    network: str | None
    funding: CardFunding
    card_key: CardKey | None
    customer_ref: str
    customer_timezone: str | None
    policy: RetryPolicyView
    ledger: PaymentLedger
    issuer_country: str | None = None
    past_success_at: tuple[datetime, ...] = ()
    attempts: list[PaymentAttempt] = field(default_factory=list)
    # The timeline position of the next transition (several may share an instant).
    next_seq: int = 0
    # The version of the merchant's policy `policy` reads (None: the merchant has none).
    policy_version: int | None = None

    @property
    def first_decline(self) -> DeclineView:
        """The decline of the first failure, as stored on the payment."""
        return _first_decline_of(self.payment)

    def view(self) -> PaymentView:
        """What a scheduler may see of the payment."""
        p = self.payment
        return PaymentView(
            payment_id=str(p.id),
            merchant_id=str(p.merchant_id),
            first_failed_at=p.first_failed_at,
            amount_minor=p.amount_minor,
            currency=p.currency,
            network=self.network,
            funding=self.funding,
            decline=self.ledger.last_decline,
            customer_timezone=self.customer_timezone,
            issuer_country=self.issuer_country,
            past_success_at=self.past_success_at,
        )

    def with_extra(
        self, card: Sequence[AttemptRecord], customer: Sequence[AttemptRecord]
    ) -> "PaymentContext":
        """The same payment with attempts not yet visible in the database (same batch)."""
        if not card and not customer:
            return self
        ledger = replace(
            self.ledger,
            card_history=(*self.ledger.card_history, *card),
            customer_history=(*self.ledger.customer_history, *customer),
        )
        return replace(self, ledger=ledger)


def policy_view(row: RetryPolicy | None, merchant_status: MerchantStatus) -> RetryPolicyView:
    """The engine's reading of a stored policy; a paused merchant reads as switched off."""
    if row is None:
        # No policy means nobody agreed to retries: hold everything.
        return RetryPolicyView(enabled=False)
    return RetryPolicyView(
        enabled=row.enabled and merchant_status is MerchantStatus.ACTIVE,
        max_attempts=row.max_attempts,
        window_days=row.window_days,
        min_hours_between_attempts=row.min_hours_between_attempts,
        quiet_hours_start=row.quiet_hours_start,
        quiet_hours_end=row.quiet_hours_end,
        timezone=row.timezone,
        excluded_decline_categories=frozenset(
            DeclineCategory(c) for c in row.excluded_decline_categories
        ),
        strategy=row.strategy,
        fixed_schedule_days=tuple(row.fixed_schedule_days),
        end_action=row.end_action,
    )


@dataclass(frozen=True, slots=True)
class _Row:
    attempt: PaymentAttempt
    customer_id: uuid.UUID
    card_key: CardKey | None
    first_decline: DeclineView


def attempt_decline(attempt: PaymentAttempt, fallback: DeclineView | None) -> DeclineView | None:
    """The rules' view of an attempt's decline; the first failure reads its payment's."""
    if attempt.outcome is not AttemptOutcome.DECLINED:
        return None
    if attempt.number == 1 and fallback is not None:
        return fallback
    category = attempt.decline_category or DeclineCategory.OTHER
    retryable = attempt.decline_retryable
    if retryable is None:
        retryable = category in SOFT_CATEGORIES
    advice = attempt.decline_advice
    if advice is None:
        advice = Advice.RETRY if retryable else HARD_CATEGORY_ADVICE.get(category, Advice.NEVER)
    return DeclineView(
        category=category,
        retryable=retryable,
        advice=advice,
        declined_at=attempt.attempted_at,
        not_before=attempt.not_before,
        network_decline_code=attempt.network_decline_code,
        network_advice_code=attempt.network_advice_code,
    )


def attempt_record(attempt: PaymentAttempt, fallback: DeclineView | None) -> AttemptRecord:
    outcome = None if attempt.outcome is AttemptOutcome.IN_FLIGHT else attempt.outcome
    return AttemptRecord(
        at=attempt.attempted_at,
        actor=attempt.actor,
        outcome=outcome,
        decline=attempt_decline(attempt, fallback),
    )


def _first_decline_of(p: Payment) -> DeclineView:
    return DeclineView(
        category=p.decline_category,
        retryable=p.decline_retryable,
        advice=p.decline_advice,
        declined_at=p.first_failed_at,
        network_decline_code=p.decline_network_code,
        network_advice_code=p.decline_network_advice_code,
    )


async def load_contexts(
    session: AsyncSession,
    payment_ids: Sequence[uuid.UUID],
    *,
    now: datetime,
    lock: bool = False,
) -> dict[uuid.UUID, PaymentContext]:
    """Payments with their ledgers: three queries whatever the batch size.

    Card history follows the card's fingerprint at the merchant across expiries (a renewed
    card is the same credential to the network); customer history covers the last day.
    """
    if not payment_ids:
        return {}
    last_seq = (
        sa.select(sa.func.max(col(PaymentTransition.seq)))
        .where(col(PaymentTransition.payment_id) == col(Payment.id))
        .correlate(Payment)
        .scalar_subquery()
    )
    head = (
        sa.select(
            Payment,
            CardCredential,
            col(Customer.external_ref),
            col(Customer.timezone),
            col(Merchant.status),
            last_seq,
            successes_before_failure(),
        )
        .join(Customer, col(Customer.id) == col(Payment.customer_id))
        .join(Merchant, col(Merchant.id) == col(Payment.merchant_id))
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .where(col(Payment.id).in_(payment_ids))
    )
    if lock:
        # A locked read must see the row as committed, not as an earlier read left it.
        # Rows are locked in id order, so batches that share payments wait rather than deadlock.
        head = (
            head.order_by(col(Payment.id))
            .with_for_update(of=Payment)
            .execution_options(populate_existing=True)
        )
    heads = (await session.execute(head)).all()
    if not heads:
        return {}
    merchant_ids = sorted({row[0].merchant_id for row in heads})
    policies = await current_policies(session, merchant_ids)
    card_keys = sorted({(c.merchant_id, c.fingerprint) for _, c, *_ in heads if c is not None})
    customer_ids = sorted({p.customer_id for p, *_ in heads})
    history = await _history(
        session, [p.id for p, *_ in heads], card_keys, customer_ids, now - CUSTOMER_LOOKBACK
    )

    own: dict[uuid.UUID, list[_Row]] = defaultdict(list)
    by_card: dict[CardKey, list[_Row]] = defaultdict(list)
    by_customer: dict[uuid.UUID, list[_Row]] = defaultdict(list)
    for row in history:
        own[row.attempt.payment_id].append(row)
        if row.card_key is not None:
            by_card[row.card_key].append(row)
        if row.attempt.attempted_at >= now - CUSTOMER_LOOKBACK:
            by_customer[row.customer_id].append(row)

    out: dict[uuid.UUID, PaymentContext] = {}
    for payment, card, customer_ref, timezone, status, seq, successes in heads:
        first = _first_decline_of(payment)
        mine = sorted(
            own.get(payment.id, []), key=lambda r: (r.attempt.attempted_at, r.attempt.number)
        )
        retries = [r for r in mine if r.attempt.number != 1]
        last_decline = first
        for r in retries:
            d = attempt_decline(r.attempt, None)
            if d is not None:
                last_decline = d
        key = None if card is None else (card.merchant_id, card.fingerprint)
        card_rows = by_card.get(key, []) if key is not None else mine
        ledger = PaymentLedger(
            network=normalize_network(card.brand) if card is not None else None,
            first_failed_at=payment.first_failed_at,
            last_decline=last_decline,
            retries=tuple(attempt_record(r.attempt, r.first_decline) for r in retries),
            card_history=tuple(attempt_record(r.attempt, r.first_decline) for r in card_rows),
            customer_history=tuple(
                attempt_record(r.attempt, r.first_decline)
                for r in by_customer.get(payment.customer_id, [])
            ),
            credential_since=payment.credential_since,
            customer_timezone=timezone,
        )
        stored = policies.get(payment.merchant_id)
        base = policy_view(stored, status)
        policy = effective_policy(
            base, merchant_id=str(payment.merchant_id), payment_id=str(payment.id)
        )
        out[payment.id] = PaymentContext(
            payment=payment,
            network=ledger.network,
            funding=card.funding if card is not None else CardFunding.UNKNOWN,
            card_key=key,
            customer_ref=customer_ref,
            customer_timezone=timezone,
            policy=policy,
            ledger=ledger,
            issuer_country=card.issuer_country if card is not None else None,
            past_success_at=success_times(successes),
            attempts=[r.attempt for r in mine],
            next_seq=0 if seq is None else seq + 1,
            policy_version=stored.version if stored is not None else None,
        )
    return out


async def _history(
    session: AsyncSession,
    payment_ids: Sequence[uuid.UUID],
    card_keys: Sequence[CardKey],
    customer_ids: Sequence[uuid.UUID],
    customer_since: datetime,
) -> list[_Row]:
    """Every attempt of these payments, of these cards and (recently) of these customers.

    The related payments are found first (each part an index probe), then their attempts:
    the planner starts from a small set of payments rather than from every attempt.
    """
    parts: list[Any] = [select(col(Payment.id)).where(col(Payment.id).in_(payment_ids))]
    if card_keys:
        parts.append(
            select(col(Payment.id))
            .join(CardCredential, col(CardCredential.id) == col(Payment.card_id))
            .where(
                tuple_(col(CardCredential.merchant_id), col(CardCredential.fingerprint)).in_(
                    card_keys
                )
            )
        )
    parts.append(select(col(Payment.id)).where(col(Payment.customer_id).in_(customer_ids)))
    related = union(*parts).subquery()
    query = (
        sa.select(
            PaymentAttempt,
            Payment,
            col(CardCredential.merchant_id),
            col(CardCredential.fingerprint),
        )
        .select_from(related)
        .join(Payment, col(Payment.id) == related.c.id)
        .join(PaymentAttempt, col(PaymentAttempt.payment_id) == col(Payment.id))
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
    )
    rows: list[_Row] = []
    own = set(payment_ids)
    keys = set(card_keys)
    for attempt, payment, card_merchant, fingerprint in (await session.execute(query)).all():
        key = None if fingerprint is None else (card_merchant, fingerprint)
        # A customer's older payments matter only for their recent attempts.
        if payment.id not in own and key not in keys and attempt.attempted_at < customer_since:
            continue
        rows.append(_Row(attempt, payment.customer_id, key, _first_decline_of(payment)))
    return rows


def in_flight(ctx: PaymentContext) -> PaymentAttempt | None:
    """The payment's portal attempt whose outcome is not known yet, if any."""
    for a in ctx.attempts:
        if a.actor is Actor.PORTAL and a.outcome is AttemptOutcome.IN_FLIGHT:
            return a
    return None
