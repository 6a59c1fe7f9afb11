"""The decide cron's sweeps: closed windows end held payments, policy changes re-decide."""

import uuid
from datetime import UTC, datetime, timedelta

from app.db import Database
from app.enums import MerchantStatus, PaymentState, RetryStrategy
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.services.retry.sweeps import expire_windows, redecide_scheduled
from app.services.retry_policy import PolicyChanges, update_retry_policy
from app.tenancy import SYSTEM_SCOPE, system_principal
from tests.support.factories import make_merchant, set_strategy
from tests.support.retry import (
    decide,
    ingest,
    make_connection,
    outbox,
    reload,
    stripe_charge,
    timeline,
)

# A Monday 10:00 UTC: outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
P = PaymentState
WINDOW = timedelta(days=14)  # the default policy's window


async def _payment(db: Database, **kw: object) -> Payment:
    merchant = await make_merchant(db, f"Sweeps {uuid.uuid4().hex[:6]}", now=T0)
    # These tests follow the fixed schedule's days; new merchants start on the model.
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, T0)
    charge = stripe_charge(f"ch_{uuid.uuid4().hex[:10]}", created=T0, **kw)  # type: ignore[arg-type]
    [payment] = await ingest(db, connection, [charge], T0)
    return payment


async def _expire(db: Database, now: datetime) -> int:
    async with db.uow(SYSTEM_SCOPE) as uow:
        done = await expire_windows(uow, now=now)
        await uow.commit()
    return done


async def _redecide(db: Database, now: datetime) -> int:
    async with db.uow(SYSTEM_SCOPE) as uow:
        done = await redecide_scheduled(uow, now=now)
        await uow.commit()
    return done


async def _set_status(db: Database, merchant_id: uuid.UUID, status: MerchantStatus) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        merchant = await uow.session.get(Merchant, merchant_id)
        assert merchant is not None
        merchant.status = status
        await uow.commit()


async def _change_policy(
    db: Database, merchant_id: uuid.UUID, version: int, changes: PolicyChanges
) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        await update_retry_policy(
            uow,
            principal=system_principal(),
            merchant_id=merchant_id,
            expected_version=version,
            changes=changes,
            reason="test change",
            now=T0 + timedelta(hours=1),
        )
        await uow.commit()


async def test_a_paused_merchants_payment_ends_when_its_window_closes(db: Database) -> None:
    payment = await _payment(db)
    await _set_status(db, payment.merchant_id, MerchantStatus.PAUSED)
    await decide(db, T0)
    assert (await reload(db, payment.id)).state is P.PENDING  # held
    assert await _expire(db, T0 + WINDOW - timedelta(minutes=1)) == 0
    assert (await reload(db, payment.id)).state is P.PENDING
    assert await _expire(db, T0 + WINDOW) == 1
    after = await reload(db, payment.id)
    assert after.state is P.EXHAUSTED
    assert after.blocking_rule == "retry_window"
    last = (await timeline(db, payment.id))[-1]
    assert (last.from_state, last.to_state, last.event) == (
        P.PENDING,
        P.EXHAUSTED,
        "window_expired",
    )
    assert "retry_window" in last.reason
    assert (await outbox(db, payment.id))[-1] == "payment.exhausted"
    assert await _expire(db, T0 + WINDOW + timedelta(hours=1)) == 0


async def test_a_scheduled_payment_past_its_window_ends_too(db: Database) -> None:
    payment = await _payment(db)
    await decide(db, T0)
    assert (await reload(db, payment.id)).state is P.SCHEDULED
    assert await _expire(db, T0 + WINDOW) == 1
    after = await reload(db, payment.id)
    assert after.state is P.EXHAUSTED
    assert after.next_retry_at is None


async def test_an_undecided_payment_is_left_to_its_first_decision(db: Database) -> None:
    payment = await _payment(db)
    assert await _expire(db, T0 + WINDOW) == 0
    await decide(db, T0 + WINDOW)
    after = await reload(db, payment.id)
    assert after.state is P.EXHAUSTED
    assert [t.event for t in await timeline(db, payment.id)] == ["failure_ingested"]


async def test_policy_change_re_decides_scheduled_payments(db: Database) -> None:
    payment = await _payment(db)
    await decide(db, T0)
    scheduled = await reload(db, payment.id)
    assert scheduled.next_retry_at == T0 + timedelta(days=1)
    assert scheduled.policy_version == 1
    assert await _redecide(db, T0 + timedelta(hours=1)) == 0
    await _change_policy(db, payment.merchant_id, 1, PolicyChanges(fixed_schedule_days=[2, 4, 6]))
    assert await _redecide(db, T0 + timedelta(hours=2)) == 1
    after = await reload(db, payment.id)
    assert after.state is P.SCHEDULED
    assert after.next_retry_at == T0 + timedelta(days=2)
    assert after.policy_version == 2
    assert [t.event for t in await timeline(db, payment.id)][-2:] == [
        "policy_changed",
        "decision_made",
    ]
    assert (await outbox(db, payment.id))[-1] == "payment.rescheduled"
    # Seen under the current version: the next run leaves it alone.
    assert await _redecide(db, T0 + timedelta(hours=3)) == 0
    assert len(await timeline(db, payment.id)) == 4


async def test_policy_switched_off_holds_scheduled_payments(db: Database) -> None:
    payment = await _payment(db)
    await decide(db, T0)
    await _change_policy(db, payment.merchant_id, 1, PolicyChanges(enabled=False))
    assert await _redecide(db, T0 + timedelta(hours=2)) == 1
    after = await reload(db, payment.id)
    assert after.state is P.PENDING
    assert after.next_retry_at is None
    assert await _redecide(db, T0 + timedelta(hours=3)) == 0


async def test_scheduled_payment_flagged_by_a_new_card_is_decided_again(db: Database) -> None:
    payment = await _payment(db)
    await decide(db, T0)
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = await uow.session.get(Payment, payment.id)
        assert row is not None
        row.needs_decision = True
        await uow.commit()
    assert await _redecide(db, T0 + timedelta(hours=1)) == 1
    after = await reload(db, payment.id)
    assert not after.needs_decision
    assert after.state is P.SCHEDULED
    assert [t.event for t in await timeline(db, payment.id)][-1] == "decision_made"
    assert await _redecide(db, T0 + timedelta(hours=2)) == 0
