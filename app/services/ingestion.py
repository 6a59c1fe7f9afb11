"""Ingestion: land raw records first, then normalize them into customers, cards, payments and
attempts with set-based upserts. Idempotent: landing the same record twice stores it once, and
re-normalizing (replay) updates the clean rows in place."""

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from app.bulk import any_array, insert_rows, unnest, update_rows
from app.db import UnitOfWork
from app.declines import Decline
from app.enums import Actor, AttemptOutcome, CardFunding, PaymentState, Processor
from app.models.base import time_ordered_id
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
from app.timezones import Place, place_of

CHUNK = 1000
# A stored card credential's identity: fingerprint, expiry month, expiry year.
CardKey = tuple[str, int, int]
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


# A batch claims its records' once-only keys in statements of CHUNK keys, all in one
# content-hash order: the batch is sorted before it is cut into chunks, and each statement
# keeps that order (byte order, as Python compares the hex digests, whatever the database's
# collation). Two transactions landing overlapping records then wait for each other in one
# order, never crosswise, however many chunks each needs and in whatever order the records
# came. RETURNING gives exactly the ids whose keys were free, so whose rows are new. The
# trigger on raw_record lets a row whose key its id already holds go in without claiming it
# again (migration 0033); any other row claims its key itself, as before.
_CLAIM_KEYS = text(
    """
    INSERT INTO raw_record_key (connection_id, content_hash, raw_record_id, received_at)
    SELECT :connection_id, k.content_hash, k.id, :received_at
    FROM unnest(CAST(:ids AS uuid[]), CAST(:hashes AS text[])) AS k(id, content_hash)
    ORDER BY k.content_hash COLLATE "C"
    ON CONFLICT (connection_id, content_hash) DO NOTHING
    RETURNING raw_record_id
    """
)
# Raw rows go in by binary COPY, one row per new record.
_RAW_COLUMNS = (
    "id",
    "merchant_id",
    "connection_id",
    "processor",
    "external_id",
    "received_at",
    "content_hash",
    "payload",
    "normalized_at",
    "normalizer_version",
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
            landings.append(_Landing(time_ordered_id(), item, item.body.decode(), item.payload))
        else:
            payload = _scrubbed(item.payload)
            text_ = json.dumps(payload, sort_keys=True, separators=(",", ":"))
            landings.append(_Landing(time_ordered_id(), item, text_, payload))
    return landings, len(items) - len(unique)


async def _insert_raw(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    landings: Sequence[_Landing],
    *,
    now: datetime,
    normalized: bool,
) -> set[uuid.UUID]:
    """Insert the rows not stored yet (by content hash); the ids of those that were new.

    Their keys are claimed first, by a statement that also begins the transaction the
    `COPY` then joins: the keys and the rows commit together or not at all."""
    new_ids: set[uuid.UUID] = set()
    session = uow.session
    # Claimed in content-hash order across the whole batch; everything after (the rows
    # copied, the ids returned) keeps the batch's own order.
    claims = sorted(landings, key=lambda landing: landing.item.content_hash)
    for start in range(0, len(claims), CHUNK):
        chunk = claims[start : start + CHUNK]
        claimed = await session.execute(
            _CLAIM_KEYS,
            {
                "connection_id": connection.id,
                "received_at": now,
                "ids": [landing.id for landing in chunk],
                "hashes": [landing.item.content_hash for landing in chunk],
            },
        )
        new_ids.update(claimed.scalars())
    if not new_ids:
        return new_ids
    merchant_id, connection_id, processor = (
        connection.merchant_id,
        connection.id,
        connection.kind.value,
    )
    normalized_at = now if normalized else None
    version = NORMALIZER_VERSION if normalized else None
    records = [
        (
            x.id,
            merchant_id,
            connection_id,
            processor,
            (x.item.external_id or "")[:255] or None,
            now,
            x.item.content_hash,
            x.text,
            normalized_at,
            version,
        )
        for x in landings
        if x.id in new_ids
    ]
    raw = await (await session.connection()).get_raw_connection()
    driver = raw.driver_connection
    if driver is None:
        raise RuntimeError("no database connection to copy raw records into")
    await driver.copy_records_to_table("raw_record", records=records, columns=_RAW_COLUMNS)
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


async def land_groups(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    groups: Sequence[Sequence[RawItem]],
    *,
    now: datetime,
    normalized: bool = False,
) -> list[list[uuid.UUID]]:
    """`land` for several groups of records in one statement: for each group, the ids of its
    rows that were new, in the order `land` gives them. A record in two groups is new for the
    first only, as if the groups had landed one after the other."""
    landings, _ = _prepare([item for group in groups for item in group])
    new_ids = await _insert_raw(uow, connection, landings, now=now, normalized=normalized)
    fresh = {x.item.content_hash: x.id for x in landings if x.id in new_ids}
    found: list[list[uuid.UUID]] = []
    for group in groups:
        ids: list[uuid.UUID] = []
        for item in group:
            landed = fresh.pop(item.content_hash, None)
            if landed is not None:
                ids.append(landed)
        found.append(ids)
    return found


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


def _card_key(record: CanonicalRecord) -> CardKey | None:
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


# RETURNING gives the customers this statement created (with the batch's place already).
_INSERT_CUSTOMERS = text(
    """
    INSERT INTO customer (id, merchant_id, external_ref, country, timezone, created_at)
    SELECT r.id, :merchant_id, r.ref, r.country, r.timezone, :now
    FROM unnest(CAST(:ids AS uuid[]), CAST(:refs AS text[]), CAST(:countries AS text[]),
                CAST(:zones AS text[]))
         AS r(id, ref, country, timezone)
    ON CONFLICT (merchant_id, external_ref) DO NOTHING
    RETURNING external_ref, id
    """
)
# A stored customer's place from the batch (docs/domain.md §5): a billing address replaces it
# (the customer may have moved), an issuer's country only fills a customer that has none. A
# country without a zone keeps the zone it had, unless the country itself changed. Rows are
# locked in id order, so two batches placing the same customers cannot deadlock.
_UPDATE_PLACES = text(
    """
    WITH target AS (
        SELECT c.id, r.country, r.timezone
        FROM unnest(CAST(:refs AS text[]), CAST(:countries AS text[]),
                    CAST(:zones AS text[]), CAST(:billed AS boolean[]))
             AS r(ref, country, timezone, billed)
        JOIN customer AS c ON c.merchant_id = :merchant_id AND c.external_ref = r.ref
        WHERE (r.billed OR c.country IS NULL)
          AND (c.country IS DISTINCT FROM r.country
               OR (r.timezone IS NOT NULL AND c.timezone IS DISTINCT FROM r.timezone))
        ORDER BY c.id
        FOR UPDATE OF c
    )
    UPDATE customer AS c
    SET country = t.country,
        timezone = CASE WHEN t.timezone IS NOT NULL THEN t.timezone
                        WHEN c.country IS DISTINCT FROM t.country THEN NULL
                        ELSE c.timezone END
    FROM target AS t
    WHERE c.id = t.id
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


def _places(records: Sequence[CanonicalRecord]) -> dict[str, Place]:
    """Each known customer's place from the batch: a billing address over an issuer's
    country, the latest record of the stronger kind winning."""
    best: dict[str, tuple[bool, datetime, Place]] = {}
    for record in records:
        ref = record.customer_id
        issuer = record.card.country if record.card is not None else None
        place = place_of(record.billing_country, record.billing_region, issuer)
        if ref is None or ref == UNKNOWN_CUSTOMER or place is None:
            continue
        rank = (place.from_billing, record.attempted_at)
        if ref not in best or rank > best[ref][:2]:
            best[ref] = (*rank, place)
    return {ref: place for ref, (_, _, place) in best.items()}


async def _upsert_customers(
    uow: UnitOfWork, merchant_id: uuid.UUID, records: Sequence[CanonicalRecord], now: datetime
) -> dict[str, uuid.UUID]:
    """Ids of the merchant's customers by processor reference, creating the missing ones with
    their place, and placing stored ones the batch tells more about (insert-if-absent, one
    update of the rows whose place changes, then one read of the customers stored before: no
    rewrite of unchanged rows, no read of the rows just created)."""
    places = _places(records)
    ordered = sorted({r.customer_id or UNKNOWN_CUSTOMER for r in records})
    zones = {ref: place.timezone for ref, place in places.items()}
    inserted = await uow.session.execute(
        _INSERT_CUSTOMERS,
        {
            "merchant_id": merchant_id,
            "ids": [time_ordered_id() for _ in ordered],
            "refs": ordered,
            "countries": [places[r].country if r in places else None for r in ordered],
            "zones": [zones.get(r) for r in ordered],
            "now": now,
        },
    )
    created: dict[str, uuid.UUID] = {ref: cid for ref, cid in inserted.all()}  # noqa: C416
    # A customer created here already has the batch's place: only stored ones may move.
    placed = sorted(ref for ref in places if ref not in created)
    if placed:
        await uow.session.execute(
            _UPDATE_PLACES,
            {
                "merchant_id": merchant_id,
                "refs": placed,
                "countries": [places[r].country for r in placed],
                "zones": [zones[r] for r in placed],
                "billed": [places[r].from_billing for r in placed],
            },
        )
    stored = [ref for ref in ordered if ref not in created]
    if not stored:
        return created
    wanted = unnest(stored, sa.Text)
    rows = await uow.session.execute(
        select(col(Customer.external_ref), col(Customer.id))
        .select_from(wanted)
        .join(
            Customer,
            (col(Customer.merchant_id) == merchant_id)
            & (col(Customer.external_ref) == wanted.c.value),
        )
    )
    return {**created, **{ref: cid for ref, cid in rows.all()}}  # noqa: C416 - rows, not pairs


async def _upsert_cards(
    uow: UnitOfWork,
    merchant_id: uuid.UUID,
    records: Sequence[CanonicalRecord],
    customer_ids: dict[str, uuid.UUID],
    now: datetime,
) -> dict[CardKey, uuid.UUID]:
    cards: dict[CardKey, tuple[uuid.UUID, CanonicalCard]] = {}
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
    known: tuple[CardKey, uuid.UUID] | None,
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


# --- One normalization batch, step by step (`apply_records` reads top to bottom) ----------


@dataclass(frozen=True, slots=True)
class _Batch:
    """Canonical records to write for one connection, in the order they happened."""

    merchant_id: uuid.UUID
    connection_id: uuid.UUID
    processor: Processor
    now: datetime
    # (raw record id, record), by time then charge id: a payment's attempts number in order.
    charges: list[tuple[uuid.UUID, CanonicalRecord]]

    @property
    def records(self) -> list[CanonicalRecord]:
        return [record for _, record in self.charges]


@dataclass(frozen=True, slots=True)
class _NewPayment:
    """A failure on no payment in recovery: it opens a payment (and is its attempt 1).
    `decline` is the record's own (a failed record always carries one)."""

    id: uuid.UUID
    record: CanonicalRecord
    decline: Decline


@dataclass(frozen=True, slots=True)
class _NewAttempt:
    """A charge on a payment, recorded as its attempt `number`."""

    payment_id: uuid.UUID
    number: int
    outcome: AttemptOutcome
    raw_id: uuid.UUID
    record: CanonicalRecord
    id: uuid.UUID = field(default_factory=time_ordered_id)


@dataclass(frozen=True, slots=True)
class _StoredAttempt:
    """An attempt stored for one of the batch's charges; `portal` when the portal made it (its
    actor is what the portal recorded, never what a reading says)."""

    id: uuid.UUID
    payment_id: uuid.UUID
    portal: bool


@dataclass(frozen=True, slots=True)
class _Reread:
    """An attempt already stored (a replay, or the portal's own charge read back): only its
    reading is refreshed."""

    attempt: _StoredAttempt
    raw_id: uuid.UUID
    record: CanonicalRecord


@dataclass(frozen=True, slots=True)
class _DeclineReread:
    """A stored payment's first failure read again: its decline columns are refreshed."""

    payment_id: uuid.UUID
    decline: Decline


@dataclass(frozen=True, slots=True)
class _AttemptCount:
    """A payment's attempt count after a later failure."""

    payment_id: uuid.UUID
    attempt_count: int


@dataclass(frozen=True, slots=True)
class _Recovery:
    """A success on a payment in recovery, or on one that ended unpaid: it was paid, by the
    charge's actor."""

    payment_id: uuid.UUID
    recovered_at: datetime
    attempt_count: int
    actor: Actor


@dataclass
class _Plan:
    """The writes one batch decided on, each list in the order of the records."""

    payments: list[_NewPayment] = field(default_factory=list)
    attempts: list[_NewAttempt] = field(default_factory=list)
    rereads: list[_Reread] = field(default_factory=list)
    payment_updates: list[_DeclineReread | _AttemptCount] = field(default_factory=list)
    recoveries: list[_Recovery] = field(default_factory=list)
    ordinary: list[CanonicalRecord] = field(default_factory=list)


@dataclass
class _Links:
    """What the batch's charges belong to: stored payments and attempts at first, then also
    what the batch itself opened, added and recovered as it is planned."""

    by_charge: dict[str, uuid.UUID]
    open_by_invoice: dict[str, uuid.UUID]
    # Invoices whose recovery ended unpaid: a success on one still recovers its payment.
    unpaid_by_invoice: dict[str, uuid.UUID]
    attempt_counts: dict[uuid.UUID, int]
    stored_attempts: dict[str, _StoredAttempt]

    def target(self, record: CanonicalRecord) -> uuid.UUID | None:
        """The payment a charge adds an attempt to: its own, else its invoice's in recovery."""
        own = self.by_charge.get(record.processor_payment_id)
        invoice = record.invoice_ref
        linked = self.open_by_invoice.get(invoice) if invoice else None
        if linked is None and invoice and record.status == "succeeded":
            linked = self.unpaid_by_invoice.get(invoice)
        return own or linked

    def open(self, record: CanonicalRecord) -> uuid.UUID:
        payment_id = time_ordered_id()
        self.attempt_counts[payment_id] = 1
        self.by_charge[record.processor_payment_id] = payment_id
        if record.invoice_ref:
            self.open_by_invoice[record.invoice_ref] = payment_id
        return payment_id

    def next_number(self, payment_id: uuid.UUID) -> int:
        self.attempt_counts[payment_id] += 1
        return self.attempt_counts[payment_id]

    def paid(self, record: CanonicalRecord) -> None:
        if record.invoice_ref:
            self.open_by_invoice.pop(record.invoice_ref, None)
            self.unpaid_by_invoice.pop(record.invoice_ref, None)


@dataclass(frozen=True, slots=True)
class _StoredIds:
    """The ids of the batch's customers and cards, once they are stored."""

    customers: dict[str, uuid.UUID]
    cards: dict[CardKey, uuid.UUID]

    def customer(self, record: CanonicalRecord) -> uuid.UUID:
        return self.customers[record.customer_id or UNKNOWN_CUSTOMER]

    def card(self, record: CanonicalRecord) -> uuid.UUID | None:
        key = _card_key(record)
        return self.cards.get(key) if key is not None else None


async def apply_records(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    records: Sequence[tuple[uuid.UUID, CanonicalRecord]],
    *,
    now: datetime,
) -> IngestStats:
    """Turn canonical records into rows. A failure opens a payment (or, for an invoice already
    in recovery, adds an attempt to it); a success on such an invoice recovers it."""
    if not records:
        return IngestStats()
    batch = _Batch(
        connection.merchant_id,
        connection.id,
        connection.kind,
        now,
        sorted(records, key=lambda r: (r[1].attempted_at, r[1].processor_payment_id)),
    )
    customers = await _upsert_customers(uow, batch.merchant_id, batch.records, now)
    plan = _plan(batch, await _links(uow, batch))
    ids = _StoredIds(customers, await _store_cards(uow, batch, plan, customers))
    # Writes to payments update the merchant's recovery rollups (statement triggers), whose
    # rows stay locked until the batch commits: everything else goes first, so another batch
    # of the same merchant (another connection, another poller) waits as briefly as can be.
    await record_successes(uow, batch.merchant_id, batch.processor, plan.ordinary, customers)
    await _write(uow, batch, plan, ids)
    await _reattribute(uow, plan, now)
    applied = await apply_ingested_events(
        uow,
        paid=[
            {"id": r.payment_id, "recovered_at": r.recovered_at, "actor": r.actor}
            for r in plan.recoveries
        ],
        cards_seen=_cards_seen(batch, customers),
        now=now,
    )
    return IngestStats(
        normalized=len(records),
        payments_created=len(plan.payments),
        attempts_recorded=len(plan.attempts),
        recovered=applied.recovered,
        ignored_successes=len(plan.ordinary),
    )


async def _known_payments(uow: UnitOfWork, batch: _Batch) -> list[Payment]:
    """The stored payments of the batch's charges and of its invoices."""
    known: dict[uuid.UUID, Payment] = {}
    records = batch.records
    # Lookups by `= ANY(array)`: the planner takes the matching composite index as long as
    # the table's statistics are current (see polling.refresh_statistics for backfills).
    for column, values in (
        (col(Payment.processor_payment_id), {r.processor_payment_id for r in records}),
        (col(Payment.invoice_ref), {r.invoice_ref for r in records if r.invoice_ref}),
    ):
        if not values:
            continue
        found = await uow.session.execute(
            select(Payment).where(
                col(Payment.merchant_id) == batch.merchant_id,
                col(Payment.processor) == batch.processor,
                column == any_array(sorted(values), sa.Text),
            )
        )
        known.update({p.id: p for p in found.scalars()})
    return list(known.values())


async def _stored_attempts(
    uow: UnitOfWork, batch: _Batch, known: Sequence[Payment]
) -> dict[str, _StoredAttempt]:
    """Attempts already stored for the batch's charges (a replay, or the portal's own
    retries), by charge id."""
    charge_ids = sorted({r.processor_payment_id for r in batch.records})
    stored = list(
        (
            await uow.session.execute(
                select(PaymentAttempt).where(
                    col(PaymentAttempt.merchant_id) == batch.merchant_id,
                    col(PaymentAttempt.processor_attempt_id) == any_array(charge_ids, sa.Text),
                )
            )
        ).scalars()
    )
    # Charge ids are the processor's own: the same id seen on another processor's payment is
    # another charge.
    ours = {p.id for p in known}
    unseen = {a.payment_id for a in stored if a.payment_id not in ours}
    elsewhere: set[uuid.UUID] = set()
    if unseen:
        rows = await uow.session.execute(
            select(col(Payment.id), col(Payment.processor)).where(
                col(Payment.id) == any_array(sorted(unseen), sa.Uuid)
            )
        )
        elsewhere = {pid for pid, kind in rows.all() if kind is not batch.processor}
    return {
        a.processor_attempt_id: _StoredAttempt(a.id, a.payment_id, a.actor is Actor.PORTAL)
        for a in stored
        if a.processor_attempt_id is not None and a.payment_id not in elsewhere
    }


async def _links(uow: UnitOfWork, batch: _Batch) -> _Links:
    known = await _known_payments(uow, batch)
    # An invoice whose recovery ended unpaid (retries exhausted, or never retryable) can still
    # be paid: the customer paid out of band, or the billing system retried on its own. Its
    # success recovers that payment; a new failure on it opens a new one. Latest payment wins.
    ended_unpaid = sorted(
        (p for p in known if p.invoice_ref and p.state in ENDED_UNPAID),
        key=lambda p: p.first_failed_at,
    )
    return _Links(
        by_charge={p.processor_payment_id: p.id for p in known},
        open_by_invoice={
            p.invoice_ref: p.id for p in known if p.invoice_ref and not p.state.is_terminal
        },
        unpaid_by_invoice={p.invoice_ref: p.id for p in ended_unpaid if p.invoice_ref},
        attempt_counts={p.id: p.attempt_count for p in known},
        stored_attempts=await _stored_attempts(uow, batch, known),
    )


def _plan(batch: _Batch, links: _Links) -> _Plan:
    """What each charge is, in order: a stored attempt read again, an attempt on a payment
    (a success on one recovers it), a failure that opens a payment, or an ordinary success
    (pay-cycle evidence only)."""
    plan = _Plan()
    for raw_id, record in batch.charges:
        own = links.by_charge.get(record.processor_payment_id)
        stored = links.stored_attempts.get(record.processor_payment_id)
        if stored is not None:
            plan.rereads.append(_Reread(stored, raw_id, record))
            if own is not None and record.decline is not None:
                plan.payment_updates.append(_DeclineReread(own, record.decline))
        elif (target := links.target(record)) is not None:
            _add_attempt(plan, links, target, raw_id, record)
        elif record.actor is Actor.PORTAL and record.decline is not None:
            # The portal's own retry declined, read before the retry recorded it and on no
            # invoice that links it: that retry records it, it opens no payment of its own.
            continue
        elif record.decline is not None:  # a failure: only failed records carry a decline
            payment_id = links.open(record)
            plan.payments.append(_NewPayment(payment_id, record, record.decline))
            plan.attempts.append(
                _NewAttempt(payment_id, 1, AttemptOutcome.DECLINED, raw_id, record)
            )
        else:
            plan.ordinary.append(record)
    return plan


def _add_attempt(
    plan: _Plan, links: _Links, payment_id: uuid.UUID, raw_id: uuid.UUID, record: CanonicalRecord
) -> None:
    number = links.next_number(payment_id)
    if record.status == "failed":
        plan.attempts.append(
            _NewAttempt(payment_id, number, AttemptOutcome.DECLINED, raw_id, record)
        )
        plan.payment_updates.append(_AttemptCount(payment_id, number))
        return
    plan.attempts.append(_NewAttempt(payment_id, number, AttemptOutcome.SUCCEEDED, raw_id, record))
    plan.recoveries.append(_Recovery(payment_id, record.attempted_at, number, record.actor))
    links.paid(record)


async def _store_cards(
    uow: UnitOfWork, batch: _Batch, plan: _Plan, customers: dict[str, uuid.UUID]
) -> dict[CardKey, uuid.UUID]:
    """Cards are stored for every attempt (the network caps count each attempt against the
    card it hit), and so for the payments opened here (the credential a retry would charge);
    not for ordinary successes, which are most of the records."""
    records = [a.record for a in plan.attempts] + [r.record for r in plan.rereads]
    return await _upsert_cards(uow, batch.merchant_id, records, customers, batch.now)


# The decline columns of an attempt that was not declined.
_NO_DECLINE: dict[str, object] = dict.fromkeys(DeclineColumns.__annotations__)


def _reading(raw_id: uuid.UUID, record: CanonicalRecord) -> dict[str, object]:
    """An attempt's columns that each reading of its charge (re)writes."""
    decline = record.decline
    return {
        "raw_record_id": raw_id,
        "normalizer_version": NORMALIZER_VERSION,
        # The rules read these on every attempt of the card, not only the first failure.
        **(decline_columns(decline) if decline is not None else _NO_DECLINE),
        "not_before": decline.not_before if decline is not None else None,
    }


def _payment_row(p: _NewPayment, batch: _Batch, ids: _StoredIds) -> dict[str, object]:
    record = p.record
    return {
        "id": p.id,
        "merchant_id": batch.merchant_id,
        "processor": batch.processor,
        "processor_payment_id": record.processor_payment_id[:255],
        "amount_minor": record.amount_minor,
        "currency": record.currency,
        "customer_id": ids.customer(record),
        "card_id": ids.card(record),
        "invoice_ref": record.invoice_ref,
        "subscription_ref": record.subscription_ref,
        "first_failed_at": record.attempted_at,
        **decline_columns(p.decline),
        "state": PaymentState.PENDING,
        "attempt_count": 1,
        "connection_id": batch.connection_id,
        "normalizer_version": NORMALIZER_VERSION,
        "created_at": batch.now,
        "updated_at": batch.now,
    }


def _attempt_row(a: _NewAttempt, batch: _Batch, ids: _StoredIds) -> dict[str, object]:
    return {
        "id": a.id,
        "merchant_id": batch.merchant_id,
        "payment_id": a.payment_id,
        "number": a.number,
        "attempted_at": a.record.attempted_at,
        "outcome": a.outcome,
        "actor": a.record.actor,
        "processor_attempt_id": a.record.processor_payment_id[:255],
        "created_at": batch.now,
        **_reading(a.raw_id, a.record),
        "card_id": ids.card(a.record),
    }


def _reread_row(r: _Reread, ids: _StoredIds) -> dict[str, object]:
    row = {"id": r.attempt.id, **_reading(r.raw_id, r.record)}
    if not r.attempt.portal:
        # Who made a charge is part of its reading (a replay re-attributes it); the portal's
        # own attempts keep the actor the portal recorded.
        row["actor"] = r.record.actor
    # A stored attempt keeps the card it has when this reading of it shows none.
    if (card_id := ids.card(r.record)) is not None:
        row["card_id"] = card_id
    return row


def _payment_update(
    u: _DeclineReread | _AttemptCount | _Recovery, now: datetime
) -> dict[str, object]:
    if isinstance(u, _DeclineReread):
        columns = {**decline_columns(u.decline), "normalizer_version": NORMALIZER_VERSION}
    else:
        columns = {"attempt_count": u.attempt_count}
    return {"id": u.payment_id, **columns, "updated_at": now}


async def _write(uow: UnitOfWork, batch: _Batch, plan: _Plan, ids: _StoredIds) -> None:
    """One statement per table and kind of write (updates: per set of columns)."""
    session = uow.session
    await insert_rows(session, Payment, [_payment_row(p, batch, ids) for p in plan.payments])
    await insert_rows(session, PaymentAttempt, [_attempt_row(a, batch, ids) for a in plan.attempts])
    await update_rows(session, PaymentAttempt, [_reread_row(r, ids) for r in plan.rereads])
    # Rows of one payment merge, later ones winning: a recovery's count comes last. Its state
    # change goes through the state machine (`apply_ingested_events`).
    updates = [*plan.payment_updates, *plan.recoveries]
    await update_rows(session, Payment, [_payment_update(u, batch.now) for u in updates])


# A payment recovered by a charge read from the processor was recovered by that charge's actor:
# when a reading (a replay) re-attributes the charge, the recovery follows. A recovery by the
# portal's own charge is the portal's, whatever a reading says.
_REATTRIBUTE = text(
    """
    UPDATE payment AS p
    SET recovered_by = a.actor, updated_at = :now
    FROM (SELECT DISTINCT ON (payment_id) payment_id, actor
          FROM payment_attempt
          WHERE payment_id = ANY(CAST(:ids AS uuid[])) AND outcome = 'succeeded'
          ORDER BY payment_id, number) AS a
    WHERE p.id = a.payment_id AND p.state = 'RECOVERED'
      AND p.recovered_by <> 'portal' AND a.actor <> 'portal'
      AND p.recovered_by IS DISTINCT FROM a.actor
    """
)


async def _reattribute(uow: UnitOfWork, plan: _Plan, now: datetime) -> None:
    """Align the recoveries of re-read successful charges with their actors (one statement;
    none when the batch re-read no success made outside the portal)."""
    ids = sorted(
        {
            r.attempt.payment_id
            for r in plan.rereads
            if r.record.status == "succeeded" and not r.attempt.portal
        }
    )
    if ids:
        await uow.session.execute(_REATTRIBUTE, {"ids": ids, "now": now})


def _cards_seen(batch: _Batch, customers: dict[str, uuid.UUID]) -> list[CardSeen]:
    """Every charge of a known customer on an identifiable card, for the credential events."""
    return [
        CardSeen(
            customers[r.customer_id],
            card,
            r.invoice_ref,
            r.subscription_ref,
            r.attempted_at,
            r.decline,
        )
        for r in batch.records
        if r.customer_id and (card := _card_key(r)) is not None
    ]


def _normalize_one(processor: Processor, payload: object) -> list[CanonicalRecord | RejectedRecord]:
    """Every result of one stored (scrubbed) payload; never raises."""
    try:
        results = normalize_stored(processor, payload, scrubbed=True)
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
    good = [
        (raw_id, r) for raw_id, found in results for r in found if isinstance(r, CanonicalRecord)
    ]
    rejected = [
        (raw_id, r) for raw_id, found in results for r in found if isinstance(r, RejectedRecord)
    ]
    await _store_dead_letters(uow, connection, rejected, now)
    stats = await apply_records(uow, connection, good, now=now)
    stats.dead_letters = len(rejected)
    return stats


async def _store_dead_letters(
    uow: UnitOfWork,
    connection: ProcessorConnection,
    rejected: Sequence[tuple[uuid.UUID, RejectedRecord]],
    now: datetime,
) -> None:
    """One dead letter per rejected record, once per raw row and normalizer version."""
    for start in range(0, len(rejected), CHUNK):
        rows = [
            {
                "id": uuid.uuid4(),
                "merchant_id": connection.merchant_id,
                "connection_id": connection.id,
                "raw_record_id": raw_id,
                "normalizer_version": NORMALIZER_VERSION,
                "reason": letter.reason[:2000],
                "created_at": now,
            }
            for raw_id, letter in rejected[start : start + CHUNK]
        ]
        await uow.session.execute(
            insert(DeadLetter)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["raw_record_id", "normalizer_version"])
        )


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
