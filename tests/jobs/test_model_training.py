"""Training from stored attempt history: rows written as ingestion would, a challenger stored."""

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import select

from app.db import Database
from app.enums import (
    Actor,
    Advice,
    AttemptOutcome,
    DeclineCategory,
    ModelStatus,
    PaymentState,
    Processor,
)
from app.models.customer import Customer
from app.models.model_version import ModelVersion
from app.models.payment import Payment, PaymentAttempt
from app.services.model_registry import HISTORY_TABLES, failure_history
from app.tenancy import SYSTEM_SCOPE
from jobs.model import ModelCache
from jobs.training import train_from_history
from ml.simulator.world import generate_failures
from ml.train import TrainConfig, simulate_history
from tests.support.factories import make_merchant

NOW = datetime(2026, 10, 5, tzinfo=UTC)


async def _store_simulated_history(db: Database, n: int) -> int:
    """n simulated failures and their retries, stored as payments and attempts (set-based)."""
    batch = generate_failures(n, seed=11)
    run = simulate_history(batch, TrainConfig(seed=11))
    merchant = await make_merchant(db, "History", now=NOW)
    customers: dict[int, uuid.UUID] = {}
    payments: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for i in range(len(batch)):
        row = batch.observed.row(i)
        customer = customers.setdefault(row.customer_id, uuid.uuid4())
        pid = uuid.uuid4()
        payments.append(
            {
                "id": pid,
                "merchant_id": merchant.id,
                "processor": Processor.STRIPE,
                "processor_payment_id": f"ch_{i}",
                "amount_minor": row.amount_minor,
                "currency": "EUR" if row.currency == "other" else row.currency,
                "customer_id": customer,
                "first_failed_at": row.failed_at,
                "decline_category": DeclineCategory(row.category),
                "decline_retryable": True,
                "decline_advice": Advice.RETRY,
                "decline_network_code": row.network_code or None,
                "state": PaymentState.EXHAUSTED,
                "created_at": NOW,
                "updated_at": NOW,
            }
        )
        times = run.attempts[i]
        for k in np.flatnonzero(~np.isnan(times)):
            ok = int(run.success_index[i]) == int(k)
            attempts.append(
                {
                    "id": uuid.uuid4(),
                    "merchant_id": merchant.id,
                    "payment_id": pid,
                    "number": int(k) + 2,
                    "attempted_at": datetime.fromtimestamp(float(times[k]), UTC),
                    "outcome": AttemptOutcome.SUCCEEDED if ok else AttemptOutcome.DECLINED,
                    "actor": Actor.PORTAL,
                    "created_at": NOW,
                }
            )
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            insert(Customer),
            [
                {"id": c, "merchant_id": merchant.id, "external_ref": f"cus_{c}", "created_at": NOW}
                for c in customers.values()
            ],
        )
        await uow.session.execute(insert(Payment), payments)
        await uow.session.execute(insert(PaymentAttempt), attempts)
        await uow.commit()
    return len(attempts)


async def test_train_from_stored_history_stores_a_gated_challenger(db: Database) -> None:
    stored_attempts = await _store_simulated_history(db, 2500)
    async with db.session(SYSTEM_SCOPE) as s:
        history = await failure_history(s, since=None, until=NOW)
    assert len(history) == 2500
    assert sum(len(f.retries) for f in history) == stored_attempts
    config = TrainConfig(seed=2, num_boost_round=30, early_stopping_rounds=10, num_threads=1)
    steps: list[str] = []
    threads: dict[str, str] = {}

    def progress(step: str) -> None:
        steps.append(step)
        threads[step] = threading.current_thread().name

    outcome = await train_from_history(
        db, now=NOW + timedelta(days=30), config=config, progress=progress, cache=ModelCache()
    )
    assert steps[0] == "reading stored attempt history"
    assert steps[-1] == "running the promotion gate"
    # The fit itself ran on the one training thread, not on the loop or its default executor.
    fitting = [step for step in steps if step.startswith("training on")]
    assert fitting
    assert {threads[step] for step in fitting} == {"portal-training_0"}
    assert outcome.metrics["auc"] is not None
    assert outcome.metrics["auc"] > 0.6
    assert outcome.gate_failures > 0
    assert outcome.gate["champion_id"] is None
    async with db.session(SYSTEM_SCOPE) as s:
        [row] = (await s.execute(select(ModelVersion))).scalars().all()
    assert (row.status, row.source) == (ModelStatus.CHALLENGER, "history")
    assert row.gate == outcome.gate
    # The gate's window starts after the data the model learned from.
    assert row.gate is not None
    assert row.gate["window"][0] > row.data_end.isoformat()


async def test_history_read_plans_on_fresh_statistics(
    db: Database, connection: AsyncConnection
) -> None:
    # The statistics a test database's tables end up with: pages (earlier tests' rolled-back
    # rows) but no live rows. Planned on these, the read ran for hours: a test run hung here.
    await connection.execute(
        text(
            "UPDATE pg_class SET relpages = 50, reltuples = 0 "
            "WHERE oid = ANY(CAST(:names AS regclass[]))"
        ),
        {"names": [inspect(t).local_table.description for t in HISTORY_TABLES]},
    )
    await _store_simulated_history(db, 2500)
    # Half a second on fresh statistics; a plan on the stale ones is cut off here.
    await connection.execute(text("SET LOCAL statement_timeout = '20s'"))
    async with db.session(SYSTEM_SCOPE) as s:
        history = await failure_history(s, since=None, until=NOW)
    assert len(history) == 2500
