"""The oracle: exact chances, every retry within the rules, and no timing that recovers more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml import baselines, rules, timeutil
from ml.engine import Planner, run_policy
from ml.evaluate import SAME_BUDGET_FIXED, model_planner
from ml.oracle import OracleConfig, oracle_planner, plan_failures
from ml.policy import PolicyConfig
from ml.simulator.config import load_config
from ml.simulator.world import (
    DEFAULT_START,
    NEVER,
    NEW_CARD,
    FailureBatch,
    generate_failures,
    success_probability_batch,
)
from ml.train import TrainResult

F64 = npt.NDArray[np.float64]
CONFIGS = sorted((Path(__file__).parents[2] / "ml" / "configs").glob("*.toml"))
HORIZON_DAYS = 14.0


def _played(batch: FailureBatch, planner: Planner) -> F64:
    """Every retry a policy makes when none succeeds: its whole plan, as the engine plays it."""
    never = np.ones((len(batch), 8))
    return run_policy(batch, planner, never, HORIZON_DAYS).attempts


def _chance(batch: FailureBatch, attempts: F64) -> F64:
    """The world's exact chance that a log of retries recovers each failure."""
    n = len(batch)
    rows = np.arange(n, dtype=np.int64)
    survive = np.ones(n)
    for k in range(attempts.shape[1]):
        prev = attempts[:, :k] if k else np.full((n, 1), np.nan)
        made = ~np.isnan(attempts[:, k])
        p = np.zeros(n)
        p[made] = success_probability_batch(batch, rows[made], attempts[made, k], prev[made])
        survive *= 1.0 - p
    out: F64 = 1.0 - survive
    return out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), config=st.sampled_from(CONFIGS))
def test_oracle_keeps_every_rule_and_no_same_budget_schedule_beats_it(
    seed: int, config: Path
) -> None:
    batch = generate_failures(300, seed, load_config(config))
    obs = batch.observed
    plans = plan_failures(batch)
    played = _played(batch, oracle_planner(obs, plans))
    # The rules refused none of its retries: what the engine played is the plan.
    assert np.array_equal(played[:, :4], plans.times, equal_nan=True)
    assert np.all(np.isnan(played[:, 4:]))
    assert rules.count_violations(obs, played).sum() == 0
    assert np.all(np.isnan(played[~rules.retryable(obs)]))
    made = ~np.isnan(played)
    offset = (played - obs.failed_at[:, None])[made]
    assert np.all(offset >= baselines.MIN_GAP_HOURS * timeutil.HOUR)
    assert np.all(offset <= HORIZON_DAYS * timeutil.DAY)
    assert np.all(np.diff(played[:, :4], axis=1)[made[:, 1:4]] >= timeutil.HOUR)
    oracle = _chance(batch, played)
    assert np.allclose(oracle, plans.chance, rtol=0.0, atol=1e-12)
    # Failure by failure, no schedule with the same budget and window gives a better chance.
    fixed = [baselines.FIXED_SCHEDULES[k] for k in SAME_BUDGET_FIXED]
    schedules = [baselines.fixed_planner(obs, days) for days in fixed]
    schedules.append(baselines.decline_aware_planner(obs, HORIZON_DAYS))
    for planner in schedules:
        assert np.all(oracle >= _chance(batch, _played(batch, planner)) - 1e-9)


def test_no_model_timing_beats_the_oracle_on_any_failure(trained: TrainResult) -> None:
    batch = generate_failures(1500, seed=31, start=DEFAULT_START + 365.0 * timeutil.DAY)
    config = PolicyConfig()
    plans = plan_failures(batch, OracleConfig(budget=config.budget))
    oracle = _chance(batch, _played(batch, oracle_planner(batch.observed, plans)))
    model = _chance(batch, _played(batch, model_planner(trained.model, batch.observed, config)))
    assert np.all(oracle >= model - 1e-9)
    assert oracle.mean() > model.mean() + 0.03


def test_oracle_skips_failures_no_retry_can_recover() -> None:
    batch = generate_failures(600, seed=12)
    plans = plan_failures(batch, OracleConfig(budget=3))
    hopeless = ~rules.retryable(batch.observed) | np.isin(batch.hidden.cause, [NEW_CARD, NEVER])
    assert plans.times.shape == (600, 3)
    assert np.all(np.isnan(plans.times[hopeless]))
    assert np.all(plans.chance[hopeless] == 0.0)
    assert np.all(plans.chance[~hopeless] > 0.0)
