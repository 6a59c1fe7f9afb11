"""Chooses retry times by expected recovered amount over the remaining budget, with a fallback."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from ml import timeutil
from ml.artifact import TimingModel
from ml.features import FEATURE_LIST, FailureContext, build_features, failure_context
from ml.records import FailureRecords, FailureRow

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SOURCE_MODEL = "model"
SOURCE_FALLBACK = "fallback"
SOURCE_STOP = "stop"


@dataclass(frozen=True)
class PolicyConfig:
    """How the model's scores become a plan."""

    budget: int = 4
    horizon_days: float = 14.0
    grid_hours: float = 3.0
    # Planned retries closer than this count as one chance, not two.
    min_gap_hours: float = 20.0
    # Below this chance a retry costs fees and issuer goodwill for nothing.
    min_probability: float = 0.03
    # A day of waiting costs this share of the chance: an earlier recovery keeps the customer.
    discount_per_day: float = 0.004
    fallback_days: tuple[float, ...] = (1.0, 3.0, 7.0, 14.0)


@dataclass(frozen=True)
class Contribution:
    """One feature's push on a decision, in words and in log-odds."""

    feature: str
    value: float
    log_odds: float
    text: str


@dataclass(frozen=True)
class Decision:
    """When to retry next (or not), why, and what the plan is expected to recover."""

    attempt_at: float | None
    probability: float | None
    expected_recovered_minor: int
    planned: tuple[float, ...]
    source: str
    reason: str
    explanation: tuple[Contribution, ...] = ()

    @property
    def attempt_at_utc(self) -> datetime | None:
        """The chosen time as an aware datetime."""
        return None if self.attempt_at is None else datetime.fromtimestamp(self.attempt_at, UTC)


@dataclass(frozen=True)
class Plan:
    """Vectorized plans: next time per row (NaN = stop), its chance, and the plan's value."""

    next_t: F64
    next_p: F64
    recover_probability: F64
    planned: F64


def candidate_grid(failed_at: F64, config: PolicyConfig) -> F64:
    """The default grid of candidate times per failure (n, G) before any rule filtering."""
    step = config.grid_hours * timeutil.HOUR
    offsets = np.arange(step, config.horizon_days * timeutil.DAY + 1.0, step)
    out: F64 = failed_at[:, None] + offsets[None, :]
    return out


def plan_batch(probabilities: F64, candidates: F64, remaining: I64, config: PolicyConfig) -> Plan:
    """Pick up to `remaining` well-spaced candidates that maximize the chance of recovery.

    Candidates that are not allowed are NaN. The next retry is the earliest planned one, so
    later slots are re-planned with what the next outcome teaches.
    """
    m = probabilities.shape[0]
    allowed = ~np.isnan(candidates)
    days_ahead = (
        np.where(
            allowed,
            candidates - np.nanmin(np.where(allowed, candidates, np.inf), axis=1, keepdims=True),
            0.0,
        )
        / timeutil.DAY
    )
    score = np.where(allowed, probabilities * (1.0 - config.discount_per_day * days_ahead), -1.0)
    k_max = int(remaining.max()) if m else 0
    planned = np.full((m, max(k_max, 1)), np.nan)
    planned_p = np.zeros((m, max(k_max, 1)))
    rows = np.arange(m)
    gap = config.min_gap_hours * timeutil.HOUR
    for step in range(k_max):
        j = score.argmax(axis=1)
        best = score[rows, j]
        take = (best >= config.min_probability) & (step < remaining)
        t = candidates[rows, j]
        planned[take, step] = t[take]
        planned_p[take, step] = probabilities[rows, j][take]
        near = np.abs(candidates - t[:, None]) < gap
        score = np.where(take[:, None] & near, -1.0, score)
    first = np.argmin(np.where(np.isnan(planned), np.inf, planned), axis=1)
    next_t = planned[rows, first]
    next_p = np.where(np.isnan(next_t), 0.0, planned_p[rows, first])
    recover = 1.0 - np.prod(1.0 - planned_p, axis=1)
    return Plan(next_t=next_t, next_p=next_p, recover_probability=recover, planned=planned)


def score_candidates(
    model: TimingModel,
    context: FailureContext,
    rows: I64,
    prev: F64,
    candidates: F64,
) -> F64:
    """Calibrated chance for every allowed candidate (NaN where the candidate is not allowed)."""
    m, g = candidates.shape
    flat = candidates.reshape(-1)
    ok = ~np.isnan(flat)
    probs = np.full(m * g, np.nan)
    if ok.any():
        cand_rows = np.repeat(rows, g)[ok]
        cand_prev = np.repeat(prev, g, axis=0)[ok]
        x = build_features(context, cand_rows, flat[ok], cand_prev)
        probs[ok] = model.predict(x)
    out: F64 = probs.reshape(m, g)
    return out


_LABELS = {
    "category": "the decline category",
    "network_code": "the network decline code",
    "advice_code": "the network advice",
    "funding": "the card funding",
    "brand": "the card brand",
    "country": "the issuer country",
    "currency": "the currency",
    "log_amount": "the amount",
    "attempt_number": "the number of retries so far",
    "hours_since_failure": "the time since the decline",
    "hours_since_last_attempt": "the time since the last attempt",
    "attempts_last_24h": "attempts in the last 24 hours",
    "mean_spacing_hours": "the spacing of earlier attempts",
    "local_hour": "the customer's local hour",
    "weekday": "the weekday",
    "day_of_month": "the day of the month",
    "failure_local_hour": "the local hour of the decline",
    "failure_weekday": "the weekday of the decline",
    "failure_day_of_month": "the day of month of the decline",
    "n_past_success": "the customer's earlier successful payments",
    "days_since_pay_weekday": "days since the customer's usual payment weekday",
    "pay_weekday_strength": "how regular the customer's payment weekday is",
    "days_since_biweekly_phase": "the customer's two-week payment rhythm",
    "days_since_pay_day_of_month": "days since the customer's usual day of month",
    "days_since_likely_payday": "days since the customer's likely payday",
    "payday_chance_today": "the chance that today is the customer's payday",
    "payday_chance_yesterday": "the chance that yesterday was the customer's payday",
    "payday_chance_2_days_ago": "the chance of a payday two days ago",
    "expected_paydays_since_failure": "a likely payday since the decline",
    "expected_paydays_since_last_attempt": "a likely payday since the last attempt",
    # Names of features of earlier feature versions, for the explanations of their models.
    "payday_since_failure": "a likely payday since the decline",
    "payday_since_last_attempt": "a likely payday since the last attempt",
}


def explain(model: TimingModel, x: F32, top: int = 3) -> tuple[Contribution, ...]:
    """Top feature contributions of one row in plain words."""
    return _worded(model.contributions(x[:1])[0, :-1], x[0], top)


def _worded(contrib: F64, x: F32, top: int) -> tuple[Contribution, ...]:
    """The `top` contributions of one row (`contrib`, bias dropped; `x`, its features)."""
    order = np.argsort(-np.abs(contrib))[:top]
    out = []
    for j in order:
        name = FEATURE_LIST.features[int(j)]
        c = float(contrib[j])
        verb = "raises" if c > 0 else "lowers"
        out.append(
            Contribution(
                feature=name,
                value=float(x[j]),
                log_odds=round(c, 4),
                text=f"{_LABELS.get(name, name)} {verb} the chance of success",
            )
        )
    return tuple(out)


def _fallback(
    record: FailureRecords,
    previous: Sequence[float],
    candidates: F64,
    config: PolicyConfig,
    reason: str,
) -> Decision:
    n_prev = len(previous)
    if n_prev >= len(config.fallback_days) or candidates.size == 0:
        return Decision(None, None, 0, (), SOURCE_STOP, f"{reason}; fixed schedule exhausted")
    target = float(record.failed_at[0]) + config.fallback_days[n_prev] * timeutil.DAY
    later = candidates[candidates >= target]
    chosen = float(later.min()) if later.size else float(candidates.max())
    return Decision(
        attempt_at=chosen,
        probability=None,
        expected_recovered_minor=0,
        planned=(chosen,),
        source=SOURCE_FALLBACK,
        reason=f"{reason}; fixed schedule day {config.fallback_days[n_prev]:g}",
    )


def choose_batch(
    model: TimingModel | None,
    failures: Sequence[FailureRow],
    previous_attempts: Sequence[Sequence[datetime | float]],
    candidates: Sequence[Sequence[datetime | float]],
    remaining_budgets: Sequence[int],
    config: PolicyConfig | None = None,
) -> list[Decision]:
    """`choose` for many failures at once, each decision the one `choose` gives it: one
    feature matrix over every failure's candidates (padded with NaN, which scoring and
    planning skip), one prediction, one plan, one contribution call for the explanations.

    A failure `choose` would stop or fall back on is answered as `choose` answers it; if the
    batch's scoring fails, each failure is chosen on its own, so one failure's error never
    changes another's decision.
    """
    config = config or PolicyConfig()
    n = len(failures)
    if not (len(previous_attempts) == len(candidates) == len(remaining_budgets) == n):
        raise ValueError("choose_batch needs one history, candidate set and budget per failure")
    prevs = [_seconds(p) for p in previous_attempts]
    cands = [np.asarray(sorted(_seconds(c)), dtype=np.float64) for c in candidates]
    out: list[Decision | None] = [None] * n
    live: list[int] = []
    for i in range(n):
        if remaining_budgets[i] <= 0 or cands[i].size == 0 or model is None:
            out[i] = choose(
                model, failures[i], prevs[i], candidates[i], remaining_budgets[i], config
            )
        else:
            live.append(i)
    if live and model is not None:
        try:
            chosen = _choose_live(
                model,
                [failures[i] for i in live],
                [prevs[i] for i in live],
                [cands[i] for i in live],
                [remaining_budgets[i] for i in live],
                config,
            )
        except Exception:  # scored one by one: each failure keeps its own outcome
            chosen = [
                choose(model, failures[i], prevs[i], candidates[i], remaining_budgets[i], config)
                for i in live
            ]
        for i, decision in zip(live, chosen, strict=True):
            out[i] = decision
    return [d for d in out if d is not None]


def _choose_live(
    model: TimingModel,
    failures: Sequence[FailureRow],
    prevs: Sequence[Sequence[float]],
    cands: Sequence[F64],
    budgets: Sequence[int],
    config: PolicyConfig,
) -> list[Decision]:
    m = len(failures)
    record = FailureRecords.from_rows(failures)
    context = failure_context(record, model.payday_reading)
    prev = np.full((m, max(max(len(p) for p in prevs), 1)), np.nan)
    cand = np.full((m, max(c.size for c in cands)), np.nan)
    for i in range(m):
        prev[i, : len(prevs[i])] = np.asarray(prevs[i], dtype=np.float64)
        cand[i, : cands[i].size] = cands[i]
    rows = np.arange(m, dtype=np.int64)
    probs = score_candidates(model, context, rows, prev, cand)
    plan = plan_batch(probs, cand, np.asarray(budgets, dtype=np.int64), config)
    out: list[Decision | None] = [None] * m
    explained: list[int] = []
    for i in range(m):
        own = probs[i, : cands[i].size]
        if not np.all(np.isfinite(own)):
            single = FailureRecords.from_rows([failures[i]])
            out[i] = _fallback(single, prevs[i], cands[i], config, "model failed: non-finite score")
        elif np.isnan(plan.next_t[i]):
            out[i] = Decision(
                None,
                float(np.nanmax(own)),
                0,
                (),
                SOURCE_STOP,
                f"best chance below {config.min_probability:.0%}: not worth a retry",
            )
        else:
            explained.append(i)
    if explained:
        at = np.asarray(explained, dtype=np.int64)
        t_next = plan.next_t[at]
        x = build_features(context, at, t_next, prev[at])
        contrib = model.contributions(x)[:, :-1]
        for k, i in enumerate(explained):
            amount = int(record.amount_minor[i])
            planned = tuple(float(t) for t in np.sort(plan.planned[i]) if not np.isnan(t))
            out[i] = Decision(
                attempt_at=float(t_next[k]),
                probability=float(plan.next_p[i]),
                expected_recovered_minor=round(amount * float(plan.recover_probability[i])),
                planned=planned,
                source=SOURCE_MODEL,
                reason=f"earliest of {len(planned)} planned retries maximizing expected recovery",
                explanation=_worded(contrib[k], x[k], 3),
            )
    return [d for d in out if d is not None]


def _seconds(values: Sequence[datetime | float]) -> list[float]:
    return [v.timestamp() if isinstance(v, datetime) else float(v) for v in values]


def choose(
    model: TimingModel | None,
    failure: FailureRow,
    previous_attempts: Sequence[datetime | float],
    candidates: Sequence[datetime | float],
    remaining_budget: int,
    config: PolicyConfig | None = None,
) -> Decision:
    """Decide the next retry of one failure among allowed candidate times.

    Times are aware datetimes or UTC epoch seconds; the decision's times are epoch seconds.
    `previous_attempts` are the retries made since the decline (every attempt on the
    credential, whoever made it). The candidates are already filtered by the retry engine's
    rules. Falls back to the fixed schedule, with the reason, when there is no model or it fails.
    """
    config = config or PolicyConfig()
    record = FailureRecords.from_rows([failure])
    previous_attempts = _seconds(previous_attempts)
    cand = np.asarray(sorted(_seconds(candidates)), dtype=np.float64)
    if remaining_budget <= 0 or cand.size == 0:
        return Decision(None, None, 0, (), SOURCE_STOP, "no budget or no allowed time left")
    if model is None:
        return _fallback(record, previous_attempts, cand, config, "no model loaded")
    try:
        context = failure_context(record, model.payday_reading)
        width = max(len(previous_attempts), 1)
        prev = np.full((1, width), np.nan)
        prev[0, : len(previous_attempts)] = np.asarray(previous_attempts, dtype=np.float64)
        rows = np.zeros(1, dtype=np.int64)
        probs = score_candidates(model, context, rows, prev, cand[None, :])
        if not np.all(np.isfinite(probs)):
            raise ValueError("non-finite score")
        plan = plan_batch(probs, cand[None, :], np.array([remaining_budget]), config)
    except Exception as exc:  # Any model failure must degrade to the schedule.
        return _fallback(record, previous_attempts, cand, config, f"model failed: {exc}")
    amount = int(record.amount_minor[0])
    expected = round(amount * float(plan.recover_probability[0]))
    planned = tuple(float(t) for t in np.sort(plan.planned[0]) if not np.isnan(t))
    if np.isnan(plan.next_t[0]):
        return Decision(
            None,
            float(np.nanmax(probs)),
            0,
            (),
            SOURCE_STOP,
            f"best chance below {config.min_probability:.0%}: not worth a retry",
        )
    t_next = float(plan.next_t[0])
    x = build_features(context, rows, np.array([t_next]), prev)
    return Decision(
        attempt_at=t_next,
        probability=float(plan.next_p[0]),
        expected_recovered_minor=expected,
        planned=planned,
        source=SOURCE_MODEL,
        reason=f"earliest of {len(planned)} planned retries maximizing expected recovery",
        explanation=explain(model, x),
    )
