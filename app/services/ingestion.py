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
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from app.clock import Clock
from app.db import Database, UnitOfWork
from app.enums import Actor, AttemptOutcome, CardFunding, PaymentState, Processor
from app.errors import NotFound
from app.models.customer import CardCredential, Customer
from app.models.ingestion import DeadLetter, ProcessorConnection, RawRecord
from app.models.payment import Payment, PaymentAttempt
from app.processors.base import RawItem
from app.processors.normalize.dispatch import normalize_raw as normalize_stored
from app.processors.normalize.records import (
    NORMALIZER_VERSION,
    CanonicalCard,
    CanonicalRecord,
    NormalizeError,
    may_hold_card_number,
    scrub_raw,
)
from app.processors.normalize.records import DeadLetter as DeadLetterResult
from app.services.retry.ingested import CardSeen, apply_ingested_events
from app.tenancy import SYSTEM_SCOPE

CHUNK = 1000


def any_array(values: Sequence[Any], item_type: Any) -> Any:
    """`= ANY(:array)`: one bound array instead of an IN list whose length changes the SQL
    text, so the driver prepares each statement once rather than once per batch size.
    For primary keys only: elsewhere a generic plan may scan the table once per element."""
    return sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(item_type)))


def unnest(values: Sequence[Any], item_type: Any) -> Any:
    """A one-column derived table of the values, to join on: the planner drives an index
    lookup per value instead of testing every row against the whole array."""
    array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(item_type))
    return sa.func.unnest(array).table_valued("value").render_derived()


UNKNOWN_CUSTOMER = "unknown"


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
         payload)
    SELECT r.id, :merchant_id, :connection_id, :processor, r.external_id, :received_at,
           r.content_hash, r.payload::jsonb
    FROM unnest(CAST(:ids AS uuid[]), CAST(:external_ids AS text[]),
                CAST(:hashes AS text[]), CAST(:payloads AS text[]))
         AS r(id, external_id, content_hash, payload)
    ON CONFLICT (connection_id, content_hash) DO NOTHING
    RETURNING id
    """
)


def _stored_text(item: RawItem) -> str:
    """The JSON stored for an item: scrubbed of anything that may be a card number."""
    if item.payload.get("xml") is None and not may_hold_card_number(item.body):
        return item.body.decode()  # already the canonical JSON of the payload
    return json.dumps(_scrubbed(item.payload), sort_keys=True, separators=(",", ":"))


async def land(
    uow: UnitOfWork, connection: ProcessorConnection, items: Sequence[RawItem], *, now: datetime
) -> tuple[list[uuid.UUID], IngestStats]:
    """Store each record exactly once (by content hash), in one set-based statement per
    chunk; returns the ids of the rows that were new."""
    stats = IngestStats()
    unique: dict[str, RawItem] = {}
    for item in items:
        unique.setdefault(item.content_hash, item)
    stats.duplicates = len(items) - len(unique)
    digests = list(unique)
    new_ids: list[uuid.UUID] = []
    for start in range(0, len(digests), CHUNK):
        chunk = digests[start : start + CHUNK]
        result = await uow.session.execute(
            _LAND,
            {
                "merchant_id": connection.merchant_id,
                "connection_id": connection.id,
                "processor": connection.kind.value,
                "received_at": now,
                "ids": [uuid.uuid4() for _ in chunk],
                "external_ids": [(unique[d].external_id or "")[:255] or None for d in chunk],
                "hashes": chunk,
                "payloads": [_stored_text(unique[d]) for d in chunk],
            },
        )
        new_ids += list(result.scalars())
    stats.landed = len(new_ids)
    stats.duplicates += len(digests) - len(new_ids)
    return new_ids, stats


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


@dataclass
class _Plan:
    """The writes one normalization batch decided on."""

    payments: list[dict[str, Any]] = field(default_factory=list)
    payment_updates: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    attempt_updates: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)


def _card_fingerprint(record: CanonicalRecord) -> str | None:
    card = record.card
    if card is None or card.last4 is None or card.exp_month is None or card.exp_year is None:
        return None
    if card.fingerprint:
        return card.fingerprint[:128]
    # Without the processor's fingerprint, identify the credential by what is visible.
    seen = f"{card.brand}|{card.bin}|{card.last4}|{card.exp_month}|{card.exp_year}"
    return "derived:" + hashlib.sha256(seen.encode()).hexdigest()[:40]


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
        fingerprint = _card_fingerprint(record)
        card = record.card
        if fingerprint is None or card is None or card.exp_month is None or card.exp_year is None:
            continue
        if not (card.last4 and card.last4.isdigit() and len(card.last4) == 4):
            continue
        owner = customer_ids[record.customer_id or UNKNOWN_CUSTOMER]
        cards[(fingerprint, card.exp_month, card.exp_year)] = (owner, card)
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


def _decline_columns(record: CanonicalRecord) -> dict[str, Any]:
    decline = record.decline
    if decline is None:  # pragma: no cover - only failed records reach here
        raise ValueError("a failed record has no decline")
    return {
        "decline_category": decline.category,
        "decline_retryable": decline.retryable,
        "decline_advice": decline.advice,
        "decline_raw_code": (decline.raw_code or None) and decline.raw_code[:64],
        "decline_network_code": decline.network_decline_code,
        "decline_network_advice_code": decline.network_advice_code,
    }


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
    card_ids = await _upsert_cards(uow, merchant_id, canon, customer_ids, now)

    charge_ids = {r.processor_payment_id for r in canon}
    invoice_refs = {r.invoice_ref for r in canon if r.invoice_ref}
    processor: Processor = connection.kind
    known: dict[uuid.UUID, Payment] = {}
    for column, values in (
        (col(Payment.processor_payment_id), charge_ids),
        (col(Payment.invoice_ref), invoice_refs),
    ):
        if not values:
            continue
        wanted = unnest(sorted(values), sa.Text)
        found = await uow.session.execute(
            select(Payment)
            .select_from(wanted)
            .join(
                Payment,
                (col(Payment.merchant_id) == merchant_id)
                & (col(Payment.processor) == processor)
                & (column == wanted.c.value),
            )
        )
        known.update({p.id: p for p in found.scalars()})
    by_charge = {p.processor_payment_id: p for p in known.values()}
    open_by_invoice = {
        p.invoice_ref: p for p in known.values() if p.invoice_ref and not p.state.is_terminal
    }
    # Attempts already stored for these charges (a replay, or the portal's own retries).
    charges = unnest(sorted(charge_ids), sa.Text)
    attempts_known = {
        a.processor_attempt_id: a
        for a in (
            await uow.session.execute(
                select(PaymentAttempt)
                .select_from(charges)
                .join(
                    PaymentAttempt,
                    (col(PaymentAttempt.merchant_id) == merchant_id)
                    & (col(PaymentAttempt.processor_attempt_id) == charges.c.value),
                )
                .join(Payment, col(Payment.id) == col(PaymentAttempt.payment_id))
                .where(col(Payment.processor) == processor)
            )
        ).scalars()
    }
    attempt_counts = {p.id: p.attempt_count for p in known.values()}
    plan = _Plan()

    for raw_id, record in ordered:
        payment = by_charge.get(record.processor_payment_id)
        linked = open_by_invoice.get(record.invoice_ref) if record.invoice_ref else None
        target_id = payment.id if payment is not None else linked.id if linked else None
        existing_attempt = attempts_known.get(record.processor_payment_id)
        common = {
            "raw_record_id": raw_id,
            "normalizer_version": NORMALIZER_VERSION,
            "raw_decline_code": record.decline.raw_code[:64]
            if record.decline and record.decline.raw_code
            else None,
            "decline_category": record.decline.category if record.decline else None,
            # The rules read these on every attempt of the card, not only the first failure.
            "decline_retryable": record.decline.retryable if record.decline else None,
            "decline_advice": record.decline.advice if record.decline else None,
            "not_before": record.decline.not_before if record.decline else None,
            "network_decline_code": record.decline.network_decline_code if record.decline else None,
            "network_advice_code": record.decline.network_advice_code if record.decline else None,
        }
        if existing_attempt is not None:
            # Seen before (a replay, or our own retry read back): refresh its reading only.
            plan.attempt_updates.append({"id": existing_attempt.id, **common})
            if payment is not None and record.status == "failed":
                plan.payment_updates.append(
                    {
                        "id": payment.id,
                        **_decline_columns(record),
                        "normalizer_version": NORMALIZER_VERSION,
                    }
                )
            continue
        if record.status == "failed" and target_id is None:
            card = record.card
            fingerprint = _card_fingerprint(record)
            card_id = (
                card_ids.get((fingerprint, card.exp_month, card.exp_year))
                if card and fingerprint and card.exp_month and card.exp_year
                else None
            )
            new_id = uuid.uuid4()
            row = {
                "id": new_id,
                "merchant_id": merchant_id,
                "processor": processor,
                "processor_payment_id": record.processor_payment_id[:255],
                "amount_minor": record.amount_minor,
                "currency": record.currency,
                "customer_id": customer_ids[record.customer_id or UNKNOWN_CUSTOMER],
                "card_id": card_id,
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
            attempt_counts[new_id] = 1
            stub = Payment(**row)
            by_charge[record.processor_payment_id] = stub
            if record.invoice_ref:
                open_by_invoice[record.invoice_ref] = stub
            plan.attempts.append(
                _attempt_row(merchant_id, new_id, 1, record, AttemptOutcome.DECLINED, now, common)
            )
            stats.payments_created += 1
            continue
        if target_id is None:
            stats.ignored_successes += 1  # an ordinary successful charge: kept raw only
            continue
        number = attempt_counts[target_id] + 1
        attempt_counts[target_id] = number
        outcome = AttemptOutcome.DECLINED if record.status == "failed" else AttemptOutcome.SUCCEEDED
        plan.attempts.append(
            _attempt_row(merchant_id, target_id, number, record, outcome, now, common)
        )
        if outcome is AttemptOutcome.SUCCEEDED:
            plan.recoveries.append(
                {"id": target_id, "recovered_at": record.attempted_at, "attempt_count": number}
            )
            if record.invoice_ref:
                open_by_invoice.pop(record.invoice_ref, None)
            stats.recovered += 1
        else:
            plan.payment_updates.append({"id": target_id, "attempt_count": number})
    await _write(uow, plan, now)
    seen = [
        CardSeen(customer_ids[r.customer_id], card_id, r.invoice_ref, r.attempted_at, r.decline)
        for r in canon
        if r.customer_id and (card_id := _card_id(r, card_ids)) is not None
    ]
    applied = await apply_ingested_events(uow, paid=plan.recoveries, cards_seen=seen, now=now)
    stats.recovered = applied.recovered
    stats.attempts_recorded = len(plan.attempts)
    stats.normalized = len(records)
    return stats


def _card_id(
    record: CanonicalRecord, card_ids: dict[tuple[str, int, int], uuid.UUID]
) -> uuid.UUID | None:
    card, fingerprint = record.card, _card_fingerprint(record)
    if card is None or fingerprint is None or not card.exp_month or not card.exp_year:
        return None
    return card_ids.get((fingerprint, card.exp_month, card.exp_year))


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
    # executemany: compiled once, sent as batched multi-row inserts by the driver layer.
    if plan.payments:
        await session.execute(insert(Payment), plan.payments)
    if plan.attempts:
        await session.execute(insert(PaymentAttempt), plan.attempts)
    # The recoveries' state changes go through the state machine (`apply_ingested_events`).
    recoveries = [{"id": r["id"], "attempt_count": r["attempt_count"]} for r in plan.recoveries]
    for model, rows in (
        (PaymentAttempt, plan.attempt_updates),
        (Payment, [{**r, "updated_at": now} for r in plan.payment_updates + recoveries]),
    ):
        # ORM bulk UPDATE by primary key: one executemany per distinct set of columns.
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(sorted(row)), []).append(row)
        for group in groups.values():
            await session.execute(update(model), group)


async def normalize_raw(
    uow: UnitOfWork, connection: ProcessorConnection, raw_ids: Sequence[uuid.UUID], *, now: datetime
) -> IngestStats:
    """Normalize the given raw rows with the current normalizer; failures become dead letters."""
    stats = IngestStats()
    if not raw_ids:
        return stats
    rows = (
        await uow.session.execute(
            select(col(RawRecord.id), col(RawRecord.payload)).where(
                col(RawRecord.id) == any_array(list(raw_ids), sa.Uuid)
            )
        )
    ).all()
    good: list[tuple[uuid.UUID, CanonicalRecord]] = []
    letters: list[dict[str, Any]] = []
    for raw_id, payload in rows:
        try:
            results: list[CanonicalRecord | DeadLetterResult] = normalize_stored(
                connection.kind, payload, scrubbed=True
            )
        except NormalizeError as exc:
            results = [DeadLetterResult(reason=str(exc), payload_excerpt="")]
        if not results:
            results = [DeadLetterResult(reason="no payment record in payload", payload_excerpt="")]
        for result in results:
            if isinstance(result, DeadLetterResult):
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
    stats.add(await apply_records(uow, connection, good, now=now))
    for chunk in _chunks(letters):
        await uow.session.execute(
            insert(DeadLetter)
            .values(list(chunk))
            .on_conflict_do_nothing(index_elements=["raw_record_id", "normalizer_version"])
        )
    stats.dead_letters = len(letters)
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
            total.add(await normalize_raw(uow, connection, ids, now=clock.now()))
            await uow.commit()
        after = ids[-1]
