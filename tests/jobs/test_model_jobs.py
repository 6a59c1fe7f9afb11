"""The decision job with a champion in the registry, and training from stored history."""

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import CardFunding, DeclineCategory, ModelStatus, PaymentState, RetryStrategy, Role
from app.models.model_version import ModelDecision, ModelVersion
from app.models.retry_policy import RetryPolicy
from app.retry.schedule import in_control_group
from app.services.model_comparison import compare
from app.services.model_registry import HistoryFailure
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from jobs.model import CACHE, history_row
from jobs.retry import decide_pending
from jobs.training import retry_log, split_for_gate, train_from_history
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import run
from tests.support.model_rows import make_model
from tests.support.retry import ingest, make_connection, reload, stripe_charge

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
EXPLAIN = """query($id: ID!) { node(id: $id) { ... on Payment {
  decision { strategy reason explanation } } } }"""


async def _model_merchant_payments(db: Database, count: int) -> list[Any]:
    merchant = await make_merchant(db, f"Model {uuid.uuid4().hex[:6]}", now=T0)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(RetryPolicy)
            .where(col(RetryPolicy.merchant_id) == merchant.id)
            .values(strategy=RetryStrategy.MODEL)
        )
        await uow.commit()
    connection = await make_connection(db, merchant, T0, base_url="http://processor.test/stripe")
    charges = [stripe_charge(f"ch_{uuid.uuid4().hex[:10]}", created=T0) for _ in range(count)]
    return await ingest(db, connection, charges, T0)


async def test_decide_job_uses_the_champion_and_stores_its_explanation(
    db: Database, settings: Settings
) -> None:
    CACHE.clear()
    champion = await make_model(db, now=T0, status=ModelStatus.CHAMPION)
    payments = await _model_merchant_payments(db, 4)
    clock = FixedClock(T0)
    ctx: Any = {"db": db, "clock": clock}
    assert await decide_pending(ctx) >= len(payments)
    token = await make_key(db, Role.SUPPORT, [], now=T0)
    modelled = 0
    for payment in payments:
        row = await reload(db, payment.id)
        assert row.state is PaymentState.SCHEDULED
        result = await run(
            db,
            settings,
            clock,
            EXPLAIN,
            token=token,
            variables={"id": encode_id("Payment", row.id)},
        )
        assert result.data is not None
        decision = result.data["node"]["decision"]
        if in_control_group(str(row.merchant_id), str(row.id)):
            assert decision["strategy"] == "FIXED_SCHEDULE"
            continue
        modelled += 1
        assert decision["strategy"] == "MODEL"
        assert decision["reason"].startswith("model: ")
        assert len(decision["explanation"]) == 3
        assert row.next_retry_at is not None
        assert row.next_retry_at > T0
    assert modelled >= 1
    async with db.session(SYSTEM_SCOPE) as s:
        stored = (await s.execute(select(ModelDecision))).scalars().all()
    assert {d.model_version_id for d in stored} == {champion.id}
    assert len(stored) == modelled


async def test_decide_job_without_a_usable_champion_uses_the_decline_aware_rules(
    db: Database,
) -> None:
    CACHE.clear()
    await make_model(db, now=T0, status=ModelStatus.CHAMPION, artifact=b"corrupt")
    payments = await _model_merchant_payments(db, 3)
    ctx: Any = {"db": db, "clock": FixedClock(T0)}
    await decide_pending(ctx)
    for payment in payments:
        row = await reload(db, payment.id)
        assert row.next_retry_at is not None
        if in_control_group(str(row.merchant_id), str(row.id)):
            assert row.decision_strategy is RetryStrategy.FIXED_SCHEDULE
        else:
            assert row.decision_strategy is RetryStrategy.DECLINE_AWARE
            assert "model fallback: model" in (row.decision_reason or "")
            assert "unusable: not a model artifact" in (row.decision_reason or "")


async def test_shadow_decisions_of_the_decide_job_pair_with_the_champions(db: Database) -> None:
    """The decide job stores a shadow decision beside each acting one; the comparison pairs
    them. The shadow here is the champion's own artifact, so every pair agrees exactly."""
    CACHE.clear()
    champion = await make_model(db, now=T0, status=ModelStatus.CHAMPION)
    shadow = await make_model(db, now=T0, status=ModelStatus.SHADOW)
    payments = await _model_merchant_payments(db, 6)
    ctx: Any = {"db": db, "clock": FixedClock(T0)}
    await decide_pending(ctx)
    modelled = [p for p in payments if not in_control_group(str(p.merchant_id), str(p.id))]
    assert modelled
    async with db.session(SYSTEM_SCOPE) as session:
        found = await compare(session, principal=system_principal("test"), shadow_id=shadow.id)
    assert found is not None
    assert found.champion_id == champion.id
    assert found.shadow_decisions == found.paired_decisions == len(modelled)
    assert found.identical_decisions == found.agreeing_decisions == len(modelled)
    assert found.predicted is not None
    assert found.predicted.difference == 0.0
    assert found.agreement.payments == len(modelled)
    assert found.disagreement.payments == 0


async def test_training_from_stored_history_needs_enough_settled_failures(db: Database) -> None:
    await _model_merchant_payments(db, 2)
    with pytest.raises(ValueError, match="too few to train"):
        await train_from_history(db, now=T0 + timedelta(days=60))
    async with db.session(SYSTEM_SCOPE) as s:
        assert (await s.execute(select(ModelVersion))).scalars().all() == []


def _failure(day: int, retries: tuple[tuple[int, bool], ...]) -> HistoryFailure:
    failed = T0 + timedelta(days=day)
    return HistoryFailure(
        payment_id=uuid.uuid4(),
        customer_id=uuid.uuid4(),
        first_failed_at=failed,
        amount_minor=1000,
        currency="EUR",
        category=DeclineCategory.INSUFFICIENT_FUNDS,
        network_code="51",
        advice_code=None,
        funding=CardFunding.DEBIT,
        brand="Visa",
        customer_timezone="Europe/Paris",
        issuer_country="FR",
        past_success_at=(failed - timedelta(days=40), failed - timedelta(days=12)),
        retries=tuple((failed + timedelta(days=d), ok) for d, ok in retries),
    )


def test_a_success_after_the_failure_never_reaches_a_training_row() -> None:
    failure = _failure(3, ((2, True),))
    before, after = failure.past_success_at, failure.first_failed_at + timedelta(hours=1)
    row = history_row(replace(failure, past_success_at=(*before, after)))
    assert row.past_success_at == before
    assert row.country == "FR"
    log = retry_log([replace(failure, past_success_at=(*before, after))])
    stored = log.records.past_success[0]
    assert sorted(stored[np.isfinite(stored)]) == [t.timestamp() for t in before]


def test_stored_history_becomes_a_retry_log_and_a_later_gate_window() -> None:
    failures = [
        _failure(0, ((1, False), (3, True))),
        _failure(1, ()),
        _failure(2, ((2, False),)),
        _failure(3, ((1, True),)),
        _failure(3, ((5, False),)),
    ]
    log = retry_log(failures)
    assert log.attempts.shape == (5, 2)
    assert log.success_index.tolist() == [1, -1, -1, 0, -1]
    assert np.isnan(log.attempts[1]).all()
    assert log.attempts[0, 1] == (T0 + timedelta(days=3)).timestamp()
    train, held = split_for_gate(failures)
    # The cut falls inside day 3: its other failure may not sit on both sides.
    assert [f.first_failed_at.day for f in train] == [5, 6, 7, 8]
    assert held == []
    train, held = split_for_gate([*failures[:4], _failure(9, ())])
    assert max(f.first_failed_at for f in train) < min(f.first_failed_at for f in held)


def test_weekly_retrain_is_unique_and_does_not_raise_the_longest_timeout() -> None:
    from jobs.worker import CRON_JOBS, FUNCTIONS

    [job] = [c for c in CRON_JOBS if c.name == "cron:retrain_model"]
    assert (job.unique, job.weekday, job.hour) == (True, 0, 3)
    others = [f.timeout_s or 0 for f in FUNCTIONS]
    others += [c.timeout_s or 0 for c in CRON_JOBS if c is not job]
    # arq holds every job's in-progress key for the longest timeout: training must not lengthen it.
    assert job.timeout_s is not None
    assert job.timeout_s <= max(others)
