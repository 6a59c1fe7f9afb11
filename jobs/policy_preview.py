"""The champion model's forecast of a retry policy change: each scheduled payment's remaining
retries under the policy now and under the change, and its chance of recovery under each.

Assumptions, as the API states them:
- A payment's remaining retries follow the schedule its policy would choose from now: under
  the current policy the retry already scheduled comes first (the engine keeps it), under the
  change every retry is decided afresh (the engine re-decides every scheduled payment). Each
  later retry is decided as the engine would after the one before it was declined again, with
  the same decline, within the network rules, the window and the attempt limit.
- The champion scores each retry given the declined ones before it; the payment's chance of
  recovery is 1 - (1 - p1)(1 - p2)…, and its expected recovered amount that chance times its
  amount. Summed per currency, never across currencies; the sum of chances is the expected
  number of payments recovered.
- Nothing else changes meanwhile: no new card, no payment by other means, no other payment of
  the customer's in the caps, the merchant's status as it is now.
"""

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from app.db import Database
from app.enums import Actor, AttemptOutcome, ModelStatus
from app.retry.rules import AttemptRecord, evaluate
from app.retry.schedule import PaymentView, Scheduler
from app.services.policy_preview import PreviewInput
from app.services.retry.engine import decide
from app.services.retry.ledger import PaymentContext
from jobs.model import CACHE, Loaded, ModelCache, ModelScheduler, failure_row, load_current
from ml.artifact import TimingModel
from ml.features import FailureContext, failure_context
from ml.policy import score_candidates
from ml.records import FailureRecords

F64 = npt.NDArray[np.float64]

# More retries than any policy allows (15): a guard, never the limit that applies.
MAX_RETRIES = 16
# The engine decides a payment's next retry once its last one is declined, a moment later.
DECISION_DELAY = timedelta(seconds=1)
# How many payments the forecast lists one by one (the largest changes in chance first).
PAYMENT_SAMPLE = 20


@dataclass(frozen=True)
class Schedule:
    """A payment's remaining retries under one policy and the champion's chance for each."""

    times: tuple[datetime, ...]
    probabilities: tuple[float, ...]

    @property
    def recovery_probability(self) -> float:
        return 1.0 - math.prod(1.0 - p for p in self.probabilities)


@dataclass(frozen=True)
class PaymentForecast:
    payment_id: str
    currency: str
    amount_minor: int
    current: Schedule
    proposed: Schedule

    @property
    def change(self) -> float:
        return self.proposed.recovery_probability - self.current.recovery_probability


@dataclass(frozen=True)
class CurrencyForecast:
    """One currency's payments: their count and amount, and the expected recoveries (count and
    amount in minor units) under the current policy and the change."""

    currency: str
    payments: int
    amount_minor: int
    current_recoveries: float
    current_amount_minor: int
    proposed_recoveries: float
    proposed_amount_minor: int


@dataclass(frozen=True)
class Forecast:
    model_id: str
    currencies: list[CurrencyForecast]
    payments: list[PaymentForecast]
    rescheduled: int


def _context(view: PaymentView) -> FailureContext:
    """The model's reading of the payment's failure: the same for every retry of a schedule."""
    return failure_context(FailureRecords.from_rows([failure_row(view)]))


def _probability(
    model: TimingModel, context: FailureContext, previous: Sequence[datetime], at: datetime
) -> float:
    """The champion's chance that a retry at `at` succeeds after the `previous` declined ones
    (`context`: the payment's failure, from `_context`)."""
    width = max(len(previous), 1)
    prev: F64 = np.full((1, width), np.nan)
    prev[0, : len(previous)] = [p.timestamp() for p in previous]
    probs = score_candidates(
        model, context, np.zeros(1, dtype=np.int64), prev, np.array([[at.timestamp()]])
    )
    value = float(probs[0, 0])
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def schedule(
    ctx: PaymentContext,
    *,
    model: TimingModel,
    scheduler: Scheduler,
    now: datetime,
    first_at: datetime | None,
) -> Schedule:
    """The payment's remaining retries under its context's policy (see the module's
    docstring); `first_at` is a retry already scheduled, kept as the first."""
    ledger = ctx.ledger
    context = _context(ctx.view())
    times: list[datetime] = []
    probabilities: list[float] = []
    decide_at = now
    for step in range(MAX_RETRIES):
        if step == 0 and first_at is not None:
            at: datetime | None = max(first_at, now)
        else:
            at = decide(replace(ctx, ledger=ledger), now=decide_at, scheduler=scheduler).chosen_at
        if at is None or not evaluate(at, ledger=ledger, policy=ctx.policy).allowed:
            break
        probabilities.append(_probability(model, context, [r.at for r in ledger.retries], at))
        times.append(at)
        decline = (
            None
            if ledger.last_decline is None
            else replace(ledger.last_decline, declined_at=at, not_before=None)
        )
        declined = AttemptRecord(
            at=at, actor=Actor.PORTAL, outcome=AttemptOutcome.DECLINED, decline=decline
        )
        ledger = replace(
            ledger,
            last_decline=decline,
            retries=(*ledger.retries, declined),
            card_history=(*ledger.card_history, declined),
            customer_history=(*ledger.customer_history, declined),
        )
        decide_at = at + DECISION_DELAY
    return Schedule(tuple(times), tuple(probabilities))


def forecast(preview: PreviewInput, *, champion: Loaded, now: datetime) -> Forecast:
    """Every previewed payment's schedules and chances, summed per currency (CPU only)."""
    model = champion.model
    if model is None:
        raise ValueError("the champion is not usable")
    payments: list[PaymentForecast] = []
    for before, after in zip(preview.before, preview.after, strict=True):
        # The engine's model scheduler on the champion; the decisions it collects are dropped.
        scheduler = ModelScheduler(champion=champion)
        current = schedule(
            before, model=model, scheduler=scheduler, now=now, first_at=before.payment.next_retry_at
        )
        proposed = schedule(after, model=model, scheduler=scheduler, now=now, first_at=None)
        p = before.payment
        payments.append(PaymentForecast(str(p.id), p.currency, p.amount_minor, current, proposed))
    return Forecast(
        model_id=str(champion.id),
        currencies=_per_currency(payments),
        payments=sorted(payments, key=lambda f: (-abs(f.change), f.payment_id))[:PAYMENT_SAMPLE],
        rescheduled=sum(1 for f in payments if f.current.times != f.proposed.times),
    )


def _per_currency(payments: Sequence[PaymentForecast]) -> list[CurrencyForecast]:
    groups: dict[str, list[PaymentForecast]] = defaultdict(list)
    for f in payments:
        groups[f.currency].append(f)
    return [
        CurrencyForecast(
            currency=currency,
            payments=len(group),
            amount_minor=sum(f.amount_minor for f in group),
            current_recoveries=sum(f.current.recovery_probability for f in group),
            current_amount_minor=round(
                sum(f.amount_minor * f.current.recovery_probability for f in group)
            ),
            proposed_recoveries=sum(f.proposed.recovery_probability for f in group),
            proposed_amount_minor=round(
                sum(f.amount_minor * f.proposed.recovery_probability for f in group)
            ),
        )
        for currency, group in sorted(groups.items())
    ]


async def forecast_change(
    db: Database, preview: PreviewInput, *, now: datetime, cache: ModelCache = CACHE
) -> Forecast | None:
    """The champion's forecast of the previewed change, off the event loop; None without a
    usable champion."""
    champion = await load_current(db, ModelStatus.CHAMPION, cache)
    if champion is None or champion.model is None:
        return None
    return await asyncio.to_thread(forecast, preview, champion=champion, now=now)
