"""Each attempt counts against the card it was made on: the network caps follow the credential
a charge really hit, whoever made it, and a payment's ledger covers every card a retry of it
may hit."""

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from app.clock import FixedClock
from app.db import Database
from app.enums import AttemptOutcome, PaymentState, RetryStrategy
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment
from app.services.retry.engine import claim_due, lock_key
from app.services.retry.ledger import load_contexts
from app.tenancy import SYSTEM_SCOPE
from app.workflows.retry_attempt import execute_attempt
from tests.support.factories import make_merchant, set_strategy
from tests.support.retry import (
    FakeStripe,
    attempts_of,
    claim,
    decide,
    fingerprint_of,
    ingest,
    make_connection,
    reload,
    stripe_charge,
    timeline,
)

# A Monday 10:00 UTC, outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
P = PaymentState
# Card credentials by identity: fingerprint, expiry month, expiry year.
CARD_A, CARD_B = ("fpA", 4, 2029), ("fpB", 9, 2031)
DAY2 = T0 + timedelta(days=2)


async def _connection(db: Database) -> ProcessorConnection:
    merchant = await make_merchant(db, f"Cards {uuid.uuid4().hex[:6]}", now=T0)
    # These tests follow the fixed schedule's days; new merchants start on the model.
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    return await make_connection(db, merchant, T0)


async def _card_keys(db: Database, payment_id: uuid.UUID, now: datetime) -> set[str]:
    async with db.session(SYSTEM_SCOPE) as s:
        ctx = (await load_contexts(s, [payment_id], now=now))[payment_id]
    return {fingerprint for _, fingerprint in ctx.card_keys}


async def _card_history(db: Database, payment_id: uuid.UUID, now: datetime) -> int:
    async with db.session(SYSTEM_SCOPE) as s:
        ctx = (await load_contexts(s, [payment_id], now=now))[payment_id]
    return len(ctx.ledger.card_history)


async def _claimed(db: Database, now: datetime) -> list[uuid.UUID]:
    return [pid for pid, _ in await claim(db, now)]


def _sub_charge(
    charge_id: str, at: datetime, card: tuple[str, int, int], **kw: str
) -> dict[str, object]:
    """A charge of subscription sub_1 on a card (fingerprint, expiry month, expiry year)."""
    fingerprint, month, year = card
    return stripe_charge(
        charge_id,
        created=at,
        subscription="sub_1",
        fingerprint=fingerprint,
        exp=(month, year),
        **kw,  # type: ignore[arg-type]
    )


async def _replaced(db: Database) -> tuple[ProcessorConnection, Payment]:
    """P failed on card A with a "never"; on DAY2, card B paid the subscription's next invoice
    (so B replaced A) and P was decided again."""
    connection = await _connection(db)
    stolen = _sub_charge("ch_p", T0, CARD_A, reason="stolen_card")
    [p] = await ingest(db, connection, [stolen], T0)
    await decide(db, T0)
    paid = _sub_charge("ch_2", DAY2, CARD_B, status="succeeded", invoice="in_2")
    await ingest(db, connection, [paid], DAY2)
    await decide(db, DAY2)
    return connection, p


async def _claim_only_when_card_b_is_free(db: Database, database_url: str, p: Payment) -> None:
    """P is due; while another claimer (its own connection) holds card B, P is not claimed."""
    due = (await reload(db, p.id)).next_retry_at
    assert due is not None
    other = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock($1)", lock_key("card", p.merchant_id, "fpB")
            )
            assert await _claimed(db, due) == []
    finally:
        await other.close()
    assert await _claimed(db, due) == [p.id]


async def test_billing_system_retries_on_a_new_card_count_against_that_card(
    db: Database,
) -> None:
    """The Visa 30-day cap of 15 is reached on card B by another payment's retries on it."""
    connection = await _connection(db)
    first = stripe_charge("ch_p", created=T0, invoice="in_p", fingerprint="fpA")
    [p] = await ingest(db, connection, [first], T0)
    # The billing system retries P's invoice fourteen times on the customer's new card B.
    retries = [
        stripe_charge(
            f"ch_p_{i}",
            created=T0 + timedelta(hours=i + 1),
            invoice="in_p",
            fingerprint="fpB",
            exp=(9, 2031),
        )
        for i in range(14)
    ]
    await ingest(db, connection, retries, T0 + timedelta(days=1))
    attempts = await attempts_of(db, p.id)
    assert len(attempts) == 15
    assert await fingerprint_of(db, attempts[0].card_id) == "fpA"
    assert {await fingerprint_of(db, a.card_id) for a in attempts[1:]} == {"fpB"}
    # P itself may hit either card: both are in its ledger.
    assert await _card_keys(db, p.id, T0 + timedelta(days=1)) == {"fpA", "fpB"}

    # Another invoice of the customer fails on card B: the fifteenth attempt on it in 30 days.
    later = T0 + timedelta(days=1)
    other = stripe_charge("ch_q", created=later, invoice="in_q", fingerprint="fpB", exp=(9, 2031))
    [q] = await ingest(db, connection, [other], later)
    assert await _card_keys(db, q.id, later) == {"fpB"}
    assert await _card_history(db, q.id, later) == 15
    await decide(db, later)
    decided = await reload(db, q.id)
    assert decided.blocking_rule == "visa_reattempts_30d"
    # Not before the oldest attempt on card B leaves the window (which outlasts the policy's).
    assert decided.state is P.EXHAUSTED or (
        decided.next_retry_at is not None
        and decided.next_retry_at >= T0 + timedelta(hours=1, days=30)
    )


async def test_the_card_that_replaced_a_failed_one_brings_its_history(db: Database) -> None:
    """A hard "never" on card A lifts for card B; B's attempts elsewhere then count for P."""
    connection = await _connection(db)
    stolen = _sub_charge("ch_p", T0, CARD_A, reason="stolen_card")
    [p] = await ingest(db, connection, [stolen], T0)
    await decide(db, T0)
    assert (await reload(db, p.id)).state is P.NOT_RETRYABLE
    # Another subscription of the customer fails on card B (soft): an attempt on B.
    at_q = T0 + timedelta(hours=5)
    q_charge = stripe_charge(
        "ch_q", created=at_q, subscription="sub_2", fingerprint="fpB", exp=(9, 2031)
    )
    [q] = await ingest(db, connection, [q_charge], at_q)
    # Then P's subscription is paid with card B: the credential behind P was replaced.
    at_new = T0 + timedelta(days=2)
    paid = _sub_charge("ch_next", at_new, CARD_B, status="succeeded", invoice="in_next")
    await ingest(db, connection, [paid], at_new)
    reopened = await reload(db, p.id)
    assert reopened.state is P.PENDING
    assert reopened.credential_fingerprint == "fpB"
    assert await _card_keys(db, p.id, at_new) == {"fpA", "fpB"}
    # P's own first failure (on A) and Q's (on B).
    assert await _card_history(db, p.id, at_new) == 2
    assert await _card_keys(db, q.id, at_new) == {"fpB"}


async def test_a_portal_attempt_records_the_card_the_processor_charged(db: Database) -> None:
    connection = await _connection(db)
    [same, moved] = await ingest(
        db,
        connection,
        [
            stripe_charge("ch_1", created=T0, customer="cus_1", fingerprint="fp1"),
            stripe_charge("ch_2", created=T0, customer="cus_2", fingerprint="fp2"),
        ],
        T0,
    )
    await decide(db, T0)
    clock = FixedClock(T0 + timedelta(days=1))
    async with db.uow(SYSTEM_SCOPE) as uow:
        queued = (await claim_due(uow, now=clock.now())).enqueue
        await uow.commit()
    assert {pid for pid, _ in queued} == {same.id, moved.id}
    cards = {same.id: "fp1", moved.id: "fp2-other"}
    for pid, number in queued:
        stripe = FakeStripe(clock.now(), approve=False, fingerprint=cards[pid])
        result = await execute_attempt(
            db, payment_id=pid, attempt_number=number, adapters=stripe, clock=clock
        )
        assert result.status == "recorded"
    [_, on_same] = await attempts_of(db, same.id)
    assert on_same.outcome is AttemptOutcome.DECLINED
    assert on_same.card_id == same.card_id
    [_, on_moved] = await attempts_of(db, moved.id)
    # The processor charged another card than the failed one: it is stored and recorded.
    assert on_moved.card_id not in (None, moved.card_id)
    assert await fingerprint_of(db, on_moved.card_id) == "fp2-other"
    assert await _card_keys(db, moved.id, clock.now()) == {"fp2", "fp2-other"}
    # Its next decision counts the attempt once, though two card keys lead to it.
    assert await _card_history(db, moved.id, clock.now()) == 2


async def test_a_renewed_card_is_a_new_credential(db: Database) -> None:
    """Card B replaced A, then expired on P's invoice; B renewed (new expiry) lifts that."""
    connection, p = await _replaced(db)
    assert (await reload(db, p.id)).credential_fingerprint == "fpB"
    # The billing system retries P's invoice on B: expired.
    expired_at = DAY2 + timedelta(hours=3)
    expired = _sub_charge("ch_p_2", expired_at, CARD_B, reason="expired_card", invoice="in_ch_p")
    await ingest(db, connection, [expired], expired_at)
    due = (await reload(db, p.id)).next_retry_at
    assert due is not None
    assert await _claimed(db, max(due, expired_at)) == []
    blocked = await reload(db, p.id)
    assert (blocked.state, blocked.blocking_rule) == (P.NOT_RETRYABLE, "update_credentials")
    # B with its new expiry pays the next invoice: the expiry decline no longer binds.
    day10 = T0 + timedelta(days=10)
    renewed_b = ("fpB", 9, 2035)
    renewed = _sub_charge("ch_3", day10, renewed_b, status="succeeded", invoice="in_3")
    await ingest(db, connection, [renewed], day10)
    reopened = await reload(db, p.id)
    assert (reopened.state, reopened.credential_since) == (P.PENDING, day10)


async def test_a_card_used_with_soft_declines_lifts_a_never_on_another_card(
    db: Database,
) -> None:
    connection = await _connection(db)
    [p] = await ingest(db, connection, [_sub_charge("ch_p", T0, CARD_A, invoice="in_p")], T0)
    await decide(db, T0)
    # The billing system retries P's invoice on B (soft), then on A: stolen.
    soft_at, never_at = T0 + timedelta(hours=3), T0 + timedelta(hours=6)
    await ingest(db, connection, [_sub_charge("ch_p_2", soft_at, CARD_B, invoice="in_p")], soft_at)
    await decide(db, soft_at)
    never = _sub_charge("ch_p_3", never_at, CARD_A, invoice="in_p", reason="stolen_card")
    await ingest(db, connection, [never], never_at)
    # B pays the subscription's next invoice: the "never" on A does not bind a charge on B.
    day4 = T0 + timedelta(days=4)
    paid = _sub_charge("ch_next", day4, CARD_B, status="succeeded", invoice="in_next")
    await ingest(db, connection, [paid], day4)
    after = await reload(db, p.id)
    assert after.credential_since == day4
    assert after.needs_decision
    await decide(db, day4)
    assert (await reload(db, p.id)).state is P.SCHEDULED


async def test_an_attempt_of_unknown_card_counts_on_the_replacing_card_too(
    db: Database,
) -> None:
    """P's card A was replaced by B; P's in-flight retry is seen by Q, which is on card B."""
    connection, p = await _replaced(db)
    assert (await reload(db, p.id)).credential_fingerprint == "fpB"
    due = (await reload(db, p.id)).next_retry_at
    assert due is not None
    assert await _claimed(db, due) == [p.id]
    # While P's retry is in flight (its card unknown yet), another subscription of the
    # customer fails on B: Q's ledger counts P's attempt on B, as well as its own failure.
    q_at = due + timedelta(minutes=5)
    other = stripe_charge(
        "ch_q", created=q_at, subscription="sub_2", fingerprint="fpB", exp=(9, 2031)
    )
    [q] = await ingest(db, connection, [other], q_at)
    assert await _card_keys(db, q.id, q_at) == {"fpB"}
    assert await _card_history(db, q.id, q_at) == 2


async def test_a_card_the_payment_was_declined_on_is_not_a_new_credential(
    db: Database,
) -> None:
    """The billing system's retry hit card C with a "never"; C seen later lifts nothing."""
    connection = await _connection(db)
    [p] = await ingest(db, connection, [_sub_charge("ch_p", T0, CARD_A, invoice="in_p")], T0)
    await decide(db, T0)
    at = T0 + timedelta(hours=3)
    card_c = ("fpC", 9, 2031)
    never = _sub_charge("ch_p_2", at, card_c, invoice="in_p", reason="stolen_card")
    await ingest(db, connection, [never], at)
    later = T0 + timedelta(days=2)
    paid = _sub_charge("ch_next", later, card_c, status="succeeded", invoice="in_next")
    await ingest(db, connection, [paid], later)
    after = await reload(db, p.id)
    assert after.credential_since is None
    assert "credential_updated" not in [t.event for t in await timeline(db, p.id)]
    # The "never" on card C, which a retry would charge, still binds: the due retry is
    # not started.
    async with db.uow(SYSTEM_SCOPE) as uow:
        queued = (await claim_due(uow, now=later)).enqueue
        await uow.commit()
    assert queued == []
    ended = await reload(db, p.id)
    assert (ended.state, ended.blocking_rule) == (P.NOT_RETRYABLE, "decline_advice_never")


async def test_claim_holds_every_card_the_ledger_counts(db: Database, database_url: str) -> None:
    """A payment whose attempt hit card B waits while another claimer holds card B."""
    connection = await _connection(db)
    first = stripe_charge("ch_p", created=T0, invoice="in_p", fingerprint="fpA")
    [p] = await ingest(db, connection, [first], T0)
    retried = stripe_charge(
        "ch_p_2", created=T0 + timedelta(hours=1), invoice="in_p", fingerprint="fpB"
    )
    await ingest(db, connection, [retried], T0 + timedelta(hours=1))
    await decide(db, T0 + timedelta(hours=1))
    due = (await reload(db, p.id)).next_retry_at
    assert due is not None
    await _claim_only_when_card_b_is_free(db, database_url, p)


async def test_claim_holds_the_card_that_replaced_the_failed_one(
    db: Database, database_url: str
) -> None:
    _, p = await _replaced(db)
    await _claim_only_when_card_b_is_free(db, database_url, p)
