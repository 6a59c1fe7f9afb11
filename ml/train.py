"""Training of the attempt-success model on simulated history with exploration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ml import baselines, paydays, taxonomy
from ml.artifact import TimingModel
from ml.engine import PolicyRun, run_policy
from ml.features import FEATURE_LIST, build_features, failure_context, fit_payday_prior
from ml.records import FailureRecords
from ml.simulator.world import FailureBatch

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; defaults are what the evaluation uses."""

    seed: int = 0
    exploration_share: float = 0.5
    max_attempts: int = 6
    horizon_days: float = 14.0
    num_boost_round: int = 400
    early_stopping_rounds: int = 30
    num_threads: int = 2
    params: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 0.12,
            "num_leaves": 31,
            "min_data_in_leaf": 200,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "max_cat_to_onehot": 8,
            "cat_smooth": 20.0,
        }
    )
    # Time-ordered shares of failures: train, early stopping, calibration, test.
    split: tuple[float, float, float, float] = (0.6, 0.1, 0.1, 0.2)


@dataclass(frozen=True)
class AttemptRows:
    """One row per logged retry: features, outcome, and which failure and time it was."""

    x: F32
    y: F64
    failure_row: I64
    t: F64


@dataclass(frozen=True)
class TrainResult:
    """The calibrated model with its held-out metrics."""

    model: TimingModel
    metrics: dict[str, Any]


def simulate_history(
    batch: FailureBatch, config: TrainConfig, seed: int | None = None
) -> PolicyRun:
    """Retry the failures as merchants would, plus a share of randomized retry times."""
    rng = np.random.default_rng(config.seed if seed is None else seed)
    obs = batch.observed
    n = len(batch)
    k = config.max_attempts
    times = np.full((n, k), np.nan)
    explore = rng.random(n) < config.exploration_share
    times[explore] = baselines.exploration_times(obs, rng, k, config.horizon_days)[explore]
    schedules = [baselines.fixed_times(obs, d) for d in baselines.FIXED_SCHEDULES.values()]
    schedules.append(baselines.decline_aware_times(obs, config.horizon_days))
    which = rng.integers(0, len(schedules), size=n)
    for s, table in enumerate(schedules):
        rows = ~explore & (which == s)
        width = min(k, table.shape[1])
        times[rows, :width] = table[rows, :width]
    uniforms = rng.random((n, k))
    planner = baselines.table_planner(obs, times)
    return run_policy(batch, planner, uniforms, horizon_days=max(28.0, config.horizon_days))


def attempt_rows(
    records: FailureRecords,
    attempts: F64,
    success_index: I64,
    payday_reading: paydays.Reading | None = None,
) -> AttemptRows:
    """Turn a retry log into training rows, features as of each retry's time.

    `attempts` is (n, K) retry times in order, NaN where none was made; `success_index` is
    the position of the approved retry per failure, -1 when none was; `payday_reading` how
    the features read paydays (the model's; ml/paydays.py's defaults without it).
    """
    context = failure_context(records, payday_reading)
    made = ~np.isnan(attempts)
    fi, ki = np.nonzero(made)
    t = attempts[fi, ki]
    k = attempts.shape[1]
    prev = np.where(np.arange(k)[None, :] < ki[:, None], attempts[fi], np.nan)
    x = build_features(context, fi, t, prev)
    y = (success_index[fi] == ki).astype(np.float64)
    return AttemptRows(x=x, y=y, failure_row=fi.astype(np.int64), t=t)


def _split(records: FailureRecords, shares: tuple[float, float, float, float]) -> I64:
    """Split label per failure by time; a customer stays in the split of its first failure."""
    order = np.argsort(records.failed_at, kind="stable")
    cuts = np.cumsum(shares)[:-1] / sum(shares)
    label = np.empty(len(records), dtype=np.int64)
    label[order] = np.searchsorted(cuts * len(records), np.arange(len(records)), side="right")
    first: dict[int, int] = {}
    for i in order:
        first.setdefault(int(records.customer_id[i]), int(label[i]))
    customer_split = np.array([first[int(c)] for c in records.customer_id])
    # Later failures of a customer already seen are dropped (-1), so no customer leaks across.
    out: I64 = np.where(customer_split == label, label, -1)
    return out


def expected_calibration_error(y: F64, p: F64, bins: int = 10) -> float:
    """Weighted mean gap between predicted and observed rates over equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.sum() * abs(float(p[m].mean()) - float(y[m].mean()))
    return total / max(len(y), 1)


def classification_metrics(y: F64, p: F64, category: npt.NDArray[np.int16]) -> dict[str, Any]:
    """AUC, log loss, Brier, ECE overall and per decline category."""

    def block(yy: F64, pp: F64) -> dict[str, Any]:
        both = 0.0 < yy.mean() < 1.0
        return {
            "rows": int(yy.size),
            "success_rate": round(float(yy.mean()), 4),
            "mean_prediction": round(float(pp.mean()), 4),
            "auc": round(float(roc_auc_score(yy, pp)), 4) if both else None,
            "log_loss": round(float(log_loss(yy, np.clip(pp, 1e-6, 1 - 1e-6), labels=[0, 1])), 4),
            "brier": round(float(brier_score_loss(yy, pp)), 4),
            "ece": round(float(expected_calibration_error(yy, pp)), 4),
        }

    out = block(y, p)
    out["by_category"] = {
        taxonomy.CATEGORIES[int(c)]: block(y[category == c], p[category == c])
        for c in np.unique(category)
        if (category == c).sum() >= 50
    }
    return out


def train_model(
    batch: FailureBatch,
    config: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Simulate logged history with exploration on a simulated population, then fit."""
    config = config or TrainConfig()
    if progress:
        progress("simulating retry history")
    run = simulate_history(batch, config)
    return fit_model(batch.observed, run.attempts, run.success_index, config, progress)


def fit_model(
    records: FailureRecords,
    attempts: F64,
    success_index: I64,
    config: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train LightGBM with early stopping on a retry log, calibrate on a later slice, measure.

    This is the entry point for stored attempt history as well as simulated history.
    """
    config = config or TrainConfig()
    say = progress or (lambda _msg: None)
    # The population's pay schedules, from the same history: sharper than an even prior for
    # customers with few earlier recoveries.
    reading = paydays.Reading(fit_payday_prior(records))
    rows = attempt_rows(records, attempts, success_index, reading)
    split = _split(records, config.split)[rows.failure_row]
    parts = [np.flatnonzero(split == s) for s in range(4)]
    if any(p.size == 0 for p in parts):
        raise ValueError("not enough history to split into train/valid/calibration/test")
    train_idx, valid_idx, calib_idx, test_idx = parts
    params: dict[str, Any] = {
        "objective": "binary",
        "metric": "binary_logloss",
        "verbose": -1,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": config.num_threads,
        **config.params,
    }
    names = list(FEATURE_LIST.features)
    cats = list(FEATURE_LIST.categorical)
    train_set = lgb.Dataset(
        rows.x[train_idx],
        label=rows.y[train_idx],
        feature_name=names,
        categorical_feature=cats,
        params={"verbose": -1},
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(
        rows.x[valid_idx], label=rows.y[valid_idx], reference=train_set, params={"verbose": -1}
    )
    say(f"training on {train_idx.size} attempts")
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )
    booster.free_dataset()
    best = booster.best_iteration or booster.current_iteration()
    # Keep only the trees early stopping chose, so serving matches what was validated.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    say("calibrating")
    raw_calib = np.asarray(booster.predict(rows.x[calib_idx], num_threads=config.num_threads))
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    # One success and one failure more at each end of the scores: where the calibration slice
    # is thin, the map stops short of a certain 0 or 1 that a later window would contradict.
    ends = np.repeat([raw_calib.min(), raw_calib.max()], 2)
    iso.fit(
        np.concatenate([raw_calib, ends]),
        np.concatenate([rows.y[calib_idx], [0.0, 1.0, 0.0, 1.0]]),
    )
    model = TimingModel(
        booster=booster,
        calibrator_x=np.asarray(iso.X_thresholds_, dtype=np.float64),
        calibrator_y=np.asarray(iso.y_thresholds_, dtype=np.float64),
        num_threads=config.num_threads,
    )
    say("measuring on the held-out window")
    test_cat = records.category[rows.failure_row[test_idx]]
    p_test = model.predict(rows.x[test_idx])
    raw_test = model.predict_raw(rows.x[test_idx])
    metrics = classification_metrics(rows.y[test_idx], p_test, test_cat)
    metrics["uncalibrated_ece"] = round(expected_calibration_error(rows.y[test_idx], raw_test), 4)
    metrics["best_iteration"] = int(best)
    metrics["rows"] = {
        "train": int(train_idx.size),
        "early_stopping": int(valid_idx.size),
        "calibration": int(calib_idx.size),
        "test": int(test_idx.size),
    }
    metrics["exploration_share"] = config.exploration_share
    window = records.failed_at
    model.metadata = {
        "seed": config.seed,
        "params": params,
        "best_iteration": int(best),
        "data_window": [float(window.min()), float(window.max())],
        "metrics": {k: metrics[k] for k in ("auc", "log_loss", "brier", "ece")},
        "payday_prior": [float(v) for v in reading.prior],
        "payday_retry_success": reading.retry_success,
    }
    model.num_threads = 1
    return TrainResult(model=model, metrics=metrics)
