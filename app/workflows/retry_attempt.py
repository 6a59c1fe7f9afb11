"""Running one portal attempt: pre-flight, charge by idempotency key, record; crash-safe."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus

import httpx
import sqlalchemy as sa
from sqlalchemy import update
from sqlmodel import col, select

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database, UnitOfWork
from app.declines import Decline
from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    AttemptStatus,
    ConnectionStatus,
    DeclineCategory,
    PaymentState,
)
from app.models.customer import Customer
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment, PaymentAttempt, decline_columns
from app.processors.adapters import adapter_for
from app.processors.base import (
    ChargeResult,
    PermanentProcessorError,
    ProcessorAdapter,
    RawItem,
    TransientProcessorError,
    body_of,
)
from app.processors.normalize.dispatch import normalize_payload
from app.processors.normalize.records import NORMALIZER_VERSION, CanonicalRecord, NormalizeError
from app.retry.events import (
    AttemptAbandoned,
    AttemptDeclined,
    AttemptSucceeded,
    DecisionMade,
    Event,
    InvoiceVoided,
    PaidElsewhere,
)
from app.retry.rules import DeclineView
from app.retry.schedule import Scheduler
from app.services.connection import connection_info
from app.services.ingestion import card_of_charge, land
from app.services.retry.engine import run_event
from app.services.retry.ledger import PaymentContext, load_contexts
from app.tenancy import SYSTEM_SCOPE

logger = logging.getLogger(__name__)

# A claimed payment with no recorded outcome after this long is reconciled by its key.
STUCK_AFTER = timedelta(minutes=10)
REFUSED_BACKOFF = timedelta(hours=1)
# A decline we cannot read is hard: retrying blind could break a never-rule.
_UNREADABLE = Decline(DeclineCategory.OTHER, False, Advice.NEVER, None, None, None, None)

AdapterFactory = Callable[[ProcessorConnection], ProcessorAdapter]


@dataclass(frozen=True)
class AttemptResult:
    """What one run of an attempt did."""

    status: AttemptStatus
    state: PaymentState | None = None
    charge_id: str | None = None
    detail: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class _Snapshot:
    payment_id: uuid.UUID
    state: PaymentState
    processor_payment_id: str
    amount_minor: int
    currency: str
    customer_ref: str
    key: str
    sent: bool
    connection: ProcessorConnection


def default_adapters(http: httpx.AsyncClient, box: CredentialBox) -> AdapterFactory:
    def make(connection: ProcessorConnection) -> ProcessorAdapter:
        return adapter_for(connection_info(connection, box), http)

    return make


async def _locked(
    uow: UnitOfWork, payment_id: uuid.UUID, number: int
) -> tuple[Payment | None, PaymentAttempt | None]:
    """The payment, locked, and its portal attempt `number`, in one round trip."""
    row = (
        await uow.session.execute(
            select(Payment, PaymentAttempt)
            .outerjoin(
                PaymentAttempt,
                (col(PaymentAttempt.payment_id) == col(Payment.id))
                & (col(PaymentAttempt.portal_number) == number),
            )
            .where(col(Payment.id) == payment_id)
            .with_for_update(of=Payment)
            .execution_options(populate_existing=True)
        )
    ).one_or_none()
    if row is None:
        return None, None
    return row[0], row[1]


async def _snapshot(db: Database, payment_id: uuid.UUID, number: int) -> _Snapshot | AttemptResult:
    """What the attempt needs, read in one statement without locks: every decision taken on
    it (mark sent, record) is checked again under the payment's lock."""
    async with db.session(SYSTEM_SCOPE) as session:
        row = (
            await session.execute(
                sa.select(
                    col(Payment.state),
                    col(Payment.processor_payment_id),
                    col(Payment.amount_minor),
                    col(Payment.currency),
                    col(PaymentAttempt.outcome),
                    col(PaymentAttempt.idempotency_key),
                    col(PaymentAttempt.sent_at),
                    col(Customer.external_ref),
                    ProcessorConnection,
                )
                .join(Customer, col(Customer.id) == col(Payment.customer_id))
                .outerjoin(
                    PaymentAttempt,
                    (col(PaymentAttempt.payment_id) == col(Payment.id))
                    & (col(PaymentAttempt.portal_number) == number),
                )
                .outerjoin(
                    ProcessorConnection,
                    col(ProcessorConnection.id) == col(Payment.connection_id),
                )
                .where(col(Payment.id) == payment_id)
            )
        ).one_or_none()
    # Closing the session detaches the connection row with its attributes loaded.
    if row is None:
        return AttemptResult(AttemptStatus.SKIPPED, None)
    state, charge_id, amount, currency, outcome, key, sent_at, customer_ref, connection = row
    if outcome is not AttemptOutcome.IN_FLIGHT:
        return AttemptResult(AttemptStatus.SKIPPED, state)
    if connection is None:
        return AttemptResult(AttemptStatus.SKIPPED, state, detail="no processor connection")
    return _Snapshot(
        payment_id=payment_id,
        state=state,
        processor_payment_id=charge_id,
        amount_minor=amount,
        currency=currency,
        customer_ref=customer_ref,
        key=key or "",
        sent=sent_at is not None,
        connection=connection,
    )


async def _mark_sent(db: Database, snap: _Snapshot, number: int, clock: Clock) -> bool:
    """Commit `sent_at` in one statement while the payment, locked, is still RETRYING and the
    attempt still unsent and in flight; False when any of that no longer holds."""
    locked = (
        select(col(Payment.id))
        .where(col(Payment.id) == snap.payment_id, col(Payment.state) == PaymentState.RETRYING)
        .with_for_update()
        .cte("locked_payment")
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        marked = (
            await uow.session.execute(
                update(PaymentAttempt)
                .where(
                    col(PaymentAttempt.payment_id).in_(select(locked.c.id)),
                    col(PaymentAttempt.portal_number) == number,
                    col(PaymentAttempt.outcome) == AttemptOutcome.IN_FLIGHT,
                    col(PaymentAttempt.sent_at).is_(None),
                )
                .values(sent_at=clock.now())
                .returning(col(PaymentAttempt.id))
                .execution_options(synchronize_session=False)
            )
        ).first()
        if marked is None:
            return False
        await uow.commit()
        return True


async def _preflight(adapter: ProcessorAdapter, snap: _Snapshot) -> Event | None:
    """What the processor says about the original charge: None means go ahead.

    Where the processor cannot tell (no fetch API, an unreadable answer), the charge goes
    ahead: the invoice is presumed open, as it was when the payment was claimed.
    """
    try:
        item = await adapter.fetch(snap.processor_payment_id)
    except (PermanentProcessorError, TransientProcessorError) as exc:
        logger.info(
            "pre-flight skipped", extra={"payment_id": str(snap.payment_id), "why": str(exc)}
        )
        return None
    record = _first_record(snap.connection, item)
    if record is None:
        return None
    if record.status == "succeeded":
        return PaidElsewhere(actor=Actor.PROCESSOR)
    if record.amount_minor != snap.amount_minor or record.currency != snap.currency:
        return InvoiceVoided()
    return None


def _first_record(connection: ProcessorConnection, item: RawItem) -> CanonicalRecord | None:
    try:
        results = normalize_payload(connection.kind, body_of(item.payload))
    except NormalizeError:
        return None
    for r in results:
        if isinstance(r, CanonicalRecord):
            return r
    return None


async def _charged_card(
    uow: UnitOfWork, ctx: PaymentContext, records: list[CanonicalRecord], now: datetime
) -> uuid.UUID | None:
    """The credential the processor charged, as its answer shows it (None: not shown, and the
    attempt counts against the payment's card)."""
    payment = ctx.payment
    known = None
    if ctx.card_identity is not None and payment.card_id is not None:
        known = (ctx.card_identity, payment.card_id)
    for record in records:
        if record.card is not None:
            return await card_of_charge(
                uow, payment.merchant_id, payment.customer_id, record, known=known, now=now
            )
    return None


async def execute_attempt(
    db: Database,
    *,
    payment_id: uuid.UUID,
    attempt_number: int,
    adapters: AdapterFactory,
    clock: Clock,
    scheduler: Scheduler | None = None,
) -> AttemptResult:
    """Run (or reconcile) the portal's attempt `attempt_number` on one payment.

    The attempt row exists as in flight before anything is sent (the claim commits it), and
    `sent_at` is committed just before the charge request leaves. A run that finds it sent
    re-sends the same idempotency key, which the processor answers with the original result:
    a crash between charging and recording never causes a second charge.
    """
    snap = await _snapshot(db, payment_id, attempt_number)
    if isinstance(snap, AttemptResult):
        return snap
    adapter = adapters(snap.connection)
    if not snap.sent:
        if snap.state is not PaymentState.RETRYING:
            return await _drop_unsent(db, snap, attempt_number, clock, "payment no longer retrying")
        stop = await _preflight(adapter, snap)
        if stop is not None:
            return await _prevent(db, snap, attempt_number, stop, clock, scheduler)
        if not await _mark_sent(db, snap, attempt_number, clock):
            settled = await _settle_unmarked(db, snap, attempt_number, clock)
            if settled is not None:
                return settled
    return await _charge(db, snap, adapter, attempt_number, clock, scheduler)


async def _settle_unmarked(
    db: Database, snap: _Snapshot, number: int, clock: Clock
) -> AttemptResult | None:
    """Marking the attempt sent found it changed since the snapshot: recorded or gone (skip),
    the payment no longer retrying (drop the unsent attempt), or marked by another run
    (None: charge, with the same key)."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state if payment else None)
        if attempt.sent_at is not None:
            return None
        if payment.state is PaymentState.RETRYING:
            attempt.sent_at = clock.now()
            await uow.commit()
            return None
    return await _drop_unsent(db, snap, number, clock, "payment no longer retrying")


async def _charge(
    db: Database,
    snap: _Snapshot,
    adapter: ProcessorAdapter,
    attempt_number: int,
    clock: Clock,
    scheduler: Scheduler | None,
) -> AttemptResult:
    """Send the charge with the attempt's key (first time or replay) and record the answer."""
    try:
        result = await adapter.charge(
            retry_of=snap.processor_payment_id,
            amount_minor=snap.amount_minor,
            currency=snap.currency,
            customer_ref=snap.customer_ref,
            idempotency_key=snap.key,
        )
    except TransientProcessorError as exc:
        # The charge may or may not have happened: only the same key may find out.
        return AttemptResult(
            AttemptStatus.PENDING, snap.state, detail=str(exc), retry_after=exc.retry_after
        )
    except PermanentProcessorError as exc:
        if exc.status == HTTPStatus.CONFLICT:
            # A conflict on an idempotency key: another request with it is still in flight.
            return AttemptResult(AttemptStatus.PENDING, snap.state, detail=str(exc))
        return await _refused(db, snap, attempt_number, exc, clock, scheduler)
    # Each answer is normalized once: its decline and its card are read from the records.
    items = [result.item]
    answer = _first_record(snap.connection, result.item)
    records = [answer] if answer is not None else []
    decline: Decline | None = None
    if not result.approved:
        decline = answer.decline if answer is not None else None
        if decline is None:
            # Some processors answer a decline with the charge id only: read the charge.
            try:
                fetched = await adapter.fetch(result.processor_payment_id)
            except TransientProcessorError as exc:
                # Replaying the key later gives the same answer; nothing is lost by waiting.
                return AttemptResult(AttemptStatus.PENDING, snap.state, detail=str(exc))
            except PermanentProcessorError:
                fetched = None
            if fetched is not None:
                items.append(fetched)
                read = _first_record(snap.connection, fetched)
                if read is not None:
                    records.append(read)
                    decline = read.decline
    return await _record(
        db, snap, attempt_number, result, decline, items, records, clock, scheduler
    )


async def _drop_unsent(
    db: Database, snap: _Snapshot, number: int, clock: Clock, why: str
) -> AttemptResult:
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state if payment else None)
        if attempt.sent_at is not None:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state, detail="sent meanwhile")
        await uow.session.delete(attempt)
        await uow.commit()
        logger.info(
            "unsent attempt dropped", extra={"payment_id": str(snap.payment_id), "why": why}
        )
        return AttemptResult(AttemptStatus.ABANDONED, payment.state, detail=why)


async def _prevent(
    db: Database,
    snap: _Snapshot,
    number: int,
    event: Event,
    clock: Clock,
    scheduler: Scheduler | None,
) -> AttemptResult:
    """Pre-flight found nothing to charge: drop the unsent attempt and end the payment."""
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state if payment else None)
        if attempt.sent_at is not None:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state, detail="sent meanwhile")
        await uow.session.delete(attempt)
        await uow.session.flush()
        ctx = (await load_contexts(uow.session, [snap.payment_id], now=now))[snap.payment_id]
        label = "invoice_changed" if isinstance(event, InvoiceVoided) else None
        await run_event(uow, ctx, event, now=now, scheduler=scheduler, event_label=label)
        await uow.commit()
        return AttemptResult(AttemptStatus.PREVENTED, ctx.payment.state, detail=event.name)


async def _refused(
    db: Database,
    snap: _Snapshot,
    number: int,
    refusal: PermanentProcessorError,
    clock: Clock,
    scheduler: Scheduler | None,
) -> AttemptResult:
    """The processor refused the request itself, so nothing was charged: the attempt is
    abandoned and the next one waits an hour (a refusal repeats; hammering helps nobody).
    Refused credentials stop the whole connection until a person looks at it."""
    now = clock.now()
    why = str(refusal)
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state if payment else None)
        ctx = (await load_contexts(uow.session, [snap.payment_id], now=now))[snap.payment_id]
        if payment.state is PaymentState.RETRYING:
            abandoned = AttemptAbandoned(f"processor refused: {why}"[:200])
            await run_event(uow, ctx, abandoned, now=now, scheduler=scheduler)
        await uow.session.delete(attempt)
        await uow.session.flush()
        if payment.state is PaymentState.SCHEDULED:
            ctx = (await load_contexts(uow.session, [snap.payment_id], now=now))[snap.payment_id]
            later = DecisionMade(
                chosen_at=now + REFUSED_BACKOFF,
                reason="the processor refused the last request; trying again in an hour",
                strategy=ctx.policy.strategy,
            )
            await run_event(uow, ctx, later, now=now, scheduler=scheduler)
        if refusal.status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            await uow.session.execute(
                update(ProcessorConnection)
                .where(col(ProcessorConnection.id) == snap.connection.id)
                .values(
                    status=ConnectionStatus.ERROR,
                    last_error=f"retry charge refused: {why}"[:2000],
                )
            )
        await uow.commit()
        logger.error("charge refused", extra={"payment_id": str(snap.payment_id), "why": why})
        return AttemptResult(AttemptStatus.ABANDONED, ctx.payment.state, detail=why)


async def _record(
    db: Database,
    snap: _Snapshot,
    number: int,
    result: ChargeResult,
    decline: Decline | None,
    items: list[RawItem],
    records: list[CanonicalRecord],
    clock: Clock,
    scheduler: Scheduler | None,
) -> AttemptResult:
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            # Another run recorded this very charge (same key, same answer).
            return AttemptResult(
                AttemptStatus.SKIPPED,
                payment.state if payment else None,
                result.processor_payment_id,
            )
        ctx = (await load_contexts(uow.session, [payment.id], now=now))[payment.id]
        # Ingestion may have read our own charge back before we recorded it: that row is this
        # attempt, not another payment of the invoice.
        echo = next(
            (
                a
                for a in ctx.attempts
                if a.processor_attempt_id == result.processor_payment_id and a.id != attempt.id
            ),
            None,
        )
        if echo is not None:
            await uow.session.delete(echo)
            await uow.session.flush()
            if result.approved and payment.state is PaymentState.RECOVERED:
                payment.recovered_by = Actor.PORTAL
            ctx = (await load_contexts(uow.session, [payment.id], now=now))[payment.id]
        event: Event
        if result.approved:
            event = AttemptSucceeded()
            attempt.outcome = AttemptOutcome.SUCCEEDED
        else:
            read = decline if decline is not None else _UNREADABLE
            view = DeclineView.from_decline(read, now)
            event = AttemptDeclined(view)
            attempt.outcome = AttemptOutcome.DECLINED
            attempt.sqlmodel_update(dict(decline_columns(read)))
            attempt.not_before = read.not_before
        attempt.processor_attempt_id = result.processor_payment_id[:255]
        attempt.card_id = await _charged_card(uow, ctx, records, now)
        # Applied here already: landed as normalized, so the normalizer need not read it again.
        raw_ids, _ = await land(uow, snap.connection, items, now=now, normalized=True)
        if raw_ids:
            attempt.raw_record_id = raw_ids[-1]
        attempt.normalizer_version = NORMALIZER_VERSION
        if echo is not None and result.approved and payment.state is PaymentState.RECOVERED:
            pass  # already recovered by the echo of this very charge: nothing more to say
        else:
            await run_event(uow, ctx, event, now=now, scheduler=scheduler)
        await uow.commit()
        return AttemptResult(AttemptStatus.RECORDED, payment.state, result.processor_payment_id)


async def reconcile_stuck(
    db: Database,
    *,
    adapters: AdapterFactory,
    clock: Clock,
    older_than: timedelta = STUCK_AFTER,
    limit: int = 100,
    scheduler: Scheduler | None = None,
) -> list[AttemptResult]:
    """Re-run attempts of payments stuck in RETRYING: the same key, so at most one charge.

    Only while the payment is RETRYING. An attempt still in flight on a payment that left
    RETRYING (recovered by ingestion while the attempt's job was lost) is never replayed: if its
    charge never reached the processor, the processor has not seen the key, and a replay would
    charge an invoice already paid. Such an attempt stays in flight for a person to settle."""
    cutoff = clock.now() - older_than
    async with db.uow(SYSTEM_SCOPE) as uow:
        rows = (
            await uow.session.execute(
                select(col(PaymentAttempt.payment_id), col(PaymentAttempt.portal_number))
                .join(Payment, col(Payment.id) == col(PaymentAttempt.payment_id))
                .where(
                    col(Payment.state) == PaymentState.RETRYING,
                    col(Payment.retrying_since) < cutoff,
                    col(PaymentAttempt.outcome) == AttemptOutcome.IN_FLIGHT,
                    col(PaymentAttempt.portal_number).is_not(None),
                )
                .order_by(col(Payment.retrying_since))
                .limit(limit)
            )
        ).all()
    results: list[AttemptResult] = []
    for pid, number in rows:
        if number is None:
            continue
        results.append(
            await execute_attempt(
                db,
                payment_id=pid,
                attempt_number=number,
                adapters=adapters,
                clock=clock,
                scheduler=scheduler,
            )
        )
    return results


__all__ = ["AttemptResult", "default_adapters", "execute_attempt", "reconcile_stuck"]
