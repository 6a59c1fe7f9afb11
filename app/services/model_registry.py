"""The model registry: store challengers, record gate verdicts, promote (audited), serve history.

The portal core knows nothing of how a model is trained or scored: artifacts are bytes, metrics
and gate verdicts are JSON computed elsewhere and handed in.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import insert, inspect, text, tuple_
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute, defer
from sqlmodel import col, select

from app.db import UnitOfWork
from app.enums import AttemptOutcome, CardFunding, DeclineCategory, ModelStatus
from app.errors import GateFailed, InvalidState, NotFound
from app.models.customer import CardCredential, Customer, CustomerSuccess
from app.models.model_version import ROLE_ACTING as ROLE_ACTING
from app.models.model_version import ROLE_SHADOW as ROLE_SHADOW
from app.models.model_version import ModelDecision, ModelVersion
from app.models.payment import Payment, PaymentAttempt
from app.services import audit
from app.services.customer_success import success_times, successes_before_failure
from app.services.model_comparison import (
    DEFAULT_TOLERANCE,
    Comparison,
    ComparisonRequirement,
    comparisons,
)
from app.tenancy import Principal

# Lists and locks never need the artifact bytes; reading them by accident raises.
_NO_ARTIFACT = defer(cast("QueryableAttribute[Any]", ModelVersion.artifact), raiseload=True)


@dataclass(frozen=True)
class TrainedModel:
    """A freshly trained model as the registry stores it."""

    artifact: bytes
    trained_at: datetime
    data_start: datetime
    data_end: datetime
    feature_list: str
    source: str
    parameters: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class GateVerdict:
    """The promotion gate's answer for one challenger against one champion (or none)."""

    promote: bool
    reason: str
    champion_id: uuid.UUID | None
    window_start: datetime | None
    window_end: datetime | None
    challenger_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "champion_id": None if self.champion_id is None else str(self.champion_id),
            "window": [
                None if self.window_start is None else self.window_start.isoformat(),
                None if self.window_end is None else self.window_end.isoformat(),
            ],
            "challenger": self.challenger_metrics,
            "champion": self.champion_metrics,
        }


@dataclass(frozen=True)
class DecisionRecord:
    """One decision the model path made, to be stored beside the payment."""

    merchant_id: uuid.UUID
    payment_id: uuid.UUID
    model_version_id: uuid.UUID | None
    role: str
    source: str
    decided_at: datetime
    chosen_at: datetime | None
    probability: float | None
    expected_recovered_minor: int
    reason: str
    explanation: list[dict[str, Any]]


@dataclass(frozen=True)
class HistoryFailure:
    """One failed payment with the retries made on it, as training reads stored history."""

    payment_id: uuid.UUID
    customer_id: uuid.UUID
    first_failed_at: datetime
    amount_minor: int
    currency: str
    category: DeclineCategory
    network_code: str | None
    advice_code: str | None
    funding: CardFunding
    brand: str | None
    customer_timezone: str | None
    issuer_country: str | None
    # The customer's latest successful charges before the first failure, oldest first.
    past_success_at: tuple[datetime, ...]
    # Retries after the first failure, oldest first: (time, whether it succeeded).
    retries: tuple[tuple[datetime, bool], ...]


def require_support(principal: Principal) -> None:
    """Models serve every merchant: only support may see or change them."""
    principal.require_support("see or change models")


def store_challenger(uow: UnitOfWork, model: TrainedModel) -> ModelVersion:
    """Add a trained model as a challenger (no commit)."""
    row = ModelVersion(
        trained_at=model.trained_at,
        data_start=model.data_start,
        data_end=model.data_end,
        feature_list=model.feature_list[:64],
        source=model.source[:32],
        parameters=model.parameters,
        metrics=model.metrics,
        artifact=model.artifact,
        status=ModelStatus.CHALLENGER,
    )
    uow.session.add(row)
    return row


async def _locked(uow: UnitOfWork, model_id: uuid.UUID) -> ModelVersion:
    row = (
        await uow.session.execute(
            select(ModelVersion).where(col(ModelVersion.id) == model_id).with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("no such model", field="id")
    return row


async def record_gate(uow: UnitOfWork, model_id: uuid.UUID, verdict: GateVerdict) -> ModelVersion:
    """Keep the gate's latest verdict on the challenger (no commit)."""
    row = await _locked(uow, model_id)
    row.gate = verdict.to_json()
    await uow.session.flush()
    return row


async def model_by_id(session: AsyncSession, model_id: uuid.UUID) -> ModelVersion | None:
    return (
        await session.execute(select(ModelVersion).where(col(ModelVersion.id) == model_id))
    ).scalar_one_or_none()


async def current(session: AsyncSession, status: ModelStatus) -> ModelVersion | None:
    """The champion, or the newest model of another status (the shadow that scores alongside)."""
    return (
        await session.execute(
            select(ModelVersion)
            .where(col(ModelVersion.status) == status)
            .order_by(col(ModelVersion.trained_at).desc(), col(ModelVersion.id).desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def current_id(session: AsyncSession, status: ModelStatus) -> uuid.UUID | None:
    """The id alone, so a cached artifact is not read again."""
    return (await current_ids(session, [status])).get(status)


async def current_ids(
    session: AsyncSession, statuses: Sequence[ModelStatus]
) -> dict[ModelStatus, uuid.UUID]:
    """`current_id` of each status, in one statement: the newest model of each."""
    rows = await session.execute(
        select(col(ModelVersion.status), col(ModelVersion.id))
        .where(col(ModelVersion.status).in_(statuses))
        .order_by(
            col(ModelVersion.status),
            col(ModelVersion.trained_at).desc(),
            col(ModelVersion.id).desc(),
        )
        .ext(distinct_on(col(ModelVersion.status)))
    )
    return dict(rows.all())


async def list_models(
    session: AsyncSession, *, principal: Principal, limit: int = 100
) -> list[ModelVersion]:
    """Models newest first, without their artifacts (support only)."""
    require_support(principal)
    rows = await session.execute(
        select(ModelVersion)
        .options(_NO_ARTIFACT)
        .order_by(col(ModelVersion.trained_at).desc(), col(ModelVersion.id).desc())
        .limit(limit)
    )
    return list(rows.scalars())


def _gate_refusal(row: ModelVersion, champion: ModelVersion | None) -> str | None:
    gate = row.gate
    if not gate:
        return "the promotion gate has not been run for this model"
    champion_id = None if champion is None else str(champion.id)
    if gate.get("champion_id") != champion_id:
        return "the gate was run against another champion; run it again"
    if not gate.get("promote"):
        return f"the challenger did not beat the champion: {gate.get('reason', '')}"
    return None


async def _compared(
    uow: UnitOfWork,
    row: ModelVersion,
    champion: ModelVersion | None,
    requirement: ComparisonRequirement | None,
) -> Comparison | None:
    """The model's comparison with the champion it would replace, when the requirement asks for
    one; raises GateFailed when the comparison does not meet it. A first champion replaces none,
    so nothing is compared."""
    if requirement is None or champion is None:
        return None
    found = await comparisons(
        uow.session, [row.id], champion_id=champion.id, tolerance=DEFAULT_TOLERANCE
    )
    comparison = found[row.id]
    refusal = requirement.refusal(comparison)
    if refusal is not None:
        raise GateFailed(refusal, field="id")
    return comparison


async def promote(
    uow: UnitOfWork,
    *,
    principal: Principal,
    model_id: uuid.UUID,
    reason: str,
    now: datetime,
    requirement: ComparisonRequirement | None = None,
) -> ModelVersion:
    """Make a challenger (or shadow) the champion when its gate verdict holds (support, audited).

    The verdict must have been computed against the champion of now: a gate run before another
    promotion says nothing about the new champion. With a `requirement`, the model's shadow
    decisions must also compare well enough with that champion's (`model_comparison`). The old
    champion is retired first, so the one-champion index never sees two.
    """
    require_support(principal)
    reason = audit.clean_reason(reason)
    row = await _locked(uow, model_id)
    if row.status not in (ModelStatus.CHALLENGER, ModelStatus.SHADOW):
        raise InvalidState(f"a {row.status} model cannot be promoted", field="id")
    champion = (
        await uow.session.execute(
            select(ModelVersion)
            .options(_NO_ARTIFACT)
            .where(col(ModelVersion.status) == ModelStatus.CHAMPION)
            .with_for_update()
        )
    ).scalar_one_or_none()
    refusal = _gate_refusal(row, champion)
    if refusal is not None:
        raise GateFailed(refusal, field="id")
    comparison = await _compared(uow, row, champion, requirement)
    before = {"status": str(row.status), "champion_id": str(champion.id) if champion else None}
    if champion is not None:
        champion.status = ModelStatus.RETIRED
        await uow.session.flush()
    row.status = ModelStatus.CHAMPION
    row.promoted_at = now
    row.promoted_by = principal.actor_label[:255]
    row.reason = reason
    audit.record(
        uow,
        principal=principal,
        merchant_id=None,
        action="model.promote",
        entity_type="model_version",
        entity_id=str(row.id),
        before=before,
        after={
            "status": str(row.status),
            "gate": row.gate,
            "comparison": None if comparison is None else comparison.to_json(),
        },
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return row


async def set_shadow(
    uow: UnitOfWork, *, principal: Principal, model_id: uuid.UUID, reason: str, now: datetime
) -> ModelVersion:
    """Let a challenger score alongside the champion without acting (support, audited)."""
    require_support(principal)
    reason = audit.clean_reason(reason)
    row = await _locked(uow, model_id)
    if row.status is not ModelStatus.CHALLENGER:
        raise InvalidState(f"a {row.status} model cannot become the shadow", field="id")
    before = {"status": str(row.status)}
    row.status = ModelStatus.SHADOW
    row.reason = reason
    audit.record(
        uow,
        principal=principal,
        merchant_id=None,
        action="model.shadow",
        entity_type="model_version",
        entity_id=str(row.id),
        before=before,
        after={"status": str(row.status)},
        reason=reason,
        now=now,
    )
    await uow.session.flush()
    return row


async def record_decisions(uow: UnitOfWork, records: Sequence[DecisionRecord]) -> int:
    """Store decisions of the model path in one statement (no commit)."""
    if not records:
        return 0
    await uow.session.execute(
        insert(ModelDecision),
        [
            {
                "id": uuid.uuid4(),
                "merchant_id": r.merchant_id,
                "payment_id": r.payment_id,
                "model_version_id": r.model_version_id,
                "role": r.role,
                "source": r.source,
                "decided_at": r.decided_at,
                "chosen_at": r.chosen_at,
                "probability": r.probability,
                "expected_recovered_minor": r.expected_recovered_minor,
                "reason": r.reason[:1000],
                "explanation": r.explanation,
            }
            for r in records
        ],
    )
    return len(records)


async def acting_decisions(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, datetime]]
) -> dict[tuple[uuid.UUID, datetime], ModelDecision]:
    """The acting model decision behind each (payment, decision time), where there was one."""
    if not keys:
        return {}
    rows = await session.execute(
        select(ModelDecision).where(
            tuple_(col(ModelDecision.payment_id), col(ModelDecision.decided_at)).in_(list(keys)),
            col(ModelDecision.role) == ROLE_ACTING,
        )
    )
    return {(r.payment_id, r.decided_at): r for r in rows.scalars()}


# What the history read joins, and its correlated subquery reads per failure.
HISTORY_TABLES = (Payment, PaymentAttempt, Customer, CustomerSuccess, CardCredential)


async def analyze_history_tables(session: AsyncSession) -> None:
    """Fresh planner statistics for the history read, taken in its own transaction.

    The read joins five tables and runs a correlated subquery per failure, for up to 500,000
    failures. Planned on statistics that say these tables are empty while they are not (a
    backfill autoanalyze has not caught up with; in tests, tables autovacuum saw holding only
    rolled-back rows, with the test's own uncommitted rows on top), PostgreSQL picks nested
    loops over full scans inside that subquery: 2,500 failures with 10,000 retries ran for over
    90 s, where the same read takes half a second after ANALYZE. ANALYZE samples a bounded
    number of rows, counts this transaction's own rows, and costs little beside the read.
    """
    names = ", ".join(inspect(table).local_table.description for table in HISTORY_TABLES)
    await session.execute(text(f"ANALYZE {names}"))


async def failure_history(
    session: AsyncSession, *, since: datetime | None, until: datetime, limit: int = 500_000
) -> list[HistoryFailure]:
    """Failed payments that first failed in [since, until), with the retries made on them.

    Retries still in flight carry no outcome yet and are left out; a payment's retries stop at
    its first success.
    """
    await analyze_history_tables(session)
    query = (
        select(Payment, CardCredential, Customer, successes_before_failure())
        .outerjoin(CardCredential, col(CardCredential.id) == col(Payment.card_id))
        .join(Customer, col(Customer.id) == col(Payment.customer_id))
        .where(col(Payment.first_failed_at) < until)
        .order_by(col(Payment.first_failed_at), col(Payment.id))
        .limit(limit)
    )
    if since is not None:
        query = query.where(col(Payment.first_failed_at) >= since)
    found = (await session.execute(query)).all()
    ids = [p.id for p, *_ in found]
    retries: dict[uuid.UUID, list[tuple[datetime, bool]]] = {i: [] for i in ids}
    if ids:
        attempts = await session.execute(
            select(
                col(PaymentAttempt.payment_id),
                col(PaymentAttempt.attempted_at),
                col(PaymentAttempt.outcome),
            )
            .where(
                col(PaymentAttempt.payment_id).in_(ids),
                col(PaymentAttempt.number) >= 2,
                col(PaymentAttempt.outcome) != AttemptOutcome.IN_FLIGHT,
            )
            .order_by(col(PaymentAttempt.payment_id), col(PaymentAttempt.attempted_at))
        )
        for pid, at, outcome in attempts.all():
            made = retries[pid]
            if made and made[-1][1]:
                continue
            made.append((at, outcome == AttemptOutcome.SUCCEEDED))
    return [
        HistoryFailure(
            payment_id=p.id,
            customer_id=p.customer_id,
            first_failed_at=p.first_failed_at,
            amount_minor=p.amount_minor,
            currency=p.currency,
            category=p.decline_category,
            network_code=p.decline_network_code,
            advice_code=p.decline_network_advice_code,
            funding=card.funding if card is not None else CardFunding.UNKNOWN,
            brand=card.brand if card is not None else None,
            customer_timezone=customer.timezone,
            issuer_country=card.issuer_country if card is not None else None,
            past_success_at=success_times(successes),
            retries=tuple(retries[p.id]),
        )
        for p, card, customer, successes in found
    ]
