"""Running one portal attempt: pre-flight, charge by idempotency key, record; crash-safe."""

import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cache
from http import HTTPStatus
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased
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
from app.models.customer import CardCredential, Customer
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment, PaymentAttempt, decline_columns
from app.models.retry import PaymentTransition
from app.processors.adapters import adapter_for
from app.processors.base import (
    BillingRefs,
    BillingState,
    ChargeResult,
    PermanentProcessorError,
    ProcessorAdapter,
    RawItem,
    StoredMethod,
    TransientProcessorError,
    body_of,
)
from app.processors.normalize.dispatch import normalize_payload
from app.processors.normalize.records import NORMALIZER_VERSION, CanonicalRecord, NormalizeError
from app.retry.events import (
    AttemptAbandoned,
    AttemptDeclined,
    AttemptSucceeded,
    CredentialUpdated,
    CustomerDeleted,
    DecisionMade,
    Event,
    ExternalAttemptDeclined,
    InvoiceVoided,
    PaidElsewhere,
    SubscriptionCanceled,
)
from app.retry.rules import DeclineView
from app.retry.schedule import Scheduler
from app.services.connection import connection_info
from app.services.ingestion import card_of_charge, land, land_groups
from app.services.retry.engine import run_event, run_events
from app.services.retry.ledger import PaymentContext, load_contexts, settled_context
from app.services.retry.writes import Writes
from app.tenancy import SYSTEM_SCOPE
from app.workflows.grouping import Grouper, PerLoop

logger = logging.getLogger(__name__)

# A claimed payment with no recorded outcome after this long is reconciled by its key.
STUCK_AFTER = timedelta(minutes=10)
REFUSED_BACKOFF = timedelta(hours=1)
# A pre-flight the processor does not answer defers the unsent attempt (the job runs it again);
# an attempt claimed longer ago than this is given back to the schedule instead, uncharged.
PREFLIGHT_GIVE_UP = timedelta(minutes=30)
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
class _Card:
    """The card a retry of the payment would hit until now: its latest attempt's, else the
    failed charge's."""

    fingerprint: str
    last4: str
    exp_month: int
    exp_year: int


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
    refs: BillingRefs
    retrying_since: datetime | None = None
    card: _Card | None = None
    # The payment method the attempt was sent on, when not the customer's default.
    method_ref: str | None = None
    # Whether ingestion has read the attempt's charge back (`_read_back`): the processor has
    # seen its key.
    read_back: bool = False


def default_adapters(http: httpx.AsyncClient, box: CredentialBox) -> AdapterFactory:
    def make(connection: ProcessorConnection) -> ProcessorAdapter:
        return adapter_for(connection_info(connection, box), http)

    return make


@cache
def _payment_and_attempt_statement() -> Any:
    return (
        select(Payment, PaymentAttempt)
        .outerjoin(
            PaymentAttempt,
            (col(PaymentAttempt.payment_id) == col(Payment.id))
            & (col(PaymentAttempt.portal_number) == _NUMBER),
        )
        .where(col(Payment.id) == _PAYMENT)
        .execution_options(populate_existing=True)
    )


async def _locked(
    uow: UnitOfWork, payment_id: uuid.UUID, number: int
) -> tuple[Payment | None, PaymentAttempt | None]:
    """The payment, locked, then with its portal attempt `number` read by a statement of its
    own after the lock: a locking statement that waited for another writer of the payment (one
    marking the attempt sent, say) would read the attempt as it was before that writer
    committed, and could drop an attempt about to be charged."""
    await uow.session.execute(_lock_statement(), {"b_payment": payment_id})
    params = {"b_payment": payment_id, "b_number": number}
    row = (await uow.session.execute(_payment_and_attempt_statement(), params)).one_or_none()
    if row is None:
        return None, None
    return row[0], row[1]


def _current_card_id() -> sa.ColumnElement[uuid.UUID | None]:
    """The card of the payment's latest attempt that shows one, else the payment's own."""
    earlier = aliased(PaymentAttempt)
    latest = (
        sa.select(col(earlier.card_id))
        .where(col(earlier.payment_id) == col(Payment.id), col(earlier.card_id).is_not(None))
        .order_by(col(earlier.number).desc())
        .limit(1)
        .correlate(Payment)
        .scalar_subquery()
    )
    return func.coalesce(latest, col(Payment.card_id))


# The statements an attempt runs are built once, their values bound at each execution:
# building and keying them for the compiled-statement cache costs more than running them.
_PAYMENT = sa.bindparam("b_payment", type_=sa.Uuid)
_NUMBER = sa.bindparam("b_number", type_=sa.SmallInteger)
_CHARGE = sa.bindparam("b_charge", type_=sa.String)


# Attempts read, or marked sent, in one statement at most; more wait for the next.
ATTEMPT_GROUP = 32
_IDS = sa.bindparam("b_ids", type_=postgresql.ARRAY(sa.Uuid))
_NUMBERS = sa.bindparam("b_numbers", type_=postgresql.ARRAY(sa.SmallInteger))


def _wanted() -> Any:
    """The (payment, portal attempt number) pairs a statement is run for."""
    return (
        sa.func.unnest(_IDS, _NUMBERS)
        .table_valued(sa.column("payment_id", sa.Uuid), sa.column("number", sa.SmallInteger))
        .render_derived(name="wanted")
    )


@cache
def _snapshot_statement() -> Any:
    card = aliased(CardCredential)
    wanted = _wanted()
    return (
        sa.select(
            wanted.c.payment_id,
            Payment,
            col(PaymentAttempt.outcome),
            col(PaymentAttempt.idempotency_key),
            col(PaymentAttempt.sent_at),
            col(PaymentAttempt.payment_method_ref),
            col(Customer.external_ref),
            ProcessorConnection,
            card,
            _read_back().label("read_back"),
        )
        .select_from(wanted)
        .join(Payment, col(Payment.id) == wanted.c.payment_id)
        .join(Customer, col(Customer.id) == col(Payment.customer_id))
        .outerjoin(
            PaymentAttempt,
            (col(PaymentAttempt.payment_id) == col(Payment.id))
            & (col(PaymentAttempt.portal_number) == wanted.c.number),
        )
        .outerjoin(
            ProcessorConnection,
            col(ProcessorConnection.id) == col(Payment.connection_id),
        )
        .outerjoin(card, col(card.id) == _current_card_id())
    )


@dataclass(frozen=True)
class _Wanted:
    """One attempt asked for by a run: its payment and portal number."""

    db: Database
    payment_id: uuid.UUID
    number: int


@dataclass(frozen=True)
class _Mark(_Wanted):
    """One attempt to mark sent, at its clock's time."""

    clock: Clock


async def _snapshots(wanted: Sequence[_Wanted]) -> list[_Snapshot | AttemptResult]:
    """What each attempt needs, read in one statement without locks: every decision taken on
    it (mark sent, record) is checked again under the payment's lock."""
    params = {"b_ids": [w.payment_id for w in wanted], "b_numbers": [w.number for w in wanted]}
    async with wanted[0].db.read(SYSTEM_SCOPE) as session:
        rows = {row[0]: row[1:] for row in await session.execute(_snapshot_statement(), params)}
    # Closing the session detaches the rows with their attributes loaded.
    return [_snapshot_of(w.payment_id, rows.get(w.payment_id)) for w in wanted]


def _snapshot_of(payment_id: uuid.UUID, row: Any) -> _Snapshot | AttemptResult:
    if row is None:
        return AttemptResult(AttemptStatus.SKIPPED, None)
    payment, outcome, key, sent_at, method_ref, customer_ref, connection, current, read_back = row
    if outcome is not AttemptOutcome.IN_FLIGHT:
        return AttemptResult(AttemptStatus.SKIPPED, payment.state)
    if connection is None:
        return AttemptResult(AttemptStatus.SKIPPED, payment.state, detail="no processor connection")
    return _Snapshot(
        payment_id=payment_id,
        state=payment.state,
        processor_payment_id=payment.processor_payment_id,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        customer_ref=customer_ref,
        key=key or "",
        sent=sent_at is not None,
        connection=connection,
        refs=BillingRefs(customer_ref, payment.invoice_ref, payment.subscription_ref),
        retrying_since=payment.retrying_since,
        card=None
        if current is None
        else _Card(current.fingerprint, current.last4, current.exp_month, current.exp_year),
        method_ref=method_ref,
        read_back=bool(read_back),
    )


async def _run_alone_on_failure(
    run: Callable[[Any], Awaitable[Sequence[Any]]], wanted: Sequence[Any], what: str
) -> list[Any]:
    """`run` over the whole group; should that fail, over each request alone, so a failure
    of one (or a deadlock with another transaction) reaches its own caller only."""
    if len(wanted) > 1:
        try:
            return list(await run(wanted))
        except Exception:
            logger.warning(
                f"{what} together failed; each alone", extra={"count": len(wanted)}, exc_info=True
            )
    alone: list[Any] = []
    for one in wanted:
        try:
            alone += await run([one])
        except Exception as exc:  # this request's caller gets it
            alone.append(exc)
    return alone


async def _snapshot_group(wanted: Sequence[_Wanted]) -> list[_Snapshot | AttemptResult]:
    return await _run_alone_on_failure(_snapshots, wanted, "reading attempts")


_readers: "PerLoop[_Wanted, _Snapshot | AttemptResult]" = PerLoop(
    lambda: Grouper(
        _snapshot_group,
        limit=ATTEMPT_GROUP,
        key=lambda w: id(w.db),
        distinct=lambda w: w.payment_id,
    )
)


async def _snapshot(db: Database, payment_id: uuid.UUID, number: int) -> _Snapshot | AttemptResult:
    """The attempt as `_snapshots` reads it, read with those other runs of this process are
    waiting for."""
    return await _readers().submit(_Wanted(db, payment_id, number))


@cache
def _mark_sent_statement() -> Any:
    # The payments locked in id order, so groups that share payments wait, not deadlock.
    locked = (
        select(col(Payment.id))
        .where(col(Payment.id) == sa.any_(_IDS), col(Payment.state) == PaymentState.RETRYING)
        .order_by(col(Payment.id))
        .with_for_update()
        .cte("locked_payment")
    )
    wanted = _wanted()
    return (
        update(PaymentAttempt)
        .where(
            col(PaymentAttempt.payment_id) == wanted.c.payment_id,
            col(PaymentAttempt.portal_number) == wanted.c.number,
            col(PaymentAttempt.payment_id).in_(select(locked.c.id)),
            col(PaymentAttempt.outcome) == AttemptOutcome.IN_FLIGHT,
            col(PaymentAttempt.sent_at).is_(None),
        )
        .values(sent_at=sa.bindparam("b_now", type_=sa.DateTime(timezone=True)))
        .returning(col(PaymentAttempt.payment_id))
        .execution_options(synchronize_session=False)
    )


async def _marks(wanted: Sequence[_Mark]) -> list[bool]:
    """Commit `sent_at` on each attempt, in one statement, while its payment, locked, is
    still RETRYING and the attempt still unsent and in flight (False for one where any of
    that no longer holds). The statement is its own transaction, committed before it
    returns: before any of the charges leaves."""
    first = wanted[0]
    params = {
        "b_ids": [w.payment_id for w in wanted],
        "b_numbers": [w.number for w in wanted],
        "b_now": first.clock.now(),
    }
    async with first.db.autocommit(SYSTEM_SCOPE) as session:
        marked = set((await session.execute(_mark_sent_statement(), params)).scalars())
    return [w.payment_id in marked for w in wanted]


async def _mark_group(wanted: Sequence[_Mark]) -> list[bool]:
    return await _run_alone_on_failure(_marks, wanted, "marking attempts sent")


_markers: PerLoop[_Mark, bool] = PerLoop(
    lambda: Grouper(
        _mark_group,
        limit=ATTEMPT_GROUP,
        key=lambda w: (id(w.db), id(w.clock)),
        distinct=lambda w: w.payment_id,
    )
)


async def _mark_sent(db: Database, snap: _Snapshot, number: int, clock: Clock) -> bool:
    """Mark the attempt sent (`_marks`) with those other runs of this process are marking."""
    return await _markers().submit(_Mark(db, snap.payment_id, number, clock))


@dataclass(frozen=True)
class _Preflight:
    """What pre-flight decided: stop (no charge, this event), defer (the processor did not
    answer), charge on another payment method, or (all None) charge as before."""

    stop: Event | None = None
    defer: TransientProcessorError | None = None
    method: StoredMethod | None = None


def _stop_event(state: BillingState) -> Event | None:
    detail = f"pre-flight: {state.detail}" if state.detail else "pre-flight"
    match state.stop:
        case None:
            return None
        case "invoice_paid":
            return PaidElsewhere(actor=Actor.PROCESSOR)
        case "invoice_voided":
            return InvoiceVoided(detail)
        case "subscription_canceled" | "subscription_ended":
            return SubscriptionCanceled(detail)
        case "customer_deleted":
            return CustomerDeleted(detail)


async def _preflight(adapter: ProcessorAdapter, snap: _Snapshot) -> _Preflight:
    """Ask the processor about the billing objects behind the payment (each adapter's
    `billing_state` says what its API can tell) just before charging.

    A processor that does not answer defers the attempt: charging blind could take money for
    a paid invoice or an ended subscription, while waiting costs minutes and loses nothing (the
    attempt stays in flight, unsent). A read the processor refuses (permissions, a malformed
    answer) tells nothing: the charge goes ahead as it would without a pre-flight."""
    try:
        state = await adapter.billing_state(snap.refs)
    except TransientProcessorError as exc:
        return _Preflight(defer=exc)
    except PermanentProcessorError as exc:
        logger.warning(
            "pre-flight refused; charging without it",
            extra={"payment_id": str(snap.payment_id), "why": str(exc)},
        )
        return _Preflight()
    stop = _stop_event(state)
    if stop is not None:
        return _Preflight(stop=stop)
    return _Preflight(method=_replacement(state, snap.card))


def _describes(method: StoredMethod) -> bool:
    return bool(method.fingerprint) or (
        method.last4 is not None and method.exp_month is not None and method.exp_year is not None
    )


def _same_card(method: StoredMethod, card: _Card) -> bool:
    """Whether a stored method is the card: by the processor's fingerprint where both show
    one, else by last four digits and expiry."""
    if method.fingerprint and not card.fingerprint.startswith("derived:"):
        expiry = (method.exp_month, method.exp_year)
        same_expiry = None in expiry or expiry == (card.exp_month, card.exp_year)
        return method.fingerprint == card.fingerprint and same_expiry
    return (method.last4, method.exp_month, method.exp_year) == (
        card.last4,
        card.exp_month,
        card.exp_year,
    )


def _replacement(state: BillingState, card: _Card | None) -> StoredMethod | None:
    """The payment method to charge instead of the customer's default request, when the
    processor's default is now another card than the one the payment failed on; for a
    processor that names no default (Adyen), the one card stored when the failed card no
    longer is."""
    if card is None:
        return None
    if state.method is not None:
        known = _describes(state.method)
        return state.method if known and not _same_card(state.method, card) else None
    cards = [m for m in state.methods if _describes(m)]
    if len(cards) == 1 and not _same_card(cards[0], card):
        return cards[0]
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
    if snap.sent and snap.state.is_terminal and not snap.read_back:
        # The payment ended (paid, canceled, exhausted) after the charge request may have left:
        # if it never reached the processor, the processor has not seen the key and a replay
        # would be a first charge of a payment settled otherwise. Left in flight for a person,
        # as the sweep leaves it; once ingestion reads the charge back, the sweep settles it.
        return AttemptResult(
            AttemptStatus.SKIPPED,
            snap.state,
            detail="sent, the payment ended and nothing was read back: not replayed",
        )
    adapter = adapters(snap.connection)
    if not snap.sent:
        if snap.state is not PaymentState.RETRYING:
            return await _drop_unsent(db, snap, attempt_number, clock, "payment no longer retrying")
        pre = await _preflight(adapter, snap)
        if pre.defer is not None:
            return await _deferred(db, snap, attempt_number, pre.defer, clock, scheduler)
        if pre.stop is not None:
            return await _prevent(db, snap, attempt_number, pre.stop, clock, scheduler)
        if pre.method is not None:
            moved = await _mark_sent_on(db, snap, attempt_number, pre.method, clock, scheduler)
            if isinstance(moved, AttemptResult):
                return moved
            snap = moved
        elif not await _mark_sent(db, snap, attempt_number, clock):
            settled = await _settle_unmarked(db, snap, attempt_number, clock)
            if settled is not None:
                return settled
            # Marked by another run: charge as it did, on the method it committed.
            fresh = await _snapshot(db, payment_id, attempt_number)
            if isinstance(fresh, AttemptResult):
                return fresh
            snap = fresh
    return await _charge(db, snap, adapter, attempt_number, clock, scheduler)


async def _deferred(
    db: Database,
    snap: _Snapshot,
    number: int,
    error: TransientProcessorError,
    clock: Clock,
    scheduler: Scheduler | None,
) -> AttemptResult:
    """The processor did not answer the pre-flight: run again later with nothing sent, or,
    once the attempt has waited `PREFLIGHT_GIVE_UP`, give it back to the schedule."""
    since = snap.retrying_since
    if since is not None and clock.now() - since >= PREFLIGHT_GIVE_UP:
        why = f"pre-flight unanswered for {PREFLIGHT_GIVE_UP}: {error}"
        later = "the processor did not answer the pre-flight; trying again in an hour"
        return await _abandon(db, snap, number, (why, later), None, clock, scheduler)
    logger.info(
        "pre-flight unanswered; attempt deferred",
        extra={"payment_id": str(snap.payment_id), "why": str(error)},
    )
    return AttemptResult(
        AttemptStatus.PENDING,
        snap.state,
        detail=f"pre-flight: {error}",
        retry_after=error.retry_after,
    )


async def _mark_sent_on(
    db: Database,
    snap: _Snapshot,
    number: int,
    method: StoredMethod,
    clock: Clock,
    scheduler: Scheduler | None,
) -> _Snapshot | AttemptResult:
    """Commit `sent_at` with the payment method the charge will name (the processor's new
    default), and record on the timeline that the card was replaced: the attempt will count
    against the card the processor reports charging."""
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state if payment else None)
        if attempt.sent_at is not None:
            return replace(snap, sent=True, method_ref=attempt.payment_method_ref)
        if payment.state is PaymentState.RETRYING:
            attempt.sent_at = now
            attempt.payment_method_ref = method.ref[:255]
            payment.credential_since = now
            if method.fingerprint:
                payment.credential_fingerprint = method.fingerprint[:128]
            await uow.session.flush()
            ctx = (await load_contexts(uow.session, [snap.payment_id], now=now))[snap.payment_id]
            updated = CredentialUpdated(at=now, actor=Actor.PROCESSOR)
            await run_event(uow, ctx, updated, now=now, scheduler=scheduler)
            await uow.commit()
            return replace(snap, sent=True, method_ref=attempt.payment_method_ref)
    return await _drop_unsent(db, snap, number, clock, "payment no longer retrying")


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
            payment_method_ref=snap.method_ref,
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
    # Recorded together with the answers other attempts of this process are waiting to record.
    return await _recorders().submit(
        _Answer(db, snap, attempt_number, result, decline, items, records, clock, scheduler)
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
        await run_event(uow, ctx, event, now=now, scheduler=scheduler)
        await uow.commit()
        logger.info(
            "pre-flight prevented a charge",
            extra={"payment_id": str(snap.payment_id), "event": event.name},
        )
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
    why = f"processor refused: {refusal}"
    later = "the processor refused the last request; trying again in an hour"
    result = await _abandon(db, snap, number, (why, later), refusal.status, clock, scheduler)
    if result.status is AttemptStatus.ABANDONED:
        logger.error("charge refused", extra={"payment_id": str(snap.payment_id), "why": why})
    return result


async def _abandon(
    db: Database,
    snap: _Snapshot,
    number: int,
    reasons: tuple[str, str],
    status: int | None,
    clock: Clock,
    scheduler: Scheduler | None,
) -> AttemptResult:
    """Nothing was charged: drop the attempt (AttemptAbandoned: `reasons[0]`) and retry in
    an hour (`reasons[1]`)."""
    why, later_reason = reasons
    now = clock.now()
    async with db.uow(SYSTEM_SCOPE) as uow:
        payment, attempt = await _locked(uow, snap.payment_id, number)
        if payment is None or attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            return AttemptResult(AttemptStatus.SKIPPED, payment.state if payment else None)
        ctx = (await load_contexts(uow.session, [snap.payment_id], now=now))[snap.payment_id]
        if payment.state is PaymentState.RETRYING:
            await run_event(uow, ctx, AttemptAbandoned(why[:200]), now=now, scheduler=scheduler)
        await uow.session.delete(attempt)
        await uow.session.flush()
        if payment.state is PaymentState.SCHEDULED:
            ctx = (await load_contexts(uow.session, [snap.payment_id], now=now))[snap.payment_id]
            later = DecisionMade(
                chosen_at=now + REFUSED_BACKOFF,
                reason=later_reason,
                strategy=ctx.policy.strategy,
            )
            await run_event(uow, ctx, later, now=now, scheduler=scheduler)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            await uow.session.execute(
                update(ProcessorConnection)
                .where(
                    col(ProcessorConnection.id) == snap.connection.id,
                    col(ProcessorConnection.status) != ConnectionStatus.DISCONNECTED,
                )
                .values(
                    status=ConnectionStatus.ERROR,
                    last_error=f"retry charge refused: {why}"[:2000],
                )
            )
        await uow.commit()
        return AttemptResult(AttemptStatus.ABANDONED, ctx.payment.state, detail=why)


@cache
def _success_statement() -> Any:
    echo = aliased(PaymentAttempt)
    last_seq = (
        sa.select(func.max(col(PaymentTransition.seq)))
        .where(col(PaymentTransition.payment_id) == col(Payment.id))
        .correlate(Payment)
        .scalar_subquery()
    )
    echoed = sa.exists().where(
        col(echo.payment_id) == col(Payment.id),
        col(echo.processor_attempt_id) == _CHARGE,
        col(echo.id) != col(PaymentAttempt.id),
    )
    return (
        sa.select(Payment, PaymentAttempt, CardCredential, last_seq, echoed)
        .outerjoin(
            PaymentAttempt,
            (col(PaymentAttempt.payment_id) == col(Payment.id))
            & (col(PaymentAttempt.portal_number) == _NUMBER),
        )
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .where(col(Payment.id) == _PAYMENT)
        .execution_options(populate_existing=True)
    )


@cache
def _lock_statement() -> Any:
    return sa.select(col(Payment.id)).where(col(Payment.id) == _PAYMENT).with_for_update()


async def _locked_for_success(
    uow: UnitOfWork, payment_id: uuid.UUID, number: int, charge_id: str
) -> tuple[PaymentContext, PaymentAttempt] | AttemptResult | None:
    """What recording an approved charge needs, read once the payment is locked: the payment,
    its portal attempt `number`, its card and latest timeline position. None when another
    attempt of the payment already holds this charge (ingestion read it back first): the full
    path settles that. A result when there is nothing to record.

    The read is a statement of its own, after the lock: a locking statement that waited for
    another writer of the payment would read the attempt and the timeline as they were before
    that writer committed (`timeline_positions`)."""
    await uow.session.execute(_lock_statement(), {"b_payment": payment_id})
    params = {"b_payment": payment_id, "b_number": number, "b_charge": charge_id[:255]}
    row = (await uow.session.execute(_success_statement(), params)).one_or_none()
    if row is None:
        return AttemptResult(AttemptStatus.SKIPPED, None, charge_id)
    payment, attempt, card, seq, echoed_found = row
    if attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
        # Another run recorded this very charge (same key, same answer).
        return AttemptResult(AttemptStatus.SKIPPED, payment.state, charge_id)
    if echoed_found:
        return None
    return settled_context(payment, card, last_seq=seq, attempts=[attempt]), attempt


async def _locked_context(
    uow: UnitOfWork, payment_id: uuid.UUID, number: int, charge_id: str, *, now: datetime
) -> tuple[PaymentContext, PaymentAttempt] | AttemptResult:
    """The payment locked with its whole ledger, and its portal attempt `number`."""
    contexts = await load_contexts(uow.session, [payment_id], now=now, lock=True)
    ctx = contexts.get(payment_id)
    if ctx is None:
        return AttemptResult(AttemptStatus.SKIPPED, None, charge_id)
    attempt = next((a for a in ctx.attempts if a.portal_number == number), None)
    if attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
        # Another run recorded this very charge (same key, same answer).
        return AttemptResult(AttemptStatus.SKIPPED, ctx.payment.state, charge_id)
    return ctx, attempt


@dataclass(frozen=True)
class _Answer:
    """A charge's answer, waiting to be recorded."""

    db: Database
    snap: _Snapshot
    number: int
    result: ChargeResult
    decline: Decline | None
    items: list[RawItem]
    records: list[CanonicalRecord]
    clock: Clock
    scheduler: Scheduler | None


@dataclass
class _Taken:
    """An answer applied to its attempt in a unit of work, before its raw records land and
    its transition runs (`event` None: nothing more to carry out)."""

    answer: _Answer
    ctx: PaymentContext
    attempt: PaymentAttempt
    event: Event | None


async def _take(
    uow: UnitOfWork, ctx: PaymentContext, attempt: PaymentAttempt, answer: _Answer, now: datetime
) -> _Taken:
    """Store the processor's answer on the locked attempt (outcome, decline, charge, card) and
    say which event it makes."""
    result = answer.result
    charge_id = result.processor_payment_id
    payment = ctx.payment
    # Ingestion may have read our own charge back before we recorded it: that row is this
    # attempt, not another payment of the invoice.
    echo = next(
        (a for a in ctx.attempts if a.processor_attempt_id == charge_id and a.id != attempt.id),
        None,
    )
    if echo is not None:
        await uow.session.delete(echo)
        await uow.session.flush()
        if result.approved and payment.state is PaymentState.RECOVERED:
            payment.recovered_by = Actor.PORTAL
        ctx = (await load_contexts(uow.session, [payment.id], now=now))[payment.id]
    event: Event | None
    if result.approved:
        event = AttemptSucceeded()
        attempt.outcome = AttemptOutcome.SUCCEEDED
    else:
        read = answer.decline if answer.decline is not None else _UNREADABLE
        view = DeclineView.from_decline(read, now)
        if payment.state is PaymentState.RETRYING:
            event = AttemptDeclined(view)
        else:
            # The payment moved on while this charge was out (a second run of the same
            # key recorded the other answer's consequences, or a person or ingestion
            # changed it). The decline still happened: it counts on the card, and a
            # scheduled payment is decided again with it, as for anyone else's decline.
            event = ExternalAttemptDeclined(view, Actor.PORTAL)
            logger.warning(
                "a charge was declined after its payment left RETRYING",
                extra={"payment_id": str(payment.id), "state": str(payment.state)},
            )
        attempt.outcome = AttemptOutcome.DECLINED
        attempt.sqlmodel_update(dict(decline_columns(read)))
        attempt.not_before = read.not_before
    if echo is not None and result.approved and payment.state is PaymentState.RECOVERED:
        event = None  # already recovered by the echo of this very charge: nothing more to say
    attempt.processor_attempt_id = charge_id[:255]
    attempt.card_id = await _charged_card(uow, ctx, answer.records, now)
    return _Taken(answer, ctx, attempt, event)


def _landed(taken: _Taken, raw_ids: list[uuid.UUID], writes: Writes) -> None:
    """The attempt's raw record once the answer's records landed (`raw_ids`: the new ones)."""
    attempt = taken.attempt
    if raw_ids:
        attempt.raw_record_id = raw_ids[-1]
    # Applied here already: landed as normalized, so the normalizer need not read it again.
    attempt.normalizer_version = NORMALIZER_VERSION
    writes.touch(attempt)


def _recorded(taken: _Taken) -> AttemptResult:
    charge_id = taken.answer.result.processor_payment_id
    return AttemptResult(AttemptStatus.RECORDED, taken.ctx.payment.state, charge_id)


async def _record(answer: _Answer) -> AttemptResult:
    """Store the processor's answer on the attempt and carry out its transition, in one
    transaction. An approved charge needs no ledger (`settled_context`): one locked read, the
    raw answer, and one statement for the attempt, the payment, its timeline and outbox; a
    decline reads the ledger, which decides when to retry."""
    snap, number = answer.snap, answer.number
    now = answer.clock.now()
    charge_id = answer.result.processor_payment_id
    async with answer.db.uow(SYSTEM_SCOPE) as uow:
        found: tuple[PaymentContext, PaymentAttempt] | AttemptResult | None = None
        if answer.result.approved:
            found = await _locked_for_success(uow, snap.payment_id, number, charge_id)
        if found is None:
            found = await _locked_context(uow, snap.payment_id, number, charge_id, now=now)
        if isinstance(found, AttemptResult):
            return found
        taken = await _take(uow, *found, answer, now)
        # Applied here already: landed as normalized, so the normalizer need not read it again.
        raw_ids, _ = await land(uow, snap.connection, answer.items, now=now, normalized=True)
        writes = Writes()
        _landed(taken, raw_ids, writes)
        if taken.event is not None:
            await run_event(
                uow, taken.ctx, taken.event, now=now, scheduler=answer.scheduler, writes=writes
            )
        await writes.flush(uow.session)
        await uow.commit()
        return _recorded(taken)


# Answers recorded in one transaction at most; more wait for the next.
RECORD_GROUP = 32


async def _record_together(
    uow: UnitOfWork, answers: Sequence[_Answer], now: datetime
) -> list[AttemptResult]:
    """Record answers of distinct payments in one unit of work: their payments locked (in id
    order) with their ledgers in one read, their raw records in one statement per connection,
    and every attempt, payment, timeline and outbox row in one statement."""
    contexts = await load_contexts(
        uow.session, [a.snap.payment_id for a in answers], now=now, lock=True
    )
    results: list[AttemptResult | _Taken] = []
    for answer in answers:
        charge_id = answer.result.processor_payment_id
        ctx = contexts.get(answer.snap.payment_id)
        if ctx is None:
            results.append(AttemptResult(AttemptStatus.SKIPPED, None, charge_id))
            continue
        attempt = next((a for a in ctx.attempts if a.portal_number == answer.number), None)
        if attempt is None or attempt.outcome is not AttemptOutcome.IN_FLIGHT:
            # Another run recorded this very charge (same key, same answer).
            results.append(AttemptResult(AttemptStatus.SKIPPED, ctx.payment.state, charge_id))
            continue
        results.append(await _take(uow, ctx, attempt, answer, now))
    taken = [r for r in results if isinstance(r, _Taken)]
    by_connection: dict[uuid.UUID, list[_Taken]] = defaultdict(list)
    for t in taken:
        by_connection[t.answer.snap.connection.id].append(t)
    writes = Writes()
    for group in by_connection.values():
        landed = await land_groups(
            uow,
            group[0].answer.snap.connection,
            [t.answer.items for t in group],
            now=now,
            normalized=True,
        )
        for t, raw_ids in zip(group, landed, strict=True):
            _landed(t, raw_ids, writes)
    runs = [(t.ctx, t.event, t.answer.scheduler) for t in taken if t.event is not None]
    await run_events(uow, runs, now=now, writes=writes)
    await writes.flush(uow.session)
    return [_recorded(r) if isinstance(r, _Taken) else r for r in results]


async def _record_group(answers: Sequence[_Answer]) -> list[AttemptResult | BaseException]:
    """Record a group of answers (same database, same clock, distinct payments) in one
    transaction; should that fail, each is recorded alone, so one answer that cannot be
    recorded (or a deadlock with another transaction) holds up no other."""
    if len(answers) > 1:
        db = answers[0].db
        try:
            async with db.uow(SYSTEM_SCOPE) as uow:
                recorded = await _record_together(uow, answers, answers[0].clock.now())
                await uow.commit()
            return list(recorded)
        except Exception:
            logger.warning(
                "recording answers together failed; recording each alone",
                extra={"answers": len(answers)},
                exc_info=True,
            )
    alone: list[AttemptResult | BaseException] = []
    for answer in answers:
        try:
            alone.append(await _record(answer))
        except Exception as exc:  # this answer's caller gets it
            alone.append(exc)
    return alone


_recorders: PerLoop[_Answer, AttemptResult] = PerLoop(
    lambda: Grouper(
        _record_group,
        limit=RECORD_GROUP,
        key=lambda a: (id(a.db), id(a.clock)),
        distinct=lambda a: a.snap.payment_id,
    )
)


@cache
def _read_back() -> Any:
    """Whether ingestion stored a charge of the portal's on the attempt's payment as an attempt
    of its own (actor PORTAL, no portal number): the portal's charge read back before the run
    that made it recorded it. Attempts are claimed one at a time, and a recorded one takes its
    echo over (`_record`), so such a row is the charge of the attempt still in flight: the
    processor has seen that attempt's key."""
    echo = aliased(PaymentAttempt)
    return sa.exists().where(
        col(echo.payment_id) == col(PaymentAttempt.payment_id),
        col(echo.actor) == Actor.PORTAL,
        col(echo.portal_number).is_(None),
        col(echo.processor_attempt_id).is_not(None),
    )


async def reconcile_stuck(
    db: Database,
    *,
    adapters: AdapterFactory,
    clock: Clock,
    older_than: timedelta = STUCK_AFTER,
    limit: int = 100,
    scheduler: Scheduler | None = None,
) -> list[AttemptResult]:
    """Run again the portal attempts left in flight (a killed worker, a lost job) once they are
    `older_than`: the same key, so at most one charge.

    - A payment still RETRYING: its attempt is run again (sent or not).
    - A payment that left RETRYING meanwhile (ingestion read it paid, canceled …):
      - an unsent attempt is dropped (nothing left the portal: `sent_at` is committed before
        the request, and only while RETRYING);
      - a sent attempt whose charge ingestion has read back (`_read_back`) replays its key: the
        processor has seen it and answers with that charge, which is then recorded as the
        attempt's (the read-back row is taken over);
      - a sent attempt with nothing read back is never replayed: if its charge never reached
        the processor, the processor has not seen the key, and a replay would charge an
        invoice already paid. Such an attempt stays in flight for a person to settle."""
    cutoff = clock.now() - older_than
    retrying = col(Payment.state) == PaymentState.RETRYING
    async with db.uow(SYSTEM_SCOPE) as uow:
        rows = (
            await uow.session.execute(
                select(col(PaymentAttempt.payment_id), col(PaymentAttempt.portal_number))
                .join(Payment, col(Payment.id) == col(PaymentAttempt.payment_id))
                .where(
                    col(PaymentAttempt.outcome) == AttemptOutcome.IN_FLIGHT,
                    col(PaymentAttempt.portal_number).is_not(None),
                    col(PaymentAttempt.attempted_at) < cutoff,
                    sa.or_(
                        retrying & (col(Payment.retrying_since) < cutoff),
                        ~retrying & (col(PaymentAttempt.sent_at).is_(None) | _read_back()),
                    ),
                )
                .order_by(col(PaymentAttempt.attempted_at))
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
