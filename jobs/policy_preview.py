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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from app.db import Database
from app.enums import Actor, AttemptOutcome, ModelStatus, RetryStrategy
from app.retry.rules import AttemptRecord, PaymentLedger, evaluate
from app.retry.schedule import DecisionRequest, candidate_times
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


@dataclass
class _Run:
    """One schedule being forecast: a payment's context under one policy, its failure's row in
    the model's context, and the retries added so far (each declined again)."""

    ctx: PaymentContext
    row: int
    first_at: datetime | None
    ledger: PaymentLedger
    decide_at: datetime
    times: list[datetime] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    done: bool = False

    def add(self, at: datetime, probability: float) -> None:
        """A retry at `at`, declined again with the same decline; the next is decided after."""
        self.times.append(at)
        self.probabilities.append(probability)
        ledger = self.ledger
        decline = (
            None
            if ledger.last_decline is None
            else replace(ledger.last_decline, declined_at=at, not_before=None)
        )
        declined = AttemptRecord(
            at=at, actor=Actor.PORTAL, outcome=AttemptOutcome.DECLINED, decline=decline
        )
        self.ledger = replace(
            ledger,
            last_decline=decline,
            retries=(*ledger.retries, declined),
            card_history=(*ledger.card_history, declined),
            customer_history=(*ledger.customer_history, declined),
        )
        self.decide_at = at + DECISION_DELAY


def _probabilities(
    model: TimingModel, context: FailureContext, asked: Sequence[tuple[int, list[float], float]]
) -> list[float]:
    """The champion's chance for each (failure row, earlier retries, retry time), one
    prediction for all: a retry at that time succeeding after the earlier ones were declined."""
    if not asked:
        return []
    prev: F64 = np.full((len(asked), max(max(len(p) for _, p, _ in asked), 1)), np.nan)
    for i, (_, previous, _) in enumerate(asked):
        prev[i, : len(previous)] = previous
    rows = np.asarray([row for row, _, _ in asked], dtype=np.int64)
    at: F64 = np.asarray([[t] for _, _, t in asked], dtype=np.float64)
    probs = score_candidates(model, context, rows, prev, at)
    return [min(max(float(p), 0.0), 1.0) if math.isfinite(p) else 0.0 for p in probs[:, 0]]


def schedules(
    contexts: Sequence[tuple[PaymentContext, datetime | None]],
    *,
    model: TimingModel,
    scheduler: ModelScheduler,
    now: datetime,
) -> list[Schedule]:
    """Each context's remaining retries under its policy (see the module's docstring); with
    it, a retry already scheduled, kept as the first.

    The schedules advance together, one retry at a time: at each step the model's decisions
    of every schedule still going are scored in one batch (`ModelScheduler.prepare`), and the
    chances of the retries chosen in one prediction. Each schedule is the one it would be
    alone: every decision and chance reads only its own payment.
    """
    # The model's reading of each failure: the same for every retry of a schedule.
    context = failure_context(
        FailureRecords.from_rows([failure_row(ctx.view()) for ctx, _ in contexts]),
        model.payday_reading,
    )
    runs = [
        _Run(ctx=ctx, row=i, first_at=first_at, ledger=ctx.ledger, decide_at=now)
        for i, (ctx, first_at) in enumerate(contexts)
    ]
    for step in range(MAX_RETRIES):
        live = [r for r in runs if not r.done]
        if not live:
            break
        asked: list[tuple[_Run, PaymentContext, tuple[datetime, ...] | None]] = []
        requests: list[DecisionRequest] = []
        for r in live:
            if step == 0 and r.first_at is not None:
                continue
            ctx = replace(r.ctx, ledger=r.ledger)
            candidates = None
            if ctx.policy.strategy is RetryStrategy.MODEL:
                candidates = candidate_times(ledger=r.ledger, policy=ctx.policy, now=r.decide_at)
                requests.append((ctx.view(), r.ledger.retries, candidates, ctx.policy, r.decide_at))
            asked.append((r, ctx, candidates))
        scheduler.prepare(requests)
        chosen: list[tuple[_Run, datetime | None]] = [
            (r, max(r.first_at, now)) for r in live if step == 0 and r.first_at is not None
        ]
        chosen += [
            (r, decide(ctx, now=r.decide_at, scheduler=scheduler, candidates=c).chosen_at)
            for r, ctx, c in asked
        ]
        # The decisions the scheduler collects are a forecast's, never stored.
        scheduler.take_decisions()
        going: list[tuple[_Run, datetime]] = []
        for r, at in chosen:
            if at is None or not evaluate(at, ledger=r.ledger, policy=r.ctx.policy).allowed:
                r.done = True
            else:
                going.append((r, at))
        chances = _probabilities(
            model,
            context,
            [
                (r.row, [x.at.timestamp() for x in r.ledger.retries], at.timestamp())
                for r, at in going
            ],
        )
        for (r, at), chance in zip(going, chances, strict=True):
            r.add(at, chance)
    return [Schedule(tuple(r.times), tuple(r.probabilities)) for r in runs]


def forecast(preview: PreviewInput, *, champion: Loaded, now: datetime) -> Forecast:
    """Every previewed payment's schedules and chances, summed per currency (CPU only)."""
    model = champion.model
    if model is None:
        raise ValueError("the champion is not usable")
    # The engine's model scheduler on the champion.
    scheduler = ModelScheduler(champion=champion)
    asked = [(ctx, ctx.payment.next_retry_at) for ctx in preview.before]
    asked += [(ctx, None) for ctx in preview.after]
    found = schedules(asked, model=model, scheduler=scheduler, now=now)
    n = len(preview.before)
    payments = [
        PaymentForecast(str(b.payment.id), b.payment.currency, b.payment.amount_minor, c, p)
        for b, c, p in zip(preview.before, found[:n], found[n:], strict=True)
    ]
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
