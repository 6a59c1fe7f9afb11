"""Registry rows for tests: models with a given status and gate verdict, decisions."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import col

from app.db import Database
from app.enums import Actor, ModelStatus, PaymentState
from app.models.model_version import ROLE_ACTING, ROLE_SHADOW, ModelVersion
from app.models.payment import Payment
from app.services.model_registry import (
    DecisionRecord,
    GateVerdict,
    TrainedModel,
    record_decisions,
    record_gate,
    store_challenger,
)
from app.tenancy import SYSTEM_SCOPE
from tests.support.factories import make_merchant, make_payments
from tests.support.model import small_artifact, small_model


async def make_model(
    db: Database,
    *,
    now: datetime,
    status: ModelStatus = ModelStatus.CHALLENGER,
    gate: GateVerdict | None = None,
    artifact: bytes | None = None,
) -> ModelVersion:
    """A stored model (the small trained one unless `artifact` is given)."""
    metrics: dict[str, Any] = small_model()[0].metrics
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = store_challenger(
            uow,
            TrainedModel(
                artifact=small_artifact() if artifact is None else artifact,
                trained_at=now,
                data_start=now - timedelta(days=365),
                data_end=now - timedelta(days=30),
                feature_list="attempt_success/v1",
                source="simulated:3000",
                parameters={"seed": 3},
                metrics=metrics,
            ),
        )
        row.status = status
        await uow.session.flush()
        if gate is not None:
            await record_gate(uow, row.id, gate)
        await uow.commit()
    return row


def verdict(promote: bool, champion_id: uuid.UUID | None, reason: str = "") -> GateVerdict:
    return GateVerdict(
        promote=promote,
        reason=reason or ("log loss better by 0.0100" if promote else "champion stays"),
        champion_id=champion_id,
        window_start=None,
        window_end=None,
        challenger_metrics={"auc": 0.74, "log_loss": 0.41, "brier": 0.12, "ece": 0.01},
        champion_metrics=None if champion_id is None else {"auc": 0.72, "log_loss": 0.42},
    )


@dataclass(frozen=True)
class Choice:
    """One model's choice at a decision point: a retry `minutes` after it with its chance, or a
    stop (`minutes` None); `source` as the scheduler stores it."""

    minutes: int | None
    probability: float | None
    source: str = "model"


def stop(probability: float | None = 0.01) -> Choice:
    return Choice(None, probability, "stop")


def decision(
    payment: Payment, model_id: uuid.UUID, role: str, at: datetime, choice: Choice
) -> DecisionRecord:
    """A stored model decision of `payment` made at `at`."""
    return DecisionRecord(
        merchant_id=payment.merchant_id,
        payment_id=payment.id,
        model_version_id=model_id,
        role=role,
        source=choice.source,
        decided_at=at,
        chosen_at=None if choice.minutes is None else at + timedelta(minutes=choice.minutes),
        probability=choice.probability,
        expected_recovered_minor=0,
        reason=choice.source,
        explanation=[],
    )


def pair(
    payment: Payment,
    *,
    shadow: uuid.UUID,
    champion: uuid.UUID,
    at: datetime,
    shadow_choice: Choice,
    champion_choice: Choice,
) -> list[DecisionRecord]:
    """The champion's acting decision and the shadow's beside it, at the same instant."""
    return [
        decision(payment, champion, ROLE_ACTING, at, champion_choice),
        decision(payment, shadow, ROLE_SHADOW, at, shadow_choice),
    ]


async def store(db: Database, records: Sequence[DecisionRecord]) -> None:
    async with db.uow(SYSTEM_SCOPE) as uow:
        await record_decisions(uow, records)
        await uow.commit()


async def settle(
    db: Database, payment: Payment, state: PaymentState, *, currency: str | None = None
) -> None:
    """Move a test payment to `state` (and `currency`): a terminal one ends its recovery, a
    recovery by a portal retry at the payment's last update."""
    values: dict[str, Any] = {"state": state}
    if state.is_terminal:
        values["next_retry_at"] = None
    if state is PaymentState.RECOVERED:
        values |= {"recovered_at": payment.updated_at, "recovered_by": Actor.PORTAL}
    if currency is not None:
        values["currency"] = currency
    async with db.uow(SYSTEM_SCOPE) as uow:
        await uow.session.execute(
            update(Payment).where(col(Payment.id) == payment.id).values(**values)
        )
        await uow.commit()


async def make_shadowed(
    db: Database, *, payments: int, shadow_p: float, champion_p: float, now: datetime
) -> tuple[ModelVersion, ModelVersion, list[Payment]]:
    """A champion and a gated shadow with one decision point on each of `payments` payments:
    the same time for the first half, six hours apart for the rest."""
    champion = await make_model(db, now=now, status=ModelStatus.CHAMPION)
    shadow = await make_model(
        db, now=now, status=ModelStatus.SHADOW, gate=verdict(True, champion.id)
    )
    merchant = await make_merchant(db, f"Shadowed {uuid.uuid4().hex[:6]}", now=now)
    rows = await make_payments(db, merchant, payments, now=now)
    records: list[DecisionRecord] = []
    for i, payment in enumerate(rows):
        apart = 0 if i < payments // 2 else 360
        records += pair(
            payment,
            shadow=shadow.id,
            champion=champion.id,
            at=now,
            shadow_choice=Choice(120 + apart, shadow_p + 0.001 * (i % 5)),
            champion_choice=Choice(120, champion_p + 0.001 * (i % 3)),
        )
    await store(db, records)
    return champion, shadow, rows
