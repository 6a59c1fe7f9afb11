"""The decide job scores a batch's model decisions in one call: every payment gets the decision,
reason and model record it gets when its decision is scored on its own."""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from app.db import Database
from app.enums import ModelStatus, RetryStrategy
from app.models.payment import Payment
from app.retry.rules import AttemptRecord, RetryPolicyView
from app.retry.schedule import BatchScheduler, Decision, DecisionRequest, PaymentView, Scheduler
from app.services.retry.engine import decide_pending
from app.tenancy import SYSTEM_SCOPE
from jobs.model import ModelCache, ModelScheduler, serving_scheduler
from tests.support.factories import make_merchant, set_strategy
from tests.support.model_rows import make_model
from tests.support.retry import ingest, make_connection, varied_charges

# A Monday 10:00 UTC: outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


class OneByOne:
    """The same model scheduler, offered no batch: each decision is scored on its own."""

    def __init__(self, inner: ModelScheduler) -> None:
        self.inner = inner

    def __call__(
        self,
        payment: PaymentView,
        history: Sequence[AttemptRecord],
        candidates: Sequence[datetime],
        *,
        policy: RetryPolicyView,
        now: datetime,
    ) -> Decision:
        return self.inner(payment, history, candidates, policy=policy, now=now)


async def _decided(
    db: Database, merchant_id: uuid.UUID, scheduler: Scheduler, model: ModelScheduler
) -> tuple[list[tuple[Any, ...]], str]:
    """Decide every pending payment in a unit of work that is rolled back: what it stored,
    and the model's decision records."""
    async with db.uow(SYSTEM_SCOPE) as uow:
        await decide_pending(uow, now=T0, scheduler=scheduler)
        rows = (
            await uow.session.execute(
                sa.select(
                    col(Payment.id),
                    col(Payment.state),
                    col(Payment.next_retry_at),
                    col(Payment.decision_reason),
                    col(Payment.decision_strategy),
                    col(Payment.blocking_rule),
                )
                .where(col(Payment.merchant_id) == merchant_id)
                .order_by(col(Payment.id))
            )
        ).all()
    return [tuple(r) for r in rows], repr(model.take_decisions())


async def test_a_batch_is_decided_as_each_payment_alone(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    merchant = await make_merchant(db, f"Batch decide {uuid.uuid4().hex[:6]}", now=T0)
    await set_strategy(db, merchant.id, RetryStrategy.MODEL)
    connection = await make_connection(db, merchant, T0)
    charges = varied_charges(
        "ch_batch_decide",
        20,
        created=T0,
        customers=14,
        fingerprints=17,
        amount=300,
        step=977,
        currencies=("usd", "eur", "jpy"),
    )
    await ingest(db, connection, charges, T0)
    await make_model(db, now=T0, status=ModelStatus.CHAMPION)
    scheduler = await serving_scheduler(db, ModelCache())
    assert isinstance(scheduler, BatchScheduler)
    batches: list[int] = []
    prepare = scheduler.prepare

    def counted(requests: Sequence[DecisionRequest]) -> None:
        batches.append(len(requests))
        prepare(requests)

    monkeypatch.setattr(scheduler, "prepare", counted)

    together, together_records = await _decided(db, merchant.id, scheduler, scheduler)
    # One batch scored ahead, holding every payment under the model strategy.
    assert len(batches) == 1
    assert batches[0] > 10
    alone, alone_records = await _decided(db, merchant.id, OneByOne(scheduler), scheduler)
    assert len(batches) == 1
    assert together == alone
    assert together_records == alone_records
    # The batch held model decisions and others (hard declines end without one).
    strategies = {strategy for _, _, _, _, strategy, _ in together}
    assert RetryStrategy.MODEL in strategies
    assert len({state for _, state, _, _, _, _ in together}) > 1
    assert "source='model'" in together_records
