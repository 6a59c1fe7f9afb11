"""Promotion gate: later window only, challenger must beat the champion."""

from __future__ import annotations

import numpy as np

from ml import timeutil
from ml.artifact import TimingModel
from ml.registry import promotion_gate
from ml.simulator.world import DEFAULT_START, FailureBatch, generate_failures
from ml.train import TrainConfig, TrainResult, simulate_history


def _later_log() -> tuple[FailureBatch, np.ndarray, np.ndarray]:
    batch = generate_failures(3000, seed=44, start=DEFAULT_START + 500 * timeutil.DAY)
    run = simulate_history(batch, TrainConfig(seed=5))
    return batch, run.attempts, run.success_index


def test_first_model_is_promoted_on_a_later_window(trained: TrainResult) -> None:
    batch, attempts, success = _later_log()
    verdict = promotion_gate(trained.model, None, batch.observed, attempts, success)
    assert verdict.promote
    assert verdict.challenger["auc"] is not None


def test_a_worse_challenger_is_not_promoted(trained: TrainResult) -> None:
    batch, attempts, success = _later_log()
    # A challenger whose calibrator predicts a constant knows nothing.
    flat = TimingModel(
        booster=trained.model.booster,
        calibrator_x=np.array([0.0, 1.0]),
        calibrator_y=np.array([0.2, 0.2]),
        metadata=dict(trained.model.metadata),
    )
    verdict = promotion_gate(flat, trained.model, batch.observed, attempts, success)
    assert not verdict.promote
    assert "champion stays" in verdict.reason
    assert promotion_gate(trained.model, flat, batch.observed, attempts, success).promote


def test_window_overlapping_training_data_is_refused(
    trained: TrainResult, history: FailureBatch
) -> None:
    run = simulate_history(history, TrainConfig(seed=5))
    verdict = promotion_gate(trained.model, None, history.observed, run.attempts, run.success_index)
    assert not verdict.promote
    assert "does not start after" in verdict.reason
