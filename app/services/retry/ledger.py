"""Loading what the retry rules need for a batch of payments in a fixed number of queries."""

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import union
from sqlalchemy.dialects import postgresql
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
from app.services.retry.rows import ROW_COLUMNS, PaymentLike, PaymentRow
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
    # Every credential a retry of this payment may hit: its card, the card that replaced it,
    # and the cards its attempts were made on. The network caps count them together.
    card_keys: tuple[CardKey, ...]
    customer_ref: str
    customer_timezone: str | None
    policy: RetryPolicyView
    ledger: PaymentLedger
    issuer_country: str | None = None
    past_success_at: tuple[datetime, ...] = ()
    # The payment's card as a credential (fingerprint, expiry month, expiry year).
    card_identity: tuple[str, int, int] | None = None
    attempts: list[PaymentAttempt] = field(default_factory=list)
    # The timeline position of the next transition (several may share an instant).
    next_seq: int = 0
    # The version of the merchant's policy `policy` reads (None: the merchant has none).
    policy_version: int | None = None
    # What the context was built from, to build it again when only the history changed.
    head: "_Head | None" = field(default=None, repr=False)
    stored_policy: RetryPolicy | None = field(default=None, repr=False)
    # Whether `attempts` holds the payment's stored attempts (`load_contexts(attempts=...)`).
    attempts_loaded: bool = field(default=True, repr=False)

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
        """The same payment with attempts not yet visible in the database (same batch); each
        record once, however many of the payment's card keys it was filed under."""
        ledger = ledger_with_extra(self.ledger, card, customer)
        return self if ledger is self.ledger else replace(self, ledger=ledger)


def ledger_with_extra(
    ledger: PaymentLedger, card: Sequence[AttemptRecord], customer: Sequence[AttemptRecord]
) -> PaymentLedger:
    """The ledger with attempts not yet visible in the database (same batch) added to its
    card and customer histories, each record once however many card keys it was filed under."""
    card = list({id(r): r for r in card}.values())
    if not card and not customer:
        return ledger
    return replace(
        ledger,
        card_history=(*ledger.card_history, *card),
        customer_history=(*ledger.customer_history, *customer),
    )


@dataclass(frozen=True, slots=True)
class RowHead:
    """A locked payment read as a row (`row_head`), with its values as read (to tell what
    changed) and what its rules and a scheduler read besides its history: its card as a
    credential and its brand, funding and issuing country, its customer's time zone and past
    successes, its merchant's status. Its latest timeline position is not among them: that
    is read after the lock (`timeline_positions`)."""

    payment: PaymentRow
    read: tuple[Any, ...]
    card: tuple[CardKey, str | None] | None
    funding: CardFunding
    issuer_country: str | None
    customer_timezone: str | None
    merchant_status: MerchantStatus
    past_success_at: tuple[datetime, ...]


@dataclass(slots=True)
class RowContext:
    """What the state machine and the rule-based schedulers read of a payment read as a row,
    and where its next timeline row goes: a `PaymentContext` without the model objects."""

    head: RowHead
    card_keys: tuple[CardKey, ...]
    policy: RetryPolicyView
    ledger: PaymentLedger
    next_seq: int
    policy_version: int | None

    @property
    def payment(self) -> PaymentRow:
        return self.head.payment

    @property
    def first_decline(self) -> DeclineView:
        """The decline of the first failure, as stored on the payment."""
        return _first_decline_of(self.head.payment)

    def view(self) -> PaymentView:
        """What a scheduler may see of the payment (`PaymentContext.view`)."""
        p, head = self.head.payment, self.head
        return PaymentView(
            payment_id=str(p.id),
            merchant_id=str(p.merchant_id),
            first_failed_at=p.first_failed_at,
            amount_minor=p.amount_minor,
            currency=p.currency,
            network=self.ledger.network,
            funding=head.funding,
            decline=self.ledger.last_decline,
            customer_timezone=head.customer_timezone,
            issuer_country=head.issuer_country,
            past_success_at=head.past_success_at,
        )


@cache
def row_head_columns(successes: bool) -> tuple[Any, ...]:
    """The columns `row_head` reads, in its order: the payment's (`ROW_COLUMNS`), its card's
    merchant, fingerprint, brand, funding and issuing country, its customer's time zone, its
    merchant's status and (`successes`) its customer's past successes. The statement joins
    `customer` and `merchant` and outer-joins the payment's `card_credential`. A claim, which
    makes no decision, reads no past successes.

    The payment's latest timeline position is not read here: a statement that locks the
    payment reads every other table as of its start, before a transaction it waited for (or
    that committed while it ran) wrote its timeline rows (`timeline_positions`)."""
    table = Payment.__table__  # type: ignore[attr-defined]
    return (
        *(table.c[name] for name in ROW_COLUMNS),
        col(CardCredential.merchant_id),
        col(CardCredential.fingerprint),
        col(CardCredential.brand),
        col(CardCredential.funding),
        col(CardCredential.issuer_country),
        col(Customer.timezone),
        col(Merchant.status),
        successes_before_failure() if successes else sa.null(),
    )


_ROW_WIDTH = len(ROW_COLUMNS)


def row_head(found: Sequence[Any]) -> RowHead:
    """One payment as read by `row_head_columns`."""
    read = tuple(found[:_ROW_WIDTH])
    (
        card_merchant,
        fingerprint,
        brand,
        funding,
        issuer_country,
        timezone,
        status,
        successes,
    ) = found[_ROW_WIDTH:]
    card = None if fingerprint is None else ((card_merchant, fingerprint), brand)
    return RowHead(
        payment=PaymentRow(*read),
        read=read,
        card=card,
        funding=funding if funding is not None else CardFunding.UNKNOWN,
        issuer_country=issuer_country,
        customer_timezone=timezone,
        merchant_status=status,
        past_success_at=success_times(successes),
    )


async def _policies_and_history(
    session: AsyncSession, payments: Sequence[PaymentLike], *, now: datetime, objects: bool
) -> tuple[dict[uuid.UUID, RetryPolicy], "_Attempts"]:
    """The payments' merchants' current policies and their histories, indexed: two
    statements whatever the batch size."""
    policies = await current_policies(session, sorted({p.merchant_id for p in payments}))
    customer_since = now - CUSTOMER_LOOKBACK
    rows = await _history(
        session,
        [p.id for p in payments],
        sorted({p.customer_id for p in payments}),
        customer_since,
        objects=objects,
    )
    return policies, _Attempts.index(rows, customer_since)


async def row_contexts(
    session: AsyncSession, heads: Sequence[RowHead], *, now: datetime
) -> dict[uuid.UUID, RowContext]:
    """`load_contexts` for payments already read as rows (and locked): their timeline
    positions, policies and histories in three statements (the same ones), no model object."""
    if not heads:
        return {}
    positions = await timeline_positions(session, [h.payment.id for h in heads])
    policies, index = await _policies_and_history(
        session, [h.payment for h in heads], now=now, objects=False
    )
    views: dict[tuple[int, MerchantStatus], RetryPolicyView] = {}
    found: dict[uuid.UUID, RowContext] = {}
    for h in heads:
        stored = policies.get(h.payment.merchant_id)
        rules = _rules_of(
            h.payment, h.card, h.customer_timezone, h.merchant_status, index, stored, views
        )
        found[h.payment.id] = RowContext(
            head=h,
            card_keys=rules.keys,
            policy=rules.policy,
            ledger=rules.ledger,
            next_seq=_next_seq(positions.get(h.payment.id)),
            policy_version=stored.version if stored is not None else None,
        )
    return found


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
        control_group_percent=row.control_group_percent,
    )


@dataclass(frozen=True, slots=True)
class StoredAttempt:
    """What the rules read of a stored attempt: its columns as one read row, not a model
    object (the session neither tracks nor hydrates it)."""

    id: uuid.UUID
    payment_id: uuid.UUID
    number: int
    attempted_at: datetime
    outcome: AttemptOutcome
    actor: Actor
    decline_category: DeclineCategory | None
    decline_retryable: bool | None
    decline_advice: Advice | None
    not_before: datetime | None
    decline_network_code: str | None
    decline_network_advice_code: str | None
    card_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class _Row:
    # The session's object when the caller wants them (`load_contexts(attempts=True)`).
    attempt: PaymentAttempt | StoredAttempt
    customer_id: uuid.UUID
    # The credentials the attempt counts against: the card it was made on; when that is not
    # known, its payment's card and the card that replaced it (either may have been hit).
    card_keys: tuple[CardKey, ...]
    # The first failure's decline as stored on its payment; only a declined first attempt
    # reads it (`attempt_decline`), so only such a row carries it.
    first_decline: DeclineView | None


def attempt_decline(
    attempt: PaymentAttempt | StoredAttempt, fallback: DeclineView | None
) -> DeclineView | None:
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
        network_decline_code=attempt.decline_network_code,
        network_advice_code=attempt.decline_network_advice_code,
    )


def attempt_record(
    attempt: PaymentAttempt | StoredAttempt, fallback: DeclineView | None
) -> AttemptRecord:
    outcome = None if attempt.outcome is AttemptOutcome.IN_FLIGHT else attempt.outcome
    return AttemptRecord(
        at=attempt.attempted_at,
        actor=attempt.actor,
        outcome=outcome,
        decline=attempt_decline(attempt, fallback),
    )


def _first_decline_of(p: PaymentLike) -> DeclineView:
    return DeclineView(
        category=p.decline_category,
        retryable=p.decline_retryable,
        advice=p.decline_advice,
        declined_at=p.first_failed_at,
        network_decline_code=p.decline_network_code,
        network_advice_code=p.decline_network_advice_code,
    )


@dataclass(frozen=True, slots=True)
class _Head:
    """One payment as the head query reads it, with what its context needs besides attempts."""

    payment: Payment
    card: CardCredential | None
    customer_ref: str
    customer_timezone: str | None
    merchant_status: MerchantStatus
    # The payment's latest timeline position (None: no transition yet).
    last_seq: int | None
    past_success_at: tuple[datetime, ...]


# The ledger's statements are built once, their values bound at each execution: building
# and keying them for the compiled-statement cache costs more than running them.
_IDS = sa.bindparam("payment_ids", type_=postgresql.ARRAY(sa.Uuid))
_CUSTOMERS = sa.bindparam("customer_ids", type_=postgresql.ARRAY(sa.Uuid))
_CUSTOMER_SINCE = sa.bindparam("customer_since", type_=sa.DateTime(timezone=True))


def _last_seq() -> Any:
    """The payment's latest timeline position (NULL: no transition yet)."""
    return (
        sa.select(sa.func.max(col(PaymentTransition.seq)))
        .where(col(PaymentTransition.payment_id) == col(Payment.id))
        .correlate(Payment)
        .scalar_subquery()
    )


def _next_seq(last_seq: int | None) -> int:
    return 0 if last_seq is None else last_seq + 1


@cache
def _positions_statement() -> Any:
    # Each payment's position probed through the (payment_id, at, seq) index of every
    # partition, whatever the plan cached for the statement guesses about the array.
    ids = sa.func.unnest(_IDS).table_valued(sa.column("id", sa.Uuid)).render_derived(name="ids")
    last = (
        sa.select(sa.func.max(col(PaymentTransition.seq)))
        .where(col(PaymentTransition.payment_id) == ids.c.id)
        .correlate(ids)
        .scalar_subquery()
    )
    return sa.select(ids.c.id, last).select_from(ids)


async def timeline_positions(
    session: AsyncSession, payment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """Each payment's latest timeline position (a payment without one is left out).

    Read in a statement of its own once the payments are locked, never by the statement that
    locks them. Under READ COMMITTED a locking statement reads as of its own start: when it
    waited for a payment's lock, or reached a payment another transaction changed and
    committed after it started, it returns the payment row as committed but whatever else it
    read (the timeline's latest position among it) as it was before, so two writers could
    both put their next row at the same position. Every writer of a payment's timeline holds
    the payment's lock until it commits, so a statement started after the lock is granted
    sees the rows of every writer before it."""
    if not payment_ids:
        return {}
    rows = await session.execute(_positions_statement(), {"payment_ids": list(payment_ids)})
    return {row[0]: row[1] for row in rows.all() if row[1] is not None}


@cache
def _lock_statement() -> Any:
    # Rows are locked in id order, so batches that share payments wait rather than deadlock.
    return (
        sa.select(col(Payment.id))
        .where(col(Payment.id) == sa.any_(_IDS))
        .order_by(col(Payment.id))
        .with_for_update(of=Payment)
    )


@cache
def _heads_statement(fresh: bool) -> Any:
    last_seq = _last_seq()
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
        .where(col(Payment.id) == sa.any_(_IDS))
    )
    if fresh:
        # A read after the lock must see the row as committed, not as an earlier read left it.
        head = head.order_by(col(Payment.id)).execution_options(populate_existing=True)
    return head


async def _heads(
    session: AsyncSession, payment_ids: Sequence[uuid.UUID], *, lock: bool
) -> list[_Head]:
    """The payments' heads; with `lock`, the payments are locked first and then read (with
    their latest timeline positions) by a statement of its own (`timeline_positions` says
    why)."""
    params = {"payment_ids": list(payment_ids)}
    if lock:
        await session.execute(_lock_statement(), params)
    rows = await session.execute(_heads_statement(lock), params)
    return [
        _Head(payment, card, ref, timezone, status, seq, success_times(successes))
        for payment, card, ref, timezone, status, seq, successes in rows.all()
    ]


@dataclass(frozen=True, slots=True)
class _Attempts:
    """Stored attempts by payment, by credential, and by customer (recent ones only)."""

    own: Mapping[uuid.UUID, Sequence[_Row]]
    by_card: Mapping[CardKey, Sequence[_Row]]
    by_customer: Mapping[uuid.UUID, Sequence[_Row]]

    @classmethod
    def index(cls, rows: Sequence[_Row], customer_since: datetime) -> "_Attempts":
        own: dict[uuid.UUID, list[_Row]] = defaultdict(list)
        by_card: dict[CardKey, list[_Row]] = defaultdict(list)
        by_customer: dict[uuid.UUID, list[_Row]] = defaultdict(list)
        for row in rows:
            own[row.attempt.payment_id].append(row)
            for key in row.card_keys:
                by_card[key].append(row)
            if row.attempt.attempted_at >= customer_since:
                by_customer[row.customer_id].append(row)
        return cls(own, by_card, by_customer)


def _ledger(
    payment: PaymentLike,
    brand: str | None,
    customer_timezone: str | None,
    mine: Sequence[_Row],
    keys: Sequence[CardKey],
    attempts: _Attempts,
) -> PaymentLedger:
    """The rules' view of one payment: its retries, its credentials' and customer's attempts
    (`brand`: its card's, None without a card)."""
    retries = [r for r in mine if r.attempt.number != 1]
    last_decline = _first_decline_of(payment)
    for r in retries:
        d = attempt_decline(r.attempt, None)
        if d is not None:
            last_decline = d
    card_rows = _card_rows(mine, keys, attempts.by_card)
    return PaymentLedger(
        network=normalize_network(brand),
        first_failed_at=payment.first_failed_at,
        last_decline=last_decline,
        retries=tuple(attempt_record(r.attempt, r.first_decline) for r in retries),
        card_history=tuple(attempt_record(r.attempt, r.first_decline) for r in card_rows),
        customer_history=tuple(
            attempt_record(r.attempt, r.first_decline)
            for r in attempts.by_customer.get(payment.customer_id, [])
        ),
        credential_since=payment.credential_since,
        customer_timezone=customer_timezone,
    )


@dataclass(frozen=True, slots=True)
class _Rules:
    """What the rules read of one payment in a batch: its own attempts in order, the
    credentials a retry may hit, its ledger and its effective policy."""

    mine: list[_Row]
    keys: tuple[CardKey, ...]
    ledger: PaymentLedger
    policy: RetryPolicyView


def _rules_of(
    payment: PaymentLike,
    card: tuple[CardKey, str | None] | None,
    customer_timezone: str | None,
    merchant_status: MerchantStatus,
    attempts: _Attempts,
    stored: RetryPolicy | None,
    views: dict[tuple[int, MerchantStatus], RetryPolicyView] | None,
) -> _Rules:
    """`card`: the payment's card as a credential and its brand (None without a card)."""
    mine = sorted(
        attempts.own.get(payment.id, []), key=lambda r: (r.attempt.attempted_at, r.attempt.number)
    )
    keys = _card_keys(payment, card[0] if card is not None else None, mine)
    brand = card[1] if card is not None else None
    ledger = _ledger(payment, brand, customer_timezone, mine, keys, attempts)
    policy = effective_policy(
        _policy_view(stored, merchant_status, views),
        merchant_id=str(payment.merchant_id),
        payment_id=str(payment.id),
    )
    return _Rules(mine, keys, ledger, policy)


def _context(
    head: _Head,
    attempts: _Attempts,
    stored: RetryPolicy | None,
    objects: bool,
    views: dict[tuple[int, MerchantStatus], RetryPolicyView] | None = None,
) -> PaymentContext:
    payment, card = head.payment, head.card
    card_facts = None if card is None else ((card.merchant_id, card.fingerprint), card.brand)
    rules = _rules_of(
        payment, card_facts, head.customer_timezone, head.merchant_status, attempts, stored, views
    )
    return PaymentContext(
        payment=payment,
        network=rules.ledger.network,
        funding=card.funding if card is not None else CardFunding.UNKNOWN,
        card_keys=rules.keys,
        customer_ref=head.customer_ref,
        customer_timezone=head.customer_timezone,
        policy=rules.policy,
        ledger=rules.ledger,
        issuer_country=card.issuer_country if card is not None else None,
        card_identity=(
            (card.fingerprint, card.exp_month, card.exp_year) if card is not None else None
        ),
        past_success_at=head.past_success_at,
        attempts=[r.attempt for r in rules.mine if isinstance(r.attempt, PaymentAttempt)],
        next_seq=_next_seq(head.last_seq),
        policy_version=stored.version if stored is not None else None,
        head=head,
        stored_policy=stored,
        attempts_loaded=objects,
    )


def _policy_view(
    stored: RetryPolicy | None,
    status: MerchantStatus,
    views: dict[tuple[int, MerchantStatus], RetryPolicyView] | None,
) -> RetryPolicyView:
    """`policy_view`, read once per stored policy and merchant status in a batch (`views`):
    the view is immutable, so the batch's payments of one merchant share it."""
    if views is None:
        return policy_view(stored, status)
    key = (id(stored), status)
    view = views.get(key)
    if view is None:
        view = views[key] = policy_view(stored, status)
    return view


async def load_contexts(
    session: AsyncSession,
    payment_ids: Sequence[uuid.UUID],
    *,
    now: datetime,
    lock: bool = False,
    attempts: bool = True,
) -> dict[uuid.UUID, PaymentContext]:
    """Payments with their ledgers: three queries whatever the batch size.

    Card history follows each of the payment's credentials (`PaymentContext.card_keys`) by
    fingerprint at the merchant across expiries (a renewed card is the same credential to the
    network); customer history covers the last day. `attempts`: the attempts are read as the
    session's objects, and each payment's own are its `PaymentContext.attempts`, for a caller
    that reads or changes them; without, they are read as plain rows (cheaper: nothing to
    hydrate or track) and `PaymentContext.attempts` is empty.
    """
    if not payment_ids:
        return {}
    heads = await _heads(session, payment_ids, lock=lock)
    if not heads:
        return {}
    policies, index = await _policies_and_history(
        session, [h.payment for h in heads], now=now, objects=attempts
    )
    views: dict[tuple[int, MerchantStatus], RetryPolicyView] = {}
    return {
        h.payment.id: _context(h, index, policies.get(h.payment.merchant_id), attempts, views)
        for h in heads
    }


async def reread_history(
    session: AsyncSession, ctx: PaymentContext, *, now: datetime
) -> PaymentContext | None:
    """The context again after an event changed the payment's stored attempts: the history
    read again (one statement), the payment, its card, customer and policy as first loaded
    in this transaction (the payment row is the session's own, with its changes). None when
    the payment now names another card than it was loaded with: `load_contexts` then."""
    return (await reread_histories(session, [ctx], now=now))[0]


def _rereadable(ctx: PaymentContext) -> bool:
    head = ctx.head
    return head is not None and (head.card.id if head.card is not None else None) == (
        ctx.payment.card_id
    )


async def reread_histories(
    session: AsyncSession, contexts: Sequence[PaymentContext], *, now: datetime
) -> list[PaymentContext | None]:
    """`reread_history` for several payments' contexts, their histories read in one
    statement: each context as `reread_history` gives it alone (None where it gives None)."""
    usable = [ctx for ctx in contexts if _rereadable(ctx)]
    if not usable:
        return [None] * len(contexts)
    customer_since = now - CUSTOMER_LOOKBACK
    # Objects where any context holds its attempts as the session's objects (a superset of
    # what the others read).
    objects = any(ctx.attempts_loaded for ctx in usable)
    rows = await _history(
        session,
        [ctx.payment.id for ctx in usable],
        sorted({ctx.payment.customer_id for ctx in usable}),
        customer_since,
        objects=objects,
    )
    attempts = _Attempts.index(rows, customer_since)
    found: list[PaymentContext | None] = []
    for ctx in contexts:
        if ctx.head is None or not _rereadable(ctx):
            found.append(None)
            continue
        last_seq = ctx.next_seq - 1 if ctx.next_seq > 0 else None
        head = replace(ctx.head, last_seq=last_seq)
        found.append(_context(head, attempts, ctx.stored_policy, objects))
    return found


def _card_keys(
    payment: PaymentLike, card: CardKey | None, mine: Sequence[_Row]
) -> tuple[CardKey, ...]:
    """The credentials a retry of this payment may hit (`card`: its card's), in a stable
    order."""
    keys: set[CardKey] = set()
    if card is not None:
        keys.add(card)
    if payment.credential_fingerprint is not None:
        keys.add((payment.merchant_id, payment.credential_fingerprint))
    keys.update(key for r in mine for key in r.card_keys)
    return tuple(sorted(keys))


def _card_rows(
    mine: Sequence[_Row], keys: Sequence[CardKey], by_card: Mapping[CardKey, Sequence[_Row]]
) -> list[_Row]:
    """The payment's own attempts (whatever card they hit, known or not) and every attempt on
    its credentials, each once."""
    seen: dict[uuid.UUID, _Row] = {r.attempt.id: r for r in mine}
    for key in keys:
        for row in by_card.get(key, ()):
            seen.setdefault(row.attempt.id, row)
    return list(seen.values())


def _credentials(ids: sa.ColumnElement[Any]) -> sa.CTE:
    """The payments' credentials (merchant, fingerprint): their cards, the cards that replaced
    them and the cards their attempts were made on."""
    key_parts: list[Any] = [
        select(col(CardCredential.merchant_id), col(CardCredential.fingerprint))
        .join(Payment, col(Payment.card_id) == col(CardCredential.id))
        .where(col(Payment.id) == ids),
        select(col(Payment.merchant_id), col(Payment.credential_fingerprint)).where(
            col(Payment.id) == ids, col(Payment.credential_fingerprint).is_not(None)
        ),
        select(col(CardCredential.merchant_id), col(CardCredential.fingerprint))
        .join(PaymentAttempt, col(PaymentAttempt.card_id) == col(CardCredential.id))
        .where(col(PaymentAttempt.payment_id) == ids),
    ]
    return union(*key_parts).cte("keys")


def _probe(query: Any, name: str) -> Any:
    """A lateral subquery the planner runs as it is written, once per outer row (`OFFSET 0`
    keeps it from being pulled up into a join): an index probe per row, whatever the plan
    cached for the statement guesses about the arrays bound to it."""
    return query.offset(sa.literal_column("0")).lateral(name)


def _attempt_ids(
    ids: sa.ColumnElement[Any],
    customers: sa.ColumnElement[Any],
    customer_since: sa.ColumnElement[datetime],
) -> sa.Subquery:
    """The ids of the payments' attempts, of attempts counted against their credentials, and
    of their customers' attempts since `customer_since`. An attempt counts against the card
    it was made on; when that is unknown (in flight, or not shown by the processor), against
    its payment's card and the card that replaced it.

    Every part walks from the few credentials to their rows through indexes: a generic plan
    estimates the arrays at ten elements, and once scanned every card, or every attempt whose
    card is unknown (every attempt in flight), for each payment it read."""
    keys = _credentials(ids)
    card = _probe(
        select(col(CardCredential.id)).where(
            col(CardCredential.merchant_id) == keys.c.merchant_id,
            col(CardCredential.fingerprint) == keys.c.fingerprint,
        ),
        "card",
    )
    cards = select(card.c.id).select_from(keys).join(card, sa.true()).cte("cards")
    on_card = _probe(
        select(col(PaymentAttempt.id)).where(col(PaymentAttempt.card_id) == cards.c.id),
        "on_card",
    )
    card_payment = _probe(
        select(col(Payment.id)).where(col(Payment.card_id) == cards.c.id), "card_payment"
    )
    card_unknown = _probe(
        select(col(PaymentAttempt.id)).where(
            col(PaymentAttempt.payment_id) == card_payment.c.id,
            col(PaymentAttempt.card_id).is_(None),
        ),
        "card_unknown",
    )
    replaced = _probe(
        select(col(Payment.id)).where(
            col(Payment.merchant_id) == keys.c.merchant_id,
            col(Payment.credential_fingerprint) == keys.c.fingerprint,
        ),
        "replaced",
    )
    replaced_unknown = _probe(
        select(col(PaymentAttempt.id)).where(
            col(PaymentAttempt.payment_id) == replaced.c.id,
            col(PaymentAttempt.card_id).is_(None),
        ),
        "replaced_unknown",
    )
    return union(
        select(col(PaymentAttempt.id)).where(col(PaymentAttempt.payment_id) == ids),
        select(on_card.c.id).select_from(cards).join(on_card, sa.true()),
        select(card_unknown.c.id)
        .select_from(cards)
        .join(card_payment, sa.true())
        .join(card_unknown, sa.true()),
        select(replaced_unknown.c.id)
        .select_from(keys)
        .join(replaced, sa.true())
        .join(replaced_unknown, sa.true()),
        select(col(PaymentAttempt.id))
        .join(Payment, col(Payment.id) == col(PaymentAttempt.payment_id))
        .where(
            col(Payment.customer_id) == customers,
            col(PaymentAttempt.attempted_at) >= customer_since,
        ),
    ).subquery()


# The attempt's columns `StoredAttempt` holds, in its field order.
_ATTEMPT_COLUMNS = (
    col(PaymentAttempt.id),
    col(PaymentAttempt.payment_id),
    col(PaymentAttempt.number),
    col(PaymentAttempt.attempted_at),
    col(PaymentAttempt.outcome),
    col(PaymentAttempt.actor),
    col(PaymentAttempt.decline_category),
    col(PaymentAttempt.decline_retryable),
    col(PaymentAttempt.decline_advice),
    col(PaymentAttempt.not_before),
    col(PaymentAttempt.decline_network_code),
    col(PaymentAttempt.decline_network_advice_code),
    col(PaymentAttempt.card_id),
)
_WIDTH = len(_ATTEMPT_COLUMNS)


def _row(found: Sequence[Any], objects: bool) -> _Row:
    """One history row: the attempt (its object, or its columns), then its payment's columns
    (customer, merchant, the card that replaced its card, its first failure), then the
    merchant and fingerprint of the card it counts against."""
    attempt: PaymentAttempt | StoredAttempt
    if objects:
        attempt, rest = found[0], found[1:]
    else:
        attempt, rest = StoredAttempt(*found[:_WIDTH]), found[_WIDTH:]
    (
        customer_id,
        merchant_id,
        replacement,
        first_failed_at,
        category,
        retryable,
        advice,
        network_code,
        network_advice,
        card_merchant,
        fingerprint,
    ) = rest
    keys: list[CardKey] = []
    if card_merchant is not None and fingerprint is not None:
        keys.append((card_merchant, fingerprint))
    if attempt.card_id is None and replacement is not None:
        keys.append((merchant_id, replacement))
    first = None
    if attempt.number == 1 and attempt.outcome is AttemptOutcome.DECLINED:
        first = DeclineView(
            category=category,
            retryable=retryable,
            advice=advice,
            declined_at=first_failed_at,
            network_decline_code=network_code,
            network_advice_code=network_advice,
        )
    return _Row(attempt, customer_id, tuple(keys), first)


@cache
def _history_statement(objects: bool) -> Any:
    attempt_ids = _attempt_ids(sa.any_(_IDS), sa.any_(_CUSTOMERS), _CUSTOMER_SINCE)
    attempt: tuple[Any, ...] = (PaymentAttempt,) if objects else _ATTEMPT_COLUMNS
    # The attempts by id from one array: probed through the key whatever their number, where a
    # join with the union may hash every attempt.
    found = sa.cast(
        sa.select(sa.func.array_agg(attempt_ids.c.id)).scalar_subquery(),
        postgresql.ARRAY(sa.Uuid),
    )
    return (
        sa.select(
            *attempt,
            col(Payment.customer_id),
            col(Payment.merchant_id),
            col(Payment.credential_fingerprint),
            col(Payment.first_failed_at),
            col(Payment.decline_category),
            col(Payment.decline_retryable),
            col(Payment.decline_advice),
            col(Payment.decline_network_code),
            col(Payment.decline_network_advice_code),
            col(CardCredential.merchant_id),
            col(CardCredential.fingerprint),
        )
        .where(col(PaymentAttempt.id) == sa.any_(found))
        .join(Payment, col(Payment.id) == col(PaymentAttempt.payment_id))
        .outerjoin(
            CardCredential,
            col(CardCredential.id)
            == sa.func.coalesce(col(PaymentAttempt.card_id), col(Payment.card_id)),
        )
    )


async def _history(
    session: AsyncSession,
    payment_ids: Sequence[uuid.UUID],
    customer_ids: Sequence[uuid.UUID],
    customer_since: datetime,
    *,
    objects: bool,
) -> list[_Row]:
    """Every attempt of these payments, on their credentials and (recently) of their customers.

    One statement (`_attempt_ids` says which attempts); the attempts as the session's objects
    or (`objects` False) as plain rows, the session neither hydrating nor tracking them. Each
    part starts from an index probe, so the planner never scans every attempt.
    """
    params = {
        "payment_ids": list(payment_ids),
        "customer_ids": list(customer_ids),
        "customer_since": customer_since,
    }
    result = await session.execute(_history_statement(objects), params)
    return [_row(found, objects) for found in result.all()]


def in_flight(ctx: PaymentContext) -> PaymentAttempt | None:
    """The payment's portal attempt whose outcome is not known yet, if any."""
    for a in ctx.attempts:
        if a.actor is Actor.PORTAL and a.outcome is AttemptOutcome.IN_FLIGHT:
            return a
    return None


def settled_context(
    payment: Payment,
    card: CardCredential | None,
    *,
    last_seq: int | None,
    attempts: Sequence[PaymentAttempt],
) -> PaymentContext:
    """A payment as recording a charge that succeeded needs it, from one locked read.

    Money moved: the state machine recovers the payment (or raises a duplicate-charge alert)
    whatever its history and policy say, so `transition` reads neither for `AttemptSucceeded`
    and neither is loaded. The ledger holds what the payment row itself says; the policy is
    the engine's default reading. Use it for no other event.
    """
    ledger = PaymentLedger(
        network=normalize_network(card.brand) if card is not None else None,
        first_failed_at=payment.first_failed_at,
        last_decline=_first_decline_of(payment),
        credential_since=payment.credential_since,
    )
    return PaymentContext(
        payment=payment,
        network=ledger.network,
        funding=card.funding if card is not None else CardFunding.UNKNOWN,
        card_keys=_card_keys(
            payment, (card.merchant_id, card.fingerprint) if card is not None else None, ()
        ),
        customer_ref="",
        customer_timezone=None,
        policy=RetryPolicyView(),
        ledger=ledger,
        issuer_country=card.issuer_country if card is not None else None,
        card_identity=(
            (card.fingerprint, card.exp_month, card.exp_year) if card is not None else None
        ),
        attempts=list(attempts),
        next_seq=0 if last_seq is None else last_seq + 1,
        policy_version=payment.policy_version,
    )
