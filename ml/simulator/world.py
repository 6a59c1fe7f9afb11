"""The hidden world: failed payments with causes, paydays, and attempt success probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from ml import taxonomy, timeutil
from ml.records import PAST_SUCCESS_SLOTS, FailureRecords
from ml.simulator.config import CAUSES, OutcomeConfig, SimulatorConfig, load_config
from ml.simulator.customers import Customers, draw_customers

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I16 = npt.NDArray[np.int16]
IntIndex = npt.NDArray[np.intp] | I64

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
FUNDS, BLOCK, VELOCITY, PROCESSING, NEW_CARD, NEVER = range(6)
WEEKLY, BIWEEKLY, SEMIMONTHLY, MONTHLY = range(4)


@dataclass(frozen=True)
class HiddenState:
    """What the world knows and the portal never sees; one entry per failure."""

    cause: npt.NDArray[np.int8]
    cycle: npt.NDArray[np.int8]
    anchor_day: I64
    pay_dom: I64
    deposit_hour: F64
    jitter_days: F64
    key: I64
    coverage: F64
    spend_seconds: F64
    clear_at: F64

    def take(self, index: IntIndex) -> HiddenState:
        """Rows at the given positions."""
        return HiddenState(
            **{name: getattr(self, name)[index] for name in self.__dataclass_fields__}
        )


@dataclass(frozen=True)
class FailureBatch:
    """Failed payments: the observable records beside the hidden state that drives outcomes."""

    observed: FailureRecords
    hidden: HiddenState
    config: SimulatorConfig

    def __len__(self) -> int:
        return len(self.observed)

    def take(self, index: IntIndex) -> FailureBatch:
        """Rows at the given positions."""
        return FailureBatch(self.observed.take(index), self.hidden.take(index), self.config)


@dataclass(frozen=True)
class SimFailure:
    """One failure of a batch, as the sandbox holds it to answer retries."""

    batch: FailureBatch
    index: int

    @property
    def cause(self) -> str:
        """The hidden cause (simulator side only)."""
        return CAUSES[int(self.batch.hidden.cause[self.index])]


def _hash01(key: I64, salt: I64) -> F64:
    # Deterministic per (customer, payday) noise, so a payday is the same whenever it is asked.
    x = (key.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        salt.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    )
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def last_deposit(hidden: HiddenState, tz_minutes: I16 | I64, t: F64) -> F64:
    """Epoch seconds of each customer's latest pay deposit at or before t."""
    tz_h = tz_minutes.astype(np.float64) / 60.0
    day = timeutil.local_day(t + tz_h * timeutil.HOUR)
    cycle = hidden.cycle.astype(np.int64)
    period = np.where(cycle == WEEKLY, 7, 14)
    k = np.floor_divide(day - hidden.anchor_day, period)
    # Two periods back as well: a jittered payday may move past the one before it.
    periodic = np.stack([hidden.anchor_day + (k + d) * period for d in (-2, -1, 0, 1)], axis=1)
    monthly_cols = []
    for mo in (-2, -1, 0, 1):
        first = timeutil.month_start_day(day, mo)
        monthly_cols.append(np.where(cycle == SEMIMONTHLY, first, first + hidden.pay_dom - 1))
        monthly_cols.append(np.where(cycle == SEMIMONTHLY, first + 14, first + hidden.pay_dom - 1))
    monthly = np.stack(monthly_cols, axis=1)
    wd = timeutil.weekday(monthly)
    # Month-based paydays on a weekend are paid on the Friday before.
    monthly = monthly - np.where(wd == 5, 1, 0) - np.where(wd == 6, 2, 0)
    cand = np.where(
        (cycle < SEMIMONTHLY)[:, None], np.concatenate([periodic, periodic], 1), monthly
    )
    jitter = np.rint(hidden.jitter_days[:, None] * (2.0 * _hash01(hidden.key[:, None], cand) - 1.0))
    deposit = ((cand + jitter) * 24.0 + hidden.deposit_hour[:, None] - tz_h[:, None]) * 3600.0
    deposit = np.where(deposit <= t[:, None], deposit, -np.inf)
    out: F64 = deposit.max(axis=1)
    return out


def _period_days(cycle: npt.NDArray[np.int8]) -> F64:
    return np.array([7.0, 14.0, 15.2, 30.4])[cycle.astype(np.int64)]


def _emission_matrix(config: SimulatorConfig) -> F64:
    """P(category | funding group, cause) after mixing in the configured code noise."""
    cats = taxonomy.CATEGORIES
    out = np.zeros((2, len(CAUSES), len(cats)))
    for g, group in enumerate(("credit", "debit")):
        for c, cause in enumerate(CAUSES):
            key = f"funds_{group}" if cause == "funds" else cause
            row = config.codes.emission[key]
            for cat, p in row.items():
                out[g, c, cats.index(cat)] = p
            out[g, c] /= out[g, c].sum()
        shares = getattr(config.causes, group)
        weights = np.array([shares[c] for c in CAUSES])
        marginal = (weights[:, None] * out[g]).sum(axis=0) / weights.sum()
        out[g] = (1.0 - config.codes.noise) * out[g] + config.codes.noise * marginal[None, :]
    return out


def _sample_rows(rng: np.random.Generator, probs: F64) -> I64:
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    out: I64 = (cdf < u[:, None]).sum(axis=1).astype(np.int64)
    return out


def draw_failures(
    rng: np.random.Generator,
    customers: Customers,
    customer_index: I64,
    customer_ids: I64,
    failed_at: F64,
    failure_ids: I64,
    config: SimulatorConfig,
    *,
    resample_times: bool = True,
    cause: npt.NDArray[np.int8] | None = None,
) -> FailureBatch:
    """Draw hidden causes and observed declines for failures of the given customers.

    With `resample_times`, low-balance failures are moved to days far from the last payday
    (rejection sampling on the day, keeping the hour), as balances run low before paydays.
    """
    n = customer_index.shape[0]
    c = customers
    ci = customer_index
    funding = c.funding[ci]
    group = np.where(funding == taxonomy.FUNDINGS.index("credit"), 0, 1)
    if cause is None:
        credit_p = np.array([config.causes.credit[k] for k in CAUSES])
        debit_p = np.array([config.causes.debit[k] for k in CAUSES])
        cause = _sample_rows(rng, np.where((group == 0)[:, None], credit_p, debit_p)).astype(
            np.int8
        )
    hidden = HiddenState(
        cause=cause,
        cycle=c.cycle[ci],
        anchor_day=c.anchor_day[ci],
        pay_dom=c.pay_dom[ci],
        deposit_hour=c.deposit_hour[ci],
        jitter_days=c.jitter_days[ci],
        key=customer_ids.astype(np.int64),
        coverage=np.zeros(n),
        spend_seconds=np.zeros(n),
        clear_at=np.zeros(n),
    )
    failed_at = failed_at.astype(np.float64).copy()
    tz = c.tz_minutes[ci]
    if resample_times:
        pending = np.flatnonzero(cause == FUNDS)
        for _ in range(12):
            if pending.size == 0:
                break
            sub = hidden.take(pending)
            since = (failed_at[pending] - last_deposit(sub, tz[pending], failed_at[pending])) / (
                timeutil.DAY
            )
            accept = rng.random(pending.size) < np.clip(since / _period_days(sub.cycle), 0.1, 1.0)
            redo = pending[~accept]
            failed_at[redo] += rng.integers(-10, 11, size=redo.size) * timeutil.DAY
            pending = redo

    out = config.outcome
    coverage = np.clip(
        c.coverage_mean[ci] * np.exp(0.25 * rng.standard_normal(n)) * out.payday_effect, 0.0, 1.0
    )
    spend = out.spend_days_median * np.exp(out.spend_days_sigma * rng.standard_normal(n)) * 86400.0
    clear = np.full(n, np.inf)
    block_delay = out.block_clear_hours_median * np.exp(
        out.block_clear_sigma * rng.standard_normal(n)
    )
    velocity_delay = out.velocity_clear_hours + rng.exponential(
        out.velocity_clear_extra_hours_mean, n
    )
    processing_delay = rng.exponential(out.processing_clear_hours_mean, n)
    clear = np.where(cause == BLOCK, failed_at + block_delay * 3600.0, clear)
    clear = np.where(cause == VELOCITY, failed_at + velocity_delay * 3600.0, clear)
    clear = np.where(cause == PROCESSING, failed_at + processing_delay * 3600.0, clear)
    hidden = HiddenState(
        cause=cause,
        cycle=hidden.cycle,
        anchor_day=hidden.anchor_day,
        pay_dom=hidden.pay_dom,
        deposit_hour=hidden.deposit_hour,
        jitter_days=hidden.jitter_days,
        key=hidden.key,
        coverage=coverage,
        spend_seconds=spend,
        clear_at=clear,
    )

    emission = _emission_matrix(config)
    category = _sample_rows(rng, emission[group, cause.astype(np.int64)])
    network = np.zeros(n, dtype=np.int16)
    for k, cat in enumerate(taxonomy.CATEGORIES):
        m = np.flatnonzero(category == k)
        if m.size == 0:
            continue
        options = taxonomy.NETWORK_CODES_BY_CATEGORY[cat]
        codes = np.array([taxonomy.NETWORK_CODES.index(code) for code, _ in options])
        weights = np.array([w for _, w in options])
        network[m] = codes[rng.choice(len(options), size=m.size, p=weights / weights.sum())]
    advice = np.zeros(n, dtype=np.int16)
    is_mc = c.brand[ci] == taxonomy.BRANDS.index("mastercard")
    u: F64 = np.asarray(rng.random(n), dtype=np.float64)
    adv = taxonomy.ADVICE_CODES.index
    cc = config.codes
    advice[is_mc & (cause == NEW_CARD) & (u < cc.mastercard_advice_new_card)] = adv("01")
    never_mask = is_mc & (cause == NEVER) & (u < cc.mastercard_advice_never)
    advice[never_mask] = np.where(
        u[never_mask] < 0.7 * cc.mastercard_advice_never, adv("03"), adv("21")
    )
    vel_mask = is_mc & (cause == VELOCITY) & (u < cc.mastercard_advice_velocity)
    advice[vel_mask] = np.where(
        u[vel_mask] < 0.5 * cc.mastercard_advice_velocity, adv("24"), adv("25")
    )

    past = _past_successes(rng, hidden, tz, failed_at, config)
    observed = FailureRecords(
        failure_id=failure_ids.astype(np.int64),
        customer_id=customer_ids.astype(np.int64),
        failed_at=failed_at,
        amount_minor=c.amount_minor[ci],
        currency=c.currency[ci],
        category=category.astype(np.int16),
        network_code=network,
        advice_code=advice,
        funding=funding,
        brand=c.brand[ci],
        country=c.country[ci],
        tz_offset_minutes=tz,
        past_success=past,
    )
    return FailureBatch(observed, hidden, config)


def _past_successes(
    rng: np.random.Generator,
    hidden: HiddenState,
    tz: I16,
    failed_at: F64,
    config: SimulatorConfig,
) -> F64:
    """Earlier successful charges: monthly renewals, and earlier recoveries just after paydays."""
    n = failed_at.shape[0]
    past = np.full((n, PAST_SUCCESS_SLOTS), np.nan)
    # (last_deposit always finds a payday; the guard below only keeps NaN as "absent".)
    pop = config.population
    for k in (1, 2):
        present = rng.random(n) < pop.renewal_history_probability
        past[:, k - 1] = np.where(present, failed_at - 30.4 * k * timeutil.DAY, np.nan)
    count = np.minimum(rng.poisson(pop.past_recoveries_mean, n), PAST_SUCCESS_SLOTS - 2)
    for j in range(PAST_SUCCESS_SLOTS - 2):
        back = failed_at - rng.uniform(10.0, 330.0, n) * timeutil.DAY
        paid = last_deposit(hidden, tz, back) + rng.uniform(0.0, 30.0, n) * timeutil.HOUR
        past[:, 2 + j] = np.where((j < count) & np.isfinite(paid), paid, np.nan)
    return past


def generate_failures(
    n: int,
    seed: int,
    config: SimulatorConfig | None = None,
    *,
    start: float = DEFAULT_START,
    span_days: float = 365.0,
    repeat_share: float = 0.3,
) -> FailureBatch:
    """n first failures spread over a span; some customers fail more than once."""
    config = config or load_config()
    rng = np.random.default_rng(seed)
    n_customers = max(1, round(n * (1.0 - repeat_share)))
    customers = draw_customers(rng, n_customers, config)
    customer_index = np.concatenate(
        [np.arange(n_customers), rng.integers(0, n_customers, size=n - n_customers)]
    )[:n]
    pop = config.population
    day = np.floor(rng.uniform(0.0, span_days, n))
    hour = np.mod(pop.billing_hour_utc_mean + pop.billing_hour_utc_sd * rng.standard_normal(n), 24)
    failed_at = start + day * timeutil.DAY + hour * timeutil.HOUR
    batch = draw_failures(
        rng,
        customers,
        customer_index.astype(np.int64),
        customer_index.astype(np.int64) + 1,
        failed_at,
        np.arange(1, n + 1, dtype=np.int64),
        config,
    )
    order = np.argsort(batch.observed.failed_at, kind="stable")
    return batch.take(order)


@dataclass(frozen=True)
class AttemptOdds:
    """An attempt's chance before earlier retries count, and the start of the state it meets."""

    # Chance with no earlier retry: the cause's state at t, the decline's own recency, the
    # local hour and the customer's drift away. Unclipped: earlier retries' penalty comes first.
    fresh: F64
    # Start of the state the attempt meets: the decline, the latest payday, or the moment the
    # hold cleared. Earlier retries at or after it met the same state and failed.
    window_start: F64


def attempt_odds(batch: FailureBatch, rows: IntIndex, t: F64) -> AttemptOdds:
    """What an attempt at t meets, before earlier retries are counted."""
    h = batch.hidden
    obs = batch.observed
    out = batch.config.outcome
    cause = h.cause[rows]
    f0 = obs.failed_at[rows]
    p = np.zeros(t.shape[0])
    start = f0.copy()

    funds = np.flatnonzero(cause == FUNDS)
    if funds.size:
        r = np.asarray(rows)[funds]
        dep = last_deposit(h.take(r), obs.tz_offset_minutes[r], t[funds])
        after = dep > f0[funds]
        boost = h.coverage[r] * np.exp(-(t[funds] - dep) / h.spend_seconds[r])
        p[funds] = out.funds_p_before_payday + np.where(after, boost, 0.0)
        start[funds] = np.where(after, dep, f0[funds])

    clear = h.clear_at[rows]
    cleared = t >= clear
    for code, before, after_p in (
        (BLOCK, out.block_p_before, out.block_p_after),
        (VELOCITY, out.velocity_p_before, out.velocity_p_after),
        (PROCESSING, out.processing_p_before, out.processing_p_after),
    ):
        sel = cause == code
        p = np.where(sel, np.where(cleared, after_p, before), p)
        start = np.where(sel & cleared, clear, start)
    p = np.where(cause == NEW_CARD, out.new_card_p, p)
    p = np.where(cause == NEVER, out.never_p, p)

    recent_from = t - out.recent_attempt_hours * timeutil.HOUR
    # The original decline counts as a recent attempt, except for a processing fault,
    # where the issuer never really looked at the payment.
    p = p * out.recent_penalty ** ((f0 >= recent_from) & (cause != PROCESSING))
    hour = timeutil.hour_of_day(timeutil.local_seconds(t, obs.tz_offset_minutes[rows]))
    p = p * np.where(hour < 6.0, out.night_factor, 1.0)
    p = p * np.exp(-np.maximum(t - f0, 0.0) / (out.churn_days * timeutil.DAY))
    return AttemptOdds(fresh=p, window_start=start)


def retry_penalty(config: OutcomeConfig, window_start: F64, t: F64, prev: F64) -> F64:
    """Factor by which earlier failed retries `prev` (NaN-padded) lower an attempt at t.

    A retry that met the same state (at or after `window_start`) says the money or the issuer
    is still not there; a retry within the last hours still weighs on the issuer.
    """
    earlier = prev < t[:, None]
    same_window = (earlier & (prev >= window_start[:, None])).sum(axis=1)
    recent_from = t - config.recent_attempt_hours * timeutil.HOUR
    recent = (earlier & (prev >= recent_from[:, None])).sum(axis=1)
    out: F64 = config.repeat_penalty**same_window * config.recent_penalty**recent
    return out


def success_probability_batch(batch: FailureBatch, rows: IntIndex, t: F64, prev: F64) -> F64:
    """Chance that an attempt at t succeeds after earlier failed retries `prev` (NaN-padded)."""
    odds = attempt_odds(batch, rows, t)
    p = odds.fresh * retry_penalty(batch.config.outcome, odds.window_start, t, prev)
    result: F64 = np.clip(p, 0.0, 1.0)
    return result


def _history_array(history: Sequence[datetime], width: int) -> F64:
    arr = np.full((1, max(width, 1)), np.nan)
    for j, h in enumerate(history[-width:] if width else ()):
        arr[0, j] = h.timestamp()
    return arr


def success_probability(
    failure: SimFailure, attempt_time: datetime, attempt_history: Sequence[datetime] = ()
) -> float:
    """Chance that a retry at `attempt_time` succeeds after the earlier failed retries."""
    rows = np.array([failure.index], dtype=np.int64)
    t = np.array([attempt_time.timestamp()])
    prev = _history_array(attempt_history, len(attempt_history))
    return float(success_probability_batch(failure.batch, rows, t, prev)[0])


def attempt(
    failure: SimFailure,
    t: datetime,
    rng: np.random.Generator,
    attempt_history: Sequence[datetime] = (),
) -> bool:
    """Draw the outcome of a retry at time t (True = approved)."""
    return bool(rng.random() < success_probability(failure, t, attempt_history))
