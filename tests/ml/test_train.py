"""Training reproducibility, metrics, and the model artifact's feature-list check."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ml import paydays
from ml.artifact import ArtifactError, FeatureListMismatchError, load_model, save_model
from ml.features import FEATURE_LIST, build_features, failure_context
from ml.simulator.world import FailureBatch, generate_failures
from ml.train import TrainConfig, TrainResult, expected_calibration_error, train_model


def test_training_is_reproducible_with_a_seed(history: FailureBatch, trained: TrainResult) -> None:
    again = train_model(history, TrainConfig(seed=3, num_threads=1))
    assert again.model.booster.model_to_string() == trained.model.booster.model_to_string()
    assert again.metrics["auc"] == trained.metrics["auc"]
    assert np.array_equal(again.model.calibrator_y, trained.model.calibrator_y)


def test_metrics_are_reported_overall_and_per_category(trained: TrainResult) -> None:
    m = trained.metrics
    for key in ("auc", "log_loss", "brier", "ece"):
        assert m[key] is not None
    assert m["auc"] > 0.65
    assert "insufficient_funds" in m["by_category"]
    assert m["rows"]["test"] > 0
    assert m["exploration_share"] == 0.5


def test_ece_of_a_perfectly_calibrated_constant_is_zero() -> None:
    y = np.array([0.0, 1.0] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)


def test_artifact_round_trip_keeps_predictions(trained: TrainResult) -> None:
    batch = generate_failures(200, seed=30)
    ctx = failure_context(batch.observed)
    rows = np.arange(200, dtype=np.int64)
    x = build_features(ctx, rows, batch.observed.failed_at + 86400.0, np.full((200, 1), np.nan))
    loaded = load_model(save_model(trained.model))
    assert np.allclose(loaded.predict(x), trained.model.predict(x))
    assert loaded.metadata["seed"] == 3
    assert loaded.feature_list.tag == FEATURE_LIST.tag


def test_artifact_refuses_another_feature_list(trained: TrainResult) -> None:
    data = save_model(trained.model)
    newer = dataclasses.replace(FEATURE_LIST, version=FEATURE_LIST.version + 1)
    with pytest.raises(FeatureListMismatchError, match="does not match"):
        load_model(data, expected=newer)
    doc = json.loads(data)
    doc["feature_list"]["features"] = doc["feature_list"]["features"][:-1]
    with pytest.raises(FeatureListMismatchError):
        load_model(json.dumps(doc).encode())


def test_artifact_refuses_garbage() -> None:
    with pytest.raises(ArtifactError):
        load_model(b"\x00not json")
    with pytest.raises(ArtifactError):
        load_model(b'{"format": "something-else"}')


def test_a_model_reads_paydays_as_it_was_trained_to(trained: TrainResult) -> None:
    loaded = load_model(save_model(trained.model))
    reading = loaded.payday_reading
    assert np.array_equal(reading.prior, trained.model.payday_reading.prior)
    assert reading.retry_success == paydays.RETRY_SUCCESS
    # Fitted on the history: the kinds keep their shares, the weekdays are the population's.
    assert not np.allclose(reading.prior, paydays.default_prior())
    assert reading.prior.sum() == pytest.approx(1.0)
    # A model stored before the reading was: the default prior and the weight of its time.
    legacy = dataclasses.replace(trained.model, metadata={"seed": 3})
    assert np.array_equal(legacy.payday_reading.prior, paydays.default_prior())
    assert legacy.payday_reading.retry_success == paydays.LEGACY_RETRY_SUCCESS
    broken = dataclasses.replace(trained.model, metadata={"payday_prior": [0.5, 0.5]})
    with pytest.raises(ArtifactError, match="payday_prior must be"):
        _ = broken.payday_reading
