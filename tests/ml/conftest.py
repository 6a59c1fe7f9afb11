"""Shared fixtures for the ml tests: one small trained model per session."""

from __future__ import annotations

import pytest

from ml.simulator.world import FailureBatch, generate_failures
from ml.train import TrainConfig, TrainResult, train_model


@pytest.fixture(scope="session")
def history() -> FailureBatch:
    return generate_failures(8000, seed=21)


@pytest.fixture(scope="session")
def trained(history: FailureBatch) -> TrainResult:
    return train_model(history, TrainConfig(seed=3, num_threads=1))
