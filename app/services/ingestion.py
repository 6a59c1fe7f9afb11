"""Ingestion: land raw records first, then normalize them into customers, cards, payments and
attempts with set-based upserts. Idempotent: landing the same record twice stores it once, and
re-normalizing (replay) updates the clean rows in place."""

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from app.bulk import any_array, insert_rows, unnest, update_rows
from app.clock import Clock
from app.db import Database, UnitOfWork
from app.enums import Actor, AttemptOutcome, CardFunding, PaymentState, Processor
from app.errors import NotFound
from app.models.customer import CardCredential, Customer
from app.models.ingestion import DeadLetter, ProcessorConnection, RawRecord
from app.models.payment import DeclineColumns, Payment, PaymentAttempt, decline_columns
from app.processors.base import RawItem
from app.processors.normalize.dispatch import normalize_stored
from app.processors.normalize.records import (
    NORMALIZER_VERSION,
    CanonicalCard,
    CanonicalRecord,
    NormalizeError,
    RejectedRecord,
    may_hold_card_number,
    scrub_raw,
)
from app.services.customer_success import UNKNOWN_CUSTOMER, record_successes
from app.services.retry.ingested import CardSeen, apply_ingested_events
from app.tenancy import SYSTEM_SCOPE

CHUNK = 1000
# Ended without the money: a later success on the invoice still recovers the payment.
ENDED_UNPAID = frozenset({PaymentState.EXHAUSTED, PaymentState.NOT_RETRYABLE})


@dataclass
class IngestStats:
    """What one landing or normalization step did."""

    landed: int = 0
    duplicates: int = 0
    normalized: int = 0
    dead_letters: int = 0
    payments_created: int = 0
    attempts_recorded: int = 0
    recovered: int = 0
    ignored_successes: int = 0

    def add(self, other: "IngestStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


_LAND = text(
    """
    INSERT INTO raw_record
        (id, merchant_id, connection_id, processor, external_id, received_at, content_hash,
         payload, normalized_at, normalizer_version)
    SELECT r.id, :merchant_id, :connection_id, :processor, r.external_id, :received_at,
           r.content_hash, r.payload::jsonb, :normalized_at, :normalizer_version
    FROM unnest(CAST(:ids AS uuid[]), CAST(:external_ids AS text[]),
                CAST(:hashes AS text[]), CAST(:payloads AS text[]))
         AS r(id, external_id, content_hash, payload)
    ON CONFLICT (connection_id, content_hash) DO NOTHING
    RETURNING id
    """
)


@dataclass(frozen=True, slots=True)
class _Landing:
    """One record ready to land: the JSON text stored and the payload that text holds."""

    id: uuid.UUID
    item: RawItem
    text: str
    payload: dict[str, Any]


def _prepare(items: Sequence[RawItem]) -> tuple[list[_Landing], int]:
    """Each distinct record (by content hash) once, scrubbed of anything that may be a card
    number; and how many were repeats within the batch."""
    unique: dict[str, RawItem] = {}
    for item in items:
        unique.setdefault(item.content_hash, item)
    landings = []
    for item in unique.values():
        if item.payload.get("xml") is None and not may_hold_card_number(item.body):
            # Already the canonical JSON of the payload, with nothing to scrub.
            landings.append(_Landing(uuid.uuid4(), item, item.body.decode(), item.payload))
        else:
            payload = _scrubbed(item.payload)
            text_ = json.dumps(payload, sort_keys=True, separators=(",", ":"))
            landings.append(_Landing(uuid.uuid4(), item, text_, payload))
    return landings, len(items) - len(unique)


async def _insert_raw(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    landings: Sequence[_Landing],
    *,
    now: datetime,
    normalized: bool,
) -> set[uuid.UUID]:
    """Insert the rows not stored yet (by content hash); the ids of those that were new."""
    new_ids: set[uuid.UUID] = set()
    for start in range(0, len(landings), CHUNK):
        chunk = landings[start : start + CHUNK]
        result = await uow.session.execute(
            _LAND,
            {
                "merchant_id": connection.merchant_id,
                "connection_id": connection.id,
                "processor": connection.kind.value,
                "received_at": now,
                "normalized_at": now if normalized else None,
                "normalizer_version": NORMALIZER_VERSION if normalized else None,
                "ids": [landing.id for landing in chunk],
                "external_ids": [(x.item.external_id or "")[:255] or None for x in chunk],
                "hashes": [landing.item.content_hash for landing in chunk],
                "payloads": [landing.text for landing in chunk],
            },
        )
        new_ids.update(result.scalars())
    return new_ids


async def land(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    items: Sequence[RawItem],
    *,
    now: datetime,
    normalized: bool = False,
) -> tuple[list[uuid.UUID], IngestStats]:
    """Store each record exactly once (by content hash); returns the ids of the rows that were
    new. By default they wait for the normalizer (a webhook acknowledges first); `normalized`
    stamps them as read by the current normalizer, for a caller that applied them itself."""
    landings, repeats = _prepare(items)
    new_ids = await _insert_raw(uow, connection, landings, now=now, normalized=normalized)
    stats = IngestStats(landed=len(new_ids), duplicates=repeats + len(landings) - len(new_ids))
    return [x.id for x in landings if x.id in new_ids], stats


@dataclass(frozen=True)
class Prepared:
    """Records read and normalized, ready to land: the CPU half of ingesting a batch, which
    a poller does while the database writes the previous batch."""

    landings: list[_Landing]
    repeats: int
    results: dict[uuid.UUID, list[CanonicalRecord | RejectedRecord]]


def prepare(processor: Processor, items: Sequence[RawItem]) -> Prepared:
    """Deduplicate, scrub and normalize records from memory, exactly as they will be stored."""
    landings, repeats = _prepare(items)
    return Prepared(
        landings, repeats, {x.id: _normalize_one(processor, x.payload) for x in landings}
    )


async def ingest(
    uow: UnitOfWork, connection: ProcessorConnection, batch: Prepared, *, now: datetime
) -> IngestStats:
    """Land prepared records and write their clean rows in the same transaction.

    They land already marked with the normalizer version (one write per raw row, no read
    back), and only rows that were new reach the clean tables, so a record delivered twice
    is counted once."""
    new_ids = await _insert_raw(uow, connection, batch.landings, now=now, normalized=True)
    stats = IngestStats(
        landed=len(new_ids), duplicates=batch.repeats + len(batch.landings) - len(new_ids)
    )
    fresh = [(x.id, batch.results[x.id]) for x in batch.landings if x.id in new_ids]
    stats.add(await _apply_results(uow, connection, fresh, now=now))
    return stats


def _scrubbed(payload: dict[str, Any]) -> dict[str, Any]:
    cleaned = scrub_raw(payload)
    return cleaned if isinstance(cleaned, dict) else {}


async def pending_raw_ids(
    uow: UnitOfWork,
    connection_id: uuid.UUID,
    *,
    since: datetime | None = None,
    replay: bool = False,
    limit: int = 5000,
    after: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Raw rows still to normalize (or, for a replay, every row since `since`), by id."""
    query = (
        select(col(RawRecord.id))
        .where(col(RawRecord.connection_id) == connection_id)
        .order_by(col(RawRecord.id))
        .limit(limit)
    )
    if not replay:
        query = query.where(col(RawRecord.normalized_at).is_(None))
    if since is not None:
        query = query.where(col(RawRecord.received_at) >= since)
    if after is not None:
        query = query.where(col(RawRecord.id) > after)
    return list((await uow.session.execute(query)).scalars())


async def connections_with_pending_raw(
    uow: UnitOfWork, *, received_before: datetime
) -> list[uuid.UUID]:
    """Connections holding raw rows that have waited for the normalizer since before
    `received_before` (a partial index keeps this cheap: such rows are few)."""
    query = (
        select(col(RawRecord.connection_id))
        .where(
            col(RawRecord.normalized_at).is_(None),
            col(RawRecord.received_at) < received_before,
        )
        .distinct()
        .order_by(col(RawRecord.connection_id))
    )
    return list((await uow.session.execute(query)).scalars())


@dataclass
class _Plan:
    """The writes one normalization batch decided on."""

    payments: list[dict[str, Any]] = field(default_factory=list)
    payment_updates: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    attempt_updates: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)


def _card_key(record: CanonicalRecord) -> tuple[str, int, int] | None:
    """The stored credential's identity (fingerprint, expiry), when the record shows enough."""
    card = record.card
    if card is None or card.exp_month is None or card.exp_year is None:
        return None
    if not (card.last4 and card.last4.isdigit() and len(card.last4) == 4):
        return None
    if card.fingerprint:
        fingerprint = card.fingerprint[:128]
    else:
        # Without the processor's fingerprint, identify the credential by what is visible.
        seen = f"{card.brand}|{card.bin}|{card.last4}|{card.exp_month}|{card.exp_year}"
        fingerprint = "derived:" + hashlib.sha256(seen.encode()).hexdigest()[:40]
    return fingerprint, card.exp_month, card.exp_year


_INSERT_CUSTOMERS = text(
    """
    INSERT INTO customer (id, merchant_id, external_ref, created_at)
    SELECT gen_random_uuid(), :merchant_id, r.ref, :now
    FROM unnest(CAST(:refs AS text[])) AS r(ref)
    ON CONFLICT (merchant_id, external_ref) DO NOTHING
    """
)
_INSERT_CARDS = text(
    """
    INSERT INTO card_credential
        (id, merchant_id, customer_id, brand, funding, issuer_country, bin, last4, exp_month,
         exp_year, fingerprint, created_at)
    SELECT gen_random_uuid(), :merchant_id, c.customer_id, c.brand, c.funding, c.country, c.bin,
           c.last4, c.exp_month, c.exp_year, c.fingerprint, :now
    FROM unnest(CAST(:customer_ids AS uuid[]), CAST(:brands AS text[]),
                CAST(:fundings AS text[]), CAST(:countries AS text[]), CAST(:bins AS text[]),
                CAST(:last4s AS text[]), CAST(:months AS smallint[]),
                CAST(:years AS smallint[]), CAST(:fingerprints AS text[]))
         AS c(customer_id, brand, funding, country, bin, last4, exp_month, exp_year, fingerprint)
    ON CONFLICT (merchant_id, fingerprint, exp_month, exp_year) DO NOTHING
    """
)


async def _upsert_customers(
    uow: UnitOfWork, merchant_id: uuid.UUID, refs: set[str], now: datetime
) -> dict[str, uuid.UUID]:
    """Ids of the merchant's customers by processor reference, creating the missing ones
    (insert-if-absent, then one read: no rewrite of rows that already exist)."""
    ordered = sorted(refs)
    await uow.session.execute(
        _INSERT_CUSTOMERS, {"merchant_id": merchant_id, "refs": ordered, "now": now}
    )
    wanted = unnest(ordered, sa.Text)
    rows = await uow.session.execute(
        select(col(Customer.external_ref), col(Customer.id))
        .select_from(wanted)
        .join(
            Customer,
            (col(Customer.merchant_id) == merchant_id)
            & (col(Customer.external_ref) == wanted.c.value),
        )
    )
    return {ref: cid for ref, cid in rows.all()}  # noqa: C416 - rows, not pairs


async def _upsert_cards(
    uow: UnitOfWork,
    merchant_id: uuid.UUID,
    records: Sequence[CanonicalRecord],
    customer_ids: dict[str, uuid.UUID],
    now: datetime,
) -> dict[tuple[str, int, int], uuid.UUID]:
    cards: dict[tuple[str, int, int], tuple[uuid.UUID, CanonicalCard]] = {}
    for record in records:
        key = _card_key(record)
        if key is not None and record.card is not None:
            cards[key] = (customer_ids[record.customer_id or UNKNOWN_CUSTOMER], record.card)
    if not cards:
        return {}
    keys = list(cards)
    await uow.session.execute(
        _INSERT_CARDS,
        {
            "merchant_id": merchant_id,
            "now": now,
            "customer_ids": [cards[k][0] for k in keys],
            "brands": [(cards[k][1].brand or "unknown")[:32] for k in keys],
            "fundings": [(cards[k][1].funding or CardFunding.UNKNOWN).value for k in keys],
            "countries": [cards[k][1].country for k in keys],
            "bins": [(cards[k][1].bin or None) and str(cards[k][1].bin)[:8] for k in keys],
            "last4s": [cards[k][1].last4 for k in keys],
            "months": [k[1] for k in keys],
            "years": [k[2] for k in keys],
            "fingerprints": [k[0] for k in keys],
        },
    )
    fingerprints = unnest(sorted({k[0] for k in keys}), sa.Text)
    rows = await uow.session.execute(
        select(
            col(CardCredential.fingerprint),
            col(CardCredential.exp_month),
            col(CardCredential.exp_year),
            col(CardCredential.id),
        )
        .select_from(fingerprints)
        .join(
            CardCredential,
            (col(CardCredential.merchant_id) == merchant_id)
            & (col(CardCredential.fingerprint) == fingerprints.c.value),
        )
    )
    return {(fp, month, year): cid for fp, month, year, cid in rows.all()}


async def card_of_charge(
    uow: UnitOfWork,
    merchant_id: uuid.UUID,
    customer_id: uuid.UUID,
    record: CanonicalRecord,
    *,
    known: tuple[tuple[str, int, int], uuid.UUID] | None,
    now: datetime,
) -> uuid.UUID | None:
    """The stored credential of the card a charge was made on, stored now if it is new;
    `known` is a credential already at hand (its identity and id), used without a query when
    it is the one. None when the record does not show enough of the card."""
    key = _card_key(record)
    if key is None:
        return None
    if known is not None and known[0] == key:
        return known[1]
    ids = await _upsert_cards(
        uow, merchant_id, [record], {record.customer_id or UNKNOWN_CUSTOMER: customer_id}, now
    )
    return ids.get(key)


def _decline_columns(record: CanonicalRecord) -> DeclineColumns:
    decline = record.decline
    if decline is None:  # pragma: no cover - only failed records reach here
        raise ValueError("a failed record has no decline")
    return decline_columns(decline)


# The decline columns of an attempt that was not declined.
_NO_DECLINE: dict[str, object] = dict.fromkeys(DeclineColumns.__annotations__)


async def apply_records(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    records: Sequence[tuple[uuid.UUID, CanonicalRecord]],
    *,
    now: datetime,
) -> IngestStats:
    """Turn canonical records into rows. A failure opens a payment (or, for an invoice already
    in recovery, adds an attempt to it); a success on such an invoice recovers it."""
    stats = IngestStats()
    if not records:
        return stats
    merchant_id = connection.merchant_id
    ordered = sorted(records, key=lambda r: (r[1].attempted_at, r[1].processor_payment_id))
    canon = [r for _, r in ordered]
    customer_ids = await _upsert_customers(
        uow, merchant_id, {r.customer_id or UNKNOWN_CUSTOMER for r in canon}, now
    )

    charge_ids = {r.processor_payment_id for r in canon}
    invoice_refs = {r.invoice_ref for r in canon if r.invoice_ref}
    processor: Processor = connection.kind
    known: dict[uuid.UUID, Payment] = {}
    # Lookups by `= ANY(array)`: the planner takes the matching composite index as long as
    # the table's statistics are current (see polling.refresh_statistics for backfills).
    for column, values in (
        (col(Payment.processor_payment_id), charge_ids),
        (col(Payment.invoice_ref), invoice_refs),
    ):
        if not values:
            continue
        found = await uow.session.execute(
            select(Payment).where(
                col(Payment.merchant_id) == merchant_id,
                col(Payment.processor) == processor,
                column == any_array(sorted(values), sa.Text),
            )
        )
        known.update({p.id: p for p in found.scalars()})
    by_charge = {p.processor_payment_id: p.id for p in known.values()}
    open_by_invoice = {
        p.invoice_ref: p.id for p in known.values() if p.invoice_ref and not p.state.is_terminal
    }
    # An invoice whose recovery ended unpaid (retries exhausted, or never retryable) can still
    # be paid: the customer paid out of band, or the billing system retried on its own. Its
    # success recovers that payment; a new failure on it opens a new one. Latest payment wins.
    ended_unpaid = sorted(
        (p for p in known.values() if p.invoice_ref and p.state in ENDED_UNPAID),
        key=lambda p: p.first_failed_at,
    )
    unpaid_by_invoice = {p.invoice_ref: p.id for p in ended_unpaid}
    # Attempts already stored for these charges (a replay, or the portal's own retries).
    stored_attempts = list(
        (
            await uow.session.execute(
                select(PaymentAttempt).where(
                    col(PaymentAttempt.merchant_id) == merchant_id,
                    col(PaymentAttempt.processor_attempt_id)
                    == any_array(sorted(charge_ids), sa.Text),
                )
            )
        ).scalars()
    )
    # Charge ids are the processor's own: the same id seen on another processor's payment is
    # another charge.
    unseen = {a.payment_id for a in stored_attempts if a.payment_id not in known}
    elsewhere: set[uuid.UUID] = set()
    if unseen:
        rows = await uow.session.execute(
            select(col(Payment.id), col(Payment.processor)).where(
                col(Payment.id) == any_array(sorted(unseen), sa.Uuid)
            )
        )
        elsewhere = {pid for pid, kind in rows.all() if kind is not processor}
    attempts_known = {
        a.processor_attempt_id: a for a in stored_attempts if a.payment_id not in elsewhere
    }
    attempt_counts = {p.id: p.attempt_count for p in known.values()}
    plan = _Plan()
    opened: list[CanonicalRecord] = []
    # Attempt rows, new ones and updates of stored ones, with the record of their charge.
    carded: list[tuple[dict[str, Any], CanonicalRecord]] = []
    recarded: list[tuple[dict[str, Any], CanonicalRecord]] = []
    ordinary: list[CanonicalRecord] = []

    for raw_id, record in ordered:
        payment_id = by_charge.get(record.processor_payment_id)
        linked = open_by_invoice.get(record.invoice_ref) if record.invoice_ref else None
        if linked is None and record.invoice_ref and record.status == "succeeded":
            linked = unpaid_by_invoice.get(record.invoice_ref)
        target_id = payment_id or linked
        existing_attempt = attempts_known.get(record.processor_payment_id)
        common = {
            "raw_record_id": raw_id,
            "normalizer_version": NORMALIZER_VERSION,
            # The rules read these on every attempt of the card, not only the first failure.
            **(decline_columns(record.decline) if record.decline else _NO_DECLINE),
            "not_before": record.decline.not_before if record.decline else None,
        }
        if existing_attempt is not None:
            # Seen before (a replay, or our own retry read back): refresh its reading only.
            update = {"id": existing_attempt.id, **common}
            plan.attempt_updates.append(update)
            recarded.append((update, record))
            if payment_id is not None and record.status == "failed":
                plan.payment_updates.append(
                    {
                        "id": payment_id,
                        **_decline_columns(record),
                        "normalizer_version": NORMALIZER_VERSION,
                    }
                )
            continue
        if record.status == "failed" and target_id is None:
            new_id = uuid.uuid4()
            row = {
                "id": new_id,
                "merchant_id": merchant_id,
                "processor": processor,
                "processor_payment_id": record.processor_payment_id[:255],
                "amount_minor": record.amount_minor,
                "currency": record.currency,
                "customer_id": customer_ids[record.customer_id or UNKNOWN_CUSTOMER],
                "card_id": None,  # set below, once the batch's cards are stored
                "invoice_ref": record.invoice_ref,
                "subscription_ref": record.subscription_ref,
                "first_failed_at": record.attempted_at,
                **_decline_columns(record),
                "state": PaymentState.PENDING,
                "attempt_count": 1,
                "connection_id": connection.id,
                "normalizer_version": NORMALIZER_VERSION,
                "created_at": now,
                "updated_at": now,
            }
            plan.payments.append(row)
            opened.append(record)
            attempt_counts[new_id] = 1
            by_charge[record.processor_payment_id] = new_id
            if record.invoice_ref:
                open_by_invoice[record.invoice_ref] = new_id
            first = _attempt_row(
                merchant_id, new_id, 1, record, AttemptOutcome.DECLINED, now, common
            )
            plan.attempts.append(first)
            carded.append((first, record))
            stats.payments_created += 1
            continue
        if target_id is None:
            stats.ignored_successes += 1  # an ordinary successful charge: pay-cycle evidence only
            ordinary.append(record)
            continue
        number = attempt_counts[target_id] + 1
        attempt_counts[target_id] = number
        outcome = AttemptOutcome.DECLINED if record.status == "failed" else AttemptOutcome.SUCCEEDED
        later = _attempt_row(merchant_id, target_id, number, record, outcome, now, common)
        plan.attempts.append(later)
        carded.append((later, record))
        if outcome is AttemptOutcome.SUCCEEDED:
            plan.recoveries.append(
                {"id": target_id, "recovered_at": record.attempted_at, "attempt_count": number}
            )
            if record.invoice_ref:
                open_by_invoice.pop(record.invoice_ref, None)
                unpaid_by_invoice.pop(record.invoice_ref, None)
            stats.recovered += 1
        else:
            plan.payment_updates.append({"id": target_id, "attempt_count": number})
    # Cards are stored for the payments opened here (the credential a retry would charge) and
    # for every attempt (the network caps count each attempt against the card it hit); not for
    # ordinary successes, which are most of the records.
    card_ids = await _upsert_cards(
        uow, merchant_id, [record for _, record in carded + recarded], customer_ids, now
    )

    def card_of(record: CanonicalRecord) -> uuid.UUID | None:
        key = _card_key(record)
        return card_ids.get(key) if key is not None else None

    for row, record in zip(plan.payments, opened, strict=True):
        row["card_id"] = card_of(record)
    for row, record in carded:
        row["card_id"] = card_of(record)
    for row, record in recarded:
        # A stored attempt keeps the card it has when this reading of it shows none.
        if (card_id := card_of(record)) is not None:
            row["card_id"] = card_id
    await _write(uow, plan, now)
    await record_successes(uow, merchant_id, processor, ordinary, customer_ids)
    seen = [
        CardSeen(
            customer_ids[r.customer_id],
            card,
            r.invoice_ref,
            r.subscription_ref,
            r.attempted_at,
            r.decline,
        )
        for r in canon
        if r.customer_id and (card := _card_key(r)) is not None
    ]
    applied = await apply_ingested_events(uow, paid=plan.recoveries, cards_seen=seen, now=now)
    stats.recovered = applied.recovered
    stats.attempts_recorded = len(plan.attempts)
    stats.normalized = len(records)
    return stats


def _attempt_row(
    merchant_id: uuid.UUID,
    payment_id: uuid.UUID,
    number: int,
    record: CanonicalRecord,
    outcome: AttemptOutcome,
    now: datetime,
    common: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "merchant_id": merchant_id,
        "payment_id": payment_id,
        "number": number,
        "attempted_at": record.attempted_at,
        "outcome": outcome,
        "actor": Actor.PROCESSOR,
        "processor_attempt_id": record.processor_payment_id[:255],
        "created_at": now,
        **common,
    }


async def _write(uow: UnitOfWork, plan: _Plan, now: datetime) -> None:
    session = uow.session
    await insert_rows(session, Payment, plan.payments)
    await insert_rows(session, PaymentAttempt, plan.attempts)
    # The recoveries' state changes go through the state machine (`apply_ingested_events`).
    recoveries = [{"id": r["id"], "attempt_count": r["attempt_count"]} for r in plan.recoveries]
    await update_rows(session, PaymentAttempt, plan.attempt_updates)
    await update_rows(
        session,
        Payment,
        [{**r, "updated_at": now} for r in plan.payment_updates + recoveries],
    )


def _normalize_one(processor: Processor, payload: object) -> list[CanonicalRecord | RejectedRecord]:
    """Every result of one stored (scrubbed) payload; never raises."""
    try:
        results: list[CanonicalRecord | RejectedRecord] = normalize_stored(
            processor, payload, scrubbed=True
        )
    except NormalizeError as exc:
        results = [RejectedRecord(reason=str(exc), payload_excerpt="")]
    return results or [RejectedRecord(reason="no payment record in payload", payload_excerpt="")]


async def _apply_results(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    results: Sequence[tuple[uuid.UUID, list[CanonicalRecord | RejectedRecord]]],
    *,
    now: datetime,
) -> IngestStats:
    """Write the records of normalized raw rows; what failed becomes dead letters."""
    good: list[tuple[uuid.UUID, CanonicalRecord]] = []
    letters: list[dict[str, Any]] = []
    for raw_id, found in results:
        for result in found:
            if isinstance(result, RejectedRecord):
                letters.append(
                    {
                        "id": uuid.uuid4(),
                        "merchant_id": connection.merchant_id,
                        "connection_id": connection.id,
                        "raw_record_id": raw_id,
                        "normalizer_version": NORMALIZER_VERSION,
                        "reason": result.reason[:2000],
                        "created_at": now,
                    }
                )
            else:
                good.append((raw_id, result))
    stats = await apply_records(uow, connection, good, now=now)
    for chunk in _chunks(letters):
        await uow.session.execute(
            insert(DeadLetter)
            .values(list(chunk))
            .on_conflict_do_nothing(index_elements=["raw_record_id", "normalizer_version"])
        )
    stats.dead_letters = len(letters)
    return stats


async def normalize_raw_records(
    uow: UnitOfWork, connection: ProcessorConnection, raw_ids: Sequence[uuid.UUID], *, now: datetime
) -> IngestStats:
    """Normalize stored raw rows with the current normalizer (records landed before they were
    normalized, or a replay); failures become dead letters."""
    if not raw_ids:
        return IngestStats()
    rows = (
        await uow.session.execute(
            select(col(RawRecord.id), col(RawRecord.payload)).where(
                col(RawRecord.id) == any_array(list(raw_ids), sa.Uuid)
            )
        )
    ).all()
    stats = await _apply_results(
        uow,
        connection,
        [(raw_id, _normalize_one(connection.kind, payload)) for raw_id, payload in rows],
        now=now,
    )
    await uow.session.execute(
        update(RawRecord)
        .where(col(RawRecord.id) == any_array(list(raw_ids), sa.Uuid))
        .values(normalized_at=now, normalizer_version=NORMALIZER_VERSION)
    )
    return stats


async def replay_connection(
    db: Database,
    connection_id: uuid.UUID,
    *,
    since: datetime | None,
    clock: Clock,
    batch: int = 1000,
) -> IngestStats:
    """Re-normalize every raw record of a connection (since a time) with the current
    normalizer, batch by batch; clean rows are updated in place, never duplicated."""
    total = IngestStats()
    after: uuid.UUID | None = None
    while True:
        async with db.uow(SYSTEM_SCOPE) as uow:
            connection = await uow.session.get(ProcessorConnection, connection_id)
            if connection is None:
                raise NotFound("connection not found", field="connection")
            ids = await pending_raw_ids(
                uow, connection_id, since=since, replay=True, limit=batch, after=after
            )
            if not ids:
                return total
            total.add(await normalize_raw_records(uow, connection, ids, now=clock.now()))
            await uow.commit()
        after = ids[-1]
