"""`app.bulk.write_all`: a column whose rows all hold one value is bound once, not as an array;
what is written is the same either way."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select

from app.bulk import write_all
from app.db import Database
from app.enums import PaymentState
from app.models.payment import Payment
from app.models.retry import OutboxEvent, PaymentTransition
from app.tenancy import SYSTEM_SCOPE
from tests.support.retry import fixed_schedule_payments

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


def _timeline(payment: Payment, seq: int, reason: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "merchant_id": payment.merchant_id,
        "payment_id": payment.id,
        "seq": seq,
        "from_state": PaymentState.PENDING,
        "to_state": PaymentState.PENDING,
        "event": "bulk_test",
        "reason": reason,
        "actor": "portal",
        "at": T0,
    }


def _event(payment: Payment, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "merchant_id": payment.merchant_id,
        "payment_id": payment.id,
        "event_type": "payment.pending",
        "version": 1,
        "payload": payload,
        "created_at": T0,
        "dispatched_at": None,
    }


async def test_single_valued_columns_are_written_as_given(db: Database) -> None:
    payments = await fixed_schedule_payments(db, 3, T0)
    later = T0 + timedelta(hours=1)
    # Timeline rows: most columns hold one value across the rows, the reason does not.
    timeline = [_timeline(p, 100, f"reason {i}") for i, p in enumerate(payments)]
    # One event row alone (a part of one row keeps its arrays), two more sharing a payload.
    events = [_event(payments[0], {"n": 0})]
    shared = [_event(p, {"same": [1, 2]}) for p in payments[1:]]
    # Every payment gets one count and update time (single), its own blocking rule.
    updates = [
        {"id": p.id, "attempt_count": 7, "updated_at": later, "blocking_rule": f"rule_{i}"}
        for i, p in enumerate(payments)
    ]
    async with db.uow(SYSTEM_SCOPE) as uow:
        await write_all(
            uow.session,
            [(PaymentTransition, timeline), (OutboxEvent, events)],
            [(Payment, updates)],
        )
        await write_all(uow.session, [(OutboxEvent, shared)])
        await uow.commit()

    ids = [p.id for p in payments]
    async with db.uow(SYSTEM_SCOPE) as uow:
        stored = (
            await uow.session.execute(
                select(PaymentTransition).where(col(PaymentTransition.event) == "bulk_test")
            )
        ).scalars()
        by_payment = {t.payment_id: t for t in stored}
        assert {pid: (t.seq, t.reason, t.at) for pid, t in by_payment.items()} == {
            p.id: (100, f"reason {i}", T0) for i, p in enumerate(payments)
        }
        sent = (
            await uow.session.execute(
                select(OutboxEvent).where(
                    col(OutboxEvent.payment_id).in_(ids),
                    col(OutboxEvent.event_type) == "payment.pending",
                    col(OutboxEvent.created_at) == T0,
                )
            )
        ).scalars()
        payloads = {e.payment_id: (e.payload, e.dispatched_at) for e in sent}
        assert payloads == {
            payments[0].id: ({"n": 0}, None),
            payments[1].id: ({"same": [1, 2]}, None),
            payments[2].id: ({"same": [1, 2]}, None),
        }
        rows = (
            await uow.session.execute(
                select(Payment.id, Payment.attempt_count, Payment.updated_at, Payment.blocking_rule)
                .where(col(Payment.id).in_(ids))
                .execution_options(populate_existing=True)
            )
        ).all()
        assert {r[0]: tuple(r[1:]) for r in rows} == {
            p.id: (7, later, f"rule_{i}") for i, p in enumerate(payments)
        }
