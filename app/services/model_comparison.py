"""A shadow model against the champion: their decisions at the same decision points, and what
the payments did afterwards.

A shadow scores the same allowed candidates as the champion at the same instant and stores its
decision beside the champion's acting one (same payment, same `decided_at`): that is a pair.
Only the champion acts, so outcomes exist for its choices alone. What the comparison reports:

- agreement: both chose to stop, or both chose a retry within the tolerance of each other;
- the predicted difference: the shadow's own predicted chance of success for its choice minus
  the champion's for its choice (a stop counts 0: no retry, no chance), a mean over pairs with a
  95% normal interval whose standard error is clustered by payment (a payment's decision points
  are not independent);
- realized recovery of the payments where the two ever disagreed against those where they
  always agreed: where they agreed the champion's outcome is what the shadow would have had;
  where they disagreed only the champion's outcome is known, and the two groups differ in make-up,
  so a gap between them describes those payments, not what the shadow's timing would recover.

Amounts are per currency, never added across currencies.
"""

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Select
from sqlalchemy.sql.selectable import CTE
from sqlmodel import col, select

from app.enums import TERMINAL_STATES, ModelStatus, PaymentState
from app.errors import InvalidArgument, NotFound
from app.models.model_version import ROLE_ACTING, ROLE_SHADOW, ModelDecision, ModelVersion
from app.models.payment import Payment
from app.services.stats.figures import MIN_ARM_SIZE, Z_95, Arm, Uplift
from app.tenancy import Principal

# One step of the retry engine's candidate grid (app/retry/schedule.py `candidate_times`).
DEFAULT_TOLERANCE = timedelta(hours=1)
MAX_TOLERANCE = timedelta(days=1)
# The newest shadow decisions of a model that one comparison reads: its cost stays bounded
# however long the shadow has run (the interval is already narrow at this size).
WINDOW = 50_000
# Payments with a predicted difference needed before an interval is given, and settled
# payments each outcome group needs before their difference is (as for the uplift).
MIN_PAYMENTS = MIN_ARM_SIZE
# `model_decision.source` values with a model's own choice: a retry time with its chance, or
# a stop. A "fallback" acting row is the rules' choice, not the champion's, and is not paired;
# nor is a stop forced by an exhausted budget or no allowed time (stored without a chance).
SOURCE_MODEL = "model"
SOURCE_STOP = "stop"


@dataclass(frozen=True, slots=True)
class PredictedDifference:
    """Shadow minus champion, each model's predicted chance of success for its own choice."""

    decisions: int
    payments: int
    shadow_mean: float
    champion_mean: float
    difference: float
    lower: float | None
    upper: float | None
    confidence_level: float = 0.95

    def not_worse(self, margin: float) -> bool | None:
        """Whether the interval's lower bound is at least `-margin`; None without an interval."""
        return None if self.lower is None else self.lower >= -margin


@dataclass(frozen=True, slots=True)
class CurrencyOutcome:
    """One group's payments in one currency and how they ended."""

    currency: str
    payments: int
    settled_payments: int
    recovered_payments: int
    settled_amount: int
    recovered_amount: int


@dataclass(frozen=True, slots=True)
class OutcomeGroup:
    """Payments whose paired decisions all agreed (or not all): counts over every currency."""

    currencies: tuple[CurrencyOutcome, ...]

    @property
    def payments(self) -> int:
        return sum(c.payments for c in self.currencies)

    @property
    def settled_payments(self) -> int:
        return sum(c.settled_payments for c in self.currencies)

    @property
    def recovered_payments(self) -> int:
        return sum(c.recovered_payments for c in self.currencies)

    @property
    def recovery_rate(self) -> float | None:
        settled = self.settled_payments
        return None if settled == 0 else self.recovered_payments / settled

    @property
    def arm(self) -> Arm:
        return Arm(eligible_count=self.settled_payments, recovered_count=self.recovered_payments)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One shadow's decisions against one champion's at the same decision points."""

    shadow_id: uuid.UUID
    champion_id: uuid.UUID
    tolerance: timedelta
    shadow_decisions: int
    paired_decisions: int
    agreeing_decisions: int
    identical_decisions: int
    predicted: PredictedDifference | None
    agreement: OutcomeGroup
    disagreement: OutcomeGroup

    @property
    def agreement_rate(self) -> float | None:
        paired = self.paired_decisions
        return None if paired == 0 else self.agreeing_decisions / paired

    @property
    def realized_difference(self) -> Uplift | None:
        """Recovery rate of disagreement payments minus agreement payments, with Newcombe's
        interval; None while either group has fewer than MIN_ARM_SIZE settled payments."""
        return Uplift.of(self.disagreement.arm, self.agreement.arm)

    def to_json(self) -> dict[str, Any]:
        """The figures a promotion's audit entry keeps."""
        p = self.predicted
        return {
            "shadow_id": str(self.shadow_id),
            "champion_id": str(self.champion_id),
            "paired_decisions": self.paired_decisions,
            "agreeing_decisions": self.agreeing_decisions,
            "tolerance_minutes": int(self.tolerance.total_seconds() // 60),
            "predicted_difference": None if p is None else p.difference,
            "interval": None if p is None else [p.lower, p.upper],
        }


@dataclass(frozen=True, slots=True)
class ComparisonRequirement:
    """What promoting a model over a champion needs from its comparison with that champion."""

    min_paired_decisions: int
    margin: float

    def refusal(self, comparison: Comparison) -> str | None:
        """Why the comparison does not allow the promotion, or None when it does."""
        paired, needed = comparison.paired_decisions, self.min_paired_decisions
        if paired < needed:
            return (
                f"the model has {paired} decisions paired with the champion's; promotion needs "
                f"at least {needed}: make it the shadow and let it score"
            )
        p = comparison.predicted
        if p is None or p.lower is None or p.upper is None:
            have = 0 if p is None else p.payments
            return (
                f"too few payments with a predicted difference to judge the model ({have}; "
                f"{MIN_PAYMENTS} needed)"
            )
        if not p.not_worse(self.margin):
            return (
                f"the model's predicted chance of success is worse than the champion's: mean "
                f"difference {p.difference:+.4f} (95% interval {p.lower:+.4f} to {p.upper:+.4f}) "
                f"is below the margin of -{self.margin:.4f}"
            )
        return None


def promotion_requirement(min_paired_decisions: int, margin: float) -> ComparisonRequirement | None:
    """The requirement the settings ask for; None (no requirement) when the minimum is 0."""
    if min_paired_decisions <= 0:
        return None
    return ComparisonRequirement(min_paired_decisions=min_paired_decisions, margin=margin)


def check_tolerance(tolerance: timedelta, field: str = "toleranceMinutes") -> timedelta:
    """The tolerance when it is within 0 and MAX_TOLERANCE; InvalidArgument otherwise."""
    if not timedelta(0) <= tolerance <= MAX_TOLERANCE:
        hours = int(MAX_TOLERANCE.total_seconds() // 3600)
        raise InvalidArgument(f"the tolerance must be between 0 and {hours} hours", field=field)
    return tolerance


async def compare(
    session: AsyncSession,
    *,
    principal: Principal,
    shadow_id: uuid.UUID,
    champion_id: uuid.UUID | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> Comparison | None:
    """One model against the champion (the current one unless given); support only. None when
    there is no champion to compare with."""
    principal.require_support("see or change models")
    found = await comparisons(
        session, [shadow_id], champion_id=champion_id, tolerance=check_tolerance(tolerance)
    )
    return found.get(shadow_id)


async def comparisons(
    session: AsyncSession,
    shadow_ids: Sequence[uuid.UUID],
    *,
    champion_id: uuid.UUID | None,
    tolerance: timedelta,
) -> dict[uuid.UUID, Comparison]:
    """Each model against one champion (the current one when None) in one statement; empty when
    there is no champion. The caller has checked that its principal may see models."""
    champion_id = await _champion(session, champion_id)
    if champion_id is None or not shadow_ids:
        return {}
    statement = _statement(sorted(set(shadow_ids)), champion_id, tolerance.total_seconds(), WINDOW)
    await _without_jit(session)
    rows: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for row in (await session.execute(statement)).all():
        rows[row.model_id].append(row)
    return {
        shadow_id: _comparison(shadow_id, champion_id, tolerance, rows.get(shadow_id, []))
        for shadow_id in shadow_ids
    }


async def _without_jit(session: AsyncSession) -> None:
    """No JIT compilation for the rest of the transaction, where the server has JIT: the
    planner's estimate for a full window passes `jit_above_cost`, and compiling the plan took
    seconds where running it takes a fraction of that."""
    has_jit = sa.func.current_setting("jit", True).is_not(None)
    await session.execute(sa.select(sa.func.set_config("jit", "off", True)).where(has_jit))


async def _champion(session: AsyncSession, champion_id: uuid.UUID | None) -> uuid.UUID | None:
    if champion_id is None:
        query = select(col(ModelVersion.id)).where(col(ModelVersion.status) == ModelStatus.CHAMPION)
        found: uuid.UUID | None = (await session.execute(query)).scalar_one_or_none()
        return found
    query = select(col(ModelVersion.id)).where(col(ModelVersion.id) == champion_id)
    if (await session.execute(query)).scalar_one_or_none() is None:
        raise NotFound("no such model to compare with", field="championId")
    return champion_id


def _predicted(source: Any, probability: Any) -> Any:
    """A decision's predicted chance of success: its retry's, 0 for a stop, else unknown."""
    return sa.case(
        (source == SOURCE_MODEL, probability), (source == SOURCE_STOP, sa.literal(0.0)), else_=None
    )


def _pairs(
    shadow_ids: Sequence[uuid.UUID], champion_id: uuid.UUID, tolerance: float, window: int
) -> tuple[CTE, CTE]:
    """(the newest `window` shadow decisions per model, their pairs with the champion's)."""
    wanted = sa.values(sa.column("model_id", sa.Uuid()), name="wanted").data(
        [(i,) for i in shadow_ids]
    )
    shadow = aliased(ModelDecision, name="shadow")
    latest = (
        sa.select(
            col(shadow.payment_id),
            col(shadow.decided_at),
            col(shadow.chosen_at),
            col(shadow.source),
            col(shadow.probability),
        )
        .where(col(shadow.model_version_id) == wanted.c.model_id, col(shadow.role) == ROLE_SHADOW)
        .order_by(col(shadow.decided_at).desc())
        .limit(window)
        .lateral("latest")
    )
    read = (
        sa.select(wanted.c.model_id, latest).select_from(wanted.join(latest, sa.true())).cte("read")
    )
    acting = aliased(ModelDecision, name="acting")
    # Looked up per shadow decision through `ix_model_decision_payment_at`, so the cost follows
    # the window, never the champion's (much longer) history of acting decisions.
    champion = (
        sa.select(col(acting.chosen_at), col(acting.source), col(acting.probability))
        .where(
            col(acting.payment_id) == read.c.payment_id,
            col(acting.decided_at) == read.c.decided_at,
            col(acting.role) == ROLE_ACTING,
            col(acting.model_version_id) == champion_id,
            # The champion's own choice: a retry time, or a stop below its chance threshold
            # (a stop without a chance had no budget or no allowed time: no choice at all).
            sa.or_(
                col(acting.source) == SOURCE_MODEL,
                sa.and_(col(acting.source) == SOURCE_STOP, col(acting.probability).is_not(None)),
            ),
        )
        .limit(1)
        .lateral("champion")
    )
    s_at, c_at = read.c.chosen_at, champion.c.chosen_at
    both_stop = sa.and_(s_at.is_(None), c_at.is_(None))
    gap = sa.func.abs(sa.extract("epoch", s_at - c_at))
    pairs = (
        sa.select(
            read.c.model_id,
            read.c.payment_id,
            sa.func.coalesce(sa.or_(both_stop, gap <= tolerance), False).label("agree"),
            s_at.is_not_distinct_from(c_at).label("identical"),
            _predicted(read.c.source, read.c.probability).label("shadow_p"),
            _predicted(champion.c.source, champion.c.probability).label("champion_p"),
        )
        .select_from(read.join(champion, sa.true()))
        .cte("pairs")
    )
    return read, pairs


def _statement(
    shadow_ids: Sequence[uuid.UUID], champion_id: uuid.UUID, tolerance: float, window: int
) -> Select[Any]:
    """Per model: the shadow decisions read, then per (all agreed?, currency) the pair and
    payment figures; a model without pairs has one row with the count alone."""
    read, pairs = _pairs(shadow_ids, champion_id, tolerance, window)
    diff = pairs.c.shadow_p - pairs.c.champion_p
    known = diff.is_not(None)
    count = sa.func.count
    per_payment = (
        sa.select(
            pairs.c.model_id,
            pairs.c.payment_id,
            count().label("paired"),
            count().filter(pairs.c.agree).label("agreeing"),
            count().filter(pairs.c.identical).label("identical"),
            count(diff).label("k"),
            sa.func.sum(diff).label("d"),
            sa.func.sum(pairs.c.shadow_p).filter(known).label("s"),
            sa.func.sum(pairs.c.champion_p).filter(known).label("c"),
            sa.func.bool_and(pairs.c.agree).label("all_agree"),
        )
        .group_by(pairs.c.model_id, pairs.c.payment_id)
        .cte("per_payment")
    )
    pp = per_payment.c
    means = (
        sa.select(
            pp.model_id, (sa.func.sum(pp.d) / sa.func.nullif(sa.func.sum(pp.k), 0)).label("m")
        )
        .group_by(pp.model_id)
        .cte("means")
    )
    settled = col(Payment.state).in_(sorted(TERMINAL_STATES))
    recovered = col(Payment.state) == PaymentState.RECOVERED
    amount = col(Payment.amount_minor)
    grouped = (
        sa.select(
            pp.model_id,
            pp.all_agree,
            col(Payment.currency),
            sa.func.sum(pp.paired).label("paired"),
            sa.func.sum(pp.agreeing).label("agreeing"),
            sa.func.sum(pp.identical).label("identical"),
            sa.func.sum(pp.k).label("k"),
            sa.func.sum(pp.d).label("d"),
            sa.func.sum(pp.s).label("s"),
            sa.func.sum(pp.c).label("c"),
            count().filter(pp.k > 0).label("clusters"),
            # Each payment's summed deviation from the model's mean, squared: the clustered
            # variance's numerator.
            sa.func.sum(sa.func.power(pp.d - pp.k * means.c.m, 2)).label("ss"),
            count().label("payments"),
            count().filter(settled).label("settled"),
            count().filter(recovered).label("recovered"),
            sa.func.coalesce(sa.func.sum(amount).filter(settled), 0).label("settled_amount"),
            sa.func.coalesce(sa.func.sum(amount).filter(recovered), 0).label("recovered_amount"),
        )
        .select_from(per_payment)
        .join(means, means.c.model_id == pp.model_id)
        .join(Payment, col(Payment.id) == pp.payment_id)
        .group_by(pp.model_id, pp.all_agree, col(Payment.currency))
        .cte("grouped")
    )
    counts = (
        sa.select(read.c.model_id, count().label("shadow_decisions"))
        .group_by(read.c.model_id)
        .cte("counts")
    )
    return sa.select(
        counts.c.model_id,
        counts.c.shadow_decisions,
        *(c for c in grouped.c if c.name != "model_id"),
    ).select_from(counts.outerjoin(grouped, grouped.c.model_id == counts.c.model_id))


def _comparison(
    shadow_id: uuid.UUID, champion_id: uuid.UUID, tolerance: timedelta, rows: Sequence[Any]
) -> Comparison:
    groups = [r for r in rows if r.all_agree is not None]

    def total(name: str) -> int:
        return sum(int(getattr(r, name) or 0) for r in groups)

    return Comparison(
        shadow_id=shadow_id,
        champion_id=champion_id,
        tolerance=tolerance,
        shadow_decisions=int(rows[0].shadow_decisions) if rows else 0,
        paired_decisions=total("paired"),
        agreeing_decisions=total("agreeing"),
        identical_decisions=total("identical"),
        predicted=_predicted_difference(groups),
        agreement=_outcomes([r for r in groups if r.all_agree]),
        disagreement=_outcomes([r for r in groups if not r.all_agree]),
    )


def _predicted_difference(groups: Sequence[Any]) -> PredictedDifference | None:
    n = sum(int(r.k or 0) for r in groups)
    if n == 0:
        return None
    clusters = sum(int(r.clusters or 0) for r in groups)
    mean = sum(float(r.d or 0.0) for r in groups) / n
    lower = upper = None
    if clusters >= MIN_PAYMENTS:
        ss = sum(float(r.ss or 0.0) for r in groups)
        se = math.sqrt(clusters / (clusters - 1) * ss) / n
        lower, upper = mean - Z_95 * se, mean + Z_95 * se
    return PredictedDifference(
        decisions=n,
        payments=clusters,
        shadow_mean=sum(float(r.s or 0.0) for r in groups) / n,
        champion_mean=sum(float(r.c or 0.0) for r in groups) / n,
        difference=mean,
        lower=lower,
        upper=upper,
    )


def _outcomes(groups: Sequence[Any]) -> OutcomeGroup:
    return OutcomeGroup(
        currencies=tuple(
            CurrencyOutcome(
                currency=r.currency,
                payments=int(r.payments),
                settled_payments=int(r.settled),
                recovered_payments=int(r.recovered),
                settled_amount=int(r.settled_amount),
                recovered_amount=int(r.recovered_amount),
            )
            for r in sorted(groups, key=lambda r: str(r.currency))
        )
    )
