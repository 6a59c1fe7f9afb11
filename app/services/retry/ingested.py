"""What ingestion reads about payments in recovery, carried through the state machine per batch."""

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from app.bulk import any_array, unnest
from app.db import UnitOfWork
from app.declines import Decline
from app.enums import Actor, Advice, AttemptOutcome, PaymentState
from app.models.customer import CardCredential
from app.models.payment import Payment, PaymentAttempt
from app.retry.events import (
    CancelSubscriptionRetries,
    CredentialUpdated,
    Event,
    PaidElsewhere,
    RequestDecision,
)
from app.retry.state_machine import transition
from app.services.retry.engine import apply_transition, cancel_subscription
from app.services.retry.ledger import attempt_decline, load_contexts

P = PaymentState
# A new card matters to open payments, and to a hard "never" on the old card it may lift.
_CREDENTIAL_STATES = (P.PENDING, P.SCHEDULED, P.RETRYING, P.NOT_RETRYABLE)
# Advice that binds a decline to the card it was made on.
_CARD_BOUND = (Advice.NEVER, Advice.UPDATE_CREDENTIALS)


@dataclass(frozen=True, slots=True)
class CardSeen:
    """One charge of a known customer on one card, as ingestion read it; the card by its
    credential identity (fingerprint, expiry month, expiry year), stored or not."""

    customer_id: uuid.UUID
    card: tuple[str, int, int]
    invoice_ref: str | None
    subscription_ref: str | None
    at: datetime
    decline: Decline | None  # None: the charge succeeded

    @property
    def card_works(self) -> bool:
        """Whether this charge shows a usable card: approved, or declined but retryable.

        A new card that was itself hard-declined lifts nothing: the payment would be reopened
        only to be refused on that card.
        """
        d = self.decline
        return d is None or (d.retryable and d.advice is not Advice.NEVER)


@dataclass
class IngestedOutcome:
    """What the batch changed through the state machine."""

    recovered: int = 0
    credentials_updated: int = 0
    transitions: int = 0


async def _new_credentials(uow: UnitOfWork, seen: Sequence[CardSeen]) -> dict[uuid.UUID, CardSeen]:
    """Per payment of these customers, the latest charge of its own subscription (or invoice)
    on another card after its failure.

    Left out: payments not decided yet, such as those this very batch opened (their timeline
    starts with the first decision, which reads their history as it is); a NOT_RETRYABLE
    payment seen again on its own invoice (ingestion opens a new payment for a failure on a
    closed invoice, and a success pays it: reopening it would recover the invoice twice); a
    success on the payment's own invoice (that is a recovery, not a card change).
    """
    by_customer: dict[uuid.UUID, list[CardSeen]] = defaultdict(list)
    for s in seen:
        by_customer[s.customer_id].append(s)
    if not by_customer:
        return {}
    customers = unnest(sorted(by_customer), sa.Uuid)
    rows = await uow.session.execute(
        sa.select(
            col(Payment.id),
            col(Payment.customer_id),
            col(CardCredential.fingerprint),
            col(CardCredential.exp_month),
            col(CardCredential.exp_year),
            col(Payment.invoice_ref),
            col(Payment.subscription_ref),
            col(Payment.state),
            col(Payment.first_failed_at),
            col(Payment.credential_since),
        )
        .select_from(customers)
        .join(Payment, col(Payment.customer_id) == customers.c.value)
        .join(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .where(
            col(Payment.state).in_(_CREDENTIAL_STATES),
            ~((col(Payment.state) == P.PENDING) & col(Payment.needs_decision)),
            col(Payment.card_id).is_not(None),
        )
    )
    candidates = rows.all()
    refused = await _cards_refused(uow, [row[0] for row in candidates])
    found: dict[uuid.UUID, CardSeen] = {}
    for row in candidates:
        (pid, customer_id, fingerprint, month, year, invoice_ref, subscription_ref) = row[:7]
        state, first_failed_at, since = row[7:]
        after = max(first_failed_at, since) if since is not None else first_failed_at
        for s in by_customer[customer_id]:
            # Not a new credential: the failed card, or a card this payment was hard-declined
            # on before (seeing it work elsewhere must not lift a "never" bound to it). A card
            # used with soft declines only, or renewed with a new expiry, is one.
            old = s.card == (fingerprint, month, year) or any(
                card == s.card and at < s.at for card, at in refused.get(pid, ())
            )
            if old or s.at <= after or not s.card_works:
                continue
            own_invoice = s.invoice_ref is not None and s.invoice_ref == invoice_ref
            if own_invoice and (state is P.NOT_RETRYABLE or s.decline is None):
                continue
            # Only the payment's own subscription (or invoice) moving to the card says the
            # credential behind it was replaced. A charge for another subscription on another
            # card does not: the old card may still be the customer's default, which a retry
            # would charge despite its "never".
            same_subscription = subscription_ref is not None and (
                s.subscription_ref == subscription_ref
            )
            if not (own_invoice or same_subscription):
                continue
            best = found.get(pid)
            if best is None or s.at > best.at:
                found[pid] = s
    return found


async def _cards_refused(
    uow: UnitOfWork, payment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[tuple[str, int, int], datetime]]]:
    """The cards (by identity) each payment's attempts were hard-declined on, and when: a
    decline that binds the card (not retryable, "never", or "update the card details")."""
    if not payment_ids:
        return {}
    rows = await uow.session.execute(
        sa.select(
            PaymentAttempt,
            col(CardCredential.fingerprint),
            col(CardCredential.exp_month),
            col(CardCredential.exp_year),
        )
        .join(CardCredential, col(CardCredential.id) == col(PaymentAttempt.card_id))
        .where(
            col(PaymentAttempt.payment_id) == any_array(sorted(set(payment_ids)), sa.Uuid),
            col(PaymentAttempt.outcome) == AttemptOutcome.DECLINED,
        )
    )
    refused: dict[uuid.UUID, list[tuple[tuple[str, int, int], datetime]]] = defaultdict(list)
    for attempt, fingerprint, month, year in rows.all():
        decline = attempt_decline(attempt, None)
        if decline is not None and (not decline.retryable or decline.advice in _CARD_BOUND):
            refused[attempt.payment_id].append(((fingerprint, month, year), attempt.attempted_at))
    return refused


async def apply_ingested_events(
    uow: UnitOfWork,
    *,
    paid: Sequence[Mapping[str, Any]],
    cards_seen: Sequence[CardSeen],
    now: datetime,
) -> IngestedOutcome:
    """Apply a normalization batch's facts to its payments through the state machine.

    `paid` holds one {"id", "recovered_at", "actor"} per success read on a payment in
    recovery: it was paid other than by a charge the portal has in flight (PaidElsewhere, by
    the charge's actor as its record tells, docs/actors.md).
    `cards_seen` are the batch's charges on identifiable cards: a later charge of the same customer
    on another card means the credential was updated (CredentialUpdated), which may lift a hard
    "never" bound to the old card. The payments are locked and loaded in a fixed number of
    queries; the state machine runs in memory; the payment updates, timeline rows and outbox
    events are written by one flush. A payment already RECOVERED or CANCELED absorbs, so a
    success read twice is counted once.
    """
    events: dict[uuid.UUID, list[tuple[datetime, Event]]] = defaultdict(list)
    for row in paid:
        events[row["id"]].append((row["recovered_at"], PaidElsewhere(actor=Actor(row["actor"]))))
    replaced_by: dict[uuid.UUID, str] = {}
    for pid, s in (await _new_credentials(uow, cards_seen)).items():
        events[pid].append((s.at, CredentialUpdated(at=s.at, actor=Actor.PROCESSOR)))
        replaced_by[pid] = s.card[0]
    out = IngestedOutcome()
    if not events:
        return out
    ids = sorted(events)  # load_contexts locks them in this (id) order
    contexts = await load_contexts(uow.session, ids, now=now, lock=True)
    cancels: list[tuple[Payment, str]] = []
    for pid in ids:
        ctx = contexts.get(pid)
        if ctx is None:
            continue
        payment = ctx.payment
        for at, event in sorted(events[pid], key=lambda e: e[0]):
            before = payment.state
            if isinstance(event, CredentialUpdated) and before in _CREDENTIAL_STATES:
                payment.credential_since = event.at
                # A retry now charges the new card: its attempts count toward the caps too.
                payment.credential_fingerprint = replaced_by[pid]
            tr = transition(before, event, policy=ctx.policy, ledger=ctx.ledger, now=now)
            by = event.actor if isinstance(event, PaidElsewhere) else Actor.PROCESSOR
            apply_transition(uow, ctx, tr, now=now, recovered_by=by)
            if isinstance(event, CredentialUpdated):
                ctx.ledger = replace(ctx.ledger, credential_since=event.at)
            if not tr.changed:
                continue
            out.transitions += 1
            if tr.new_state is P.RECOVERED and before is not P.RECOVERED:
                payment.recovered_at = at  # when the money arrived, not when it was read
                out.recovered += 1
            if isinstance(event, CredentialUpdated):
                out.credentials_updated += 1
            for action in tr.actions:
                open_ = payment.state in (P.PENDING, P.SCHEDULED)
                if isinstance(action, RequestDecision) and open_:
                    # Decided by the decide cron, which runs the merchant's scheduler.
                    payment.needs_decision = True
                elif isinstance(action, CancelSubscriptionRetries):
                    cancels.append((payment, action.reason))
    await uow.session.flush()
    for payment, reason in cancels:
        await cancel_subscription(uow, payment, reason, now=now)
    return out
