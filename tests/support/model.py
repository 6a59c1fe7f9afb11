"""A small trained retry-timing model, shared by the registry, serving and GraphQL tests."""

import functools

from jobs.training import RetryLog, simulated
from ml.artifact import save_model
from ml.train import TrainConfig, TrainResult

SMALL = TrainConfig(seed=3, num_boost_round=40, early_stopping_rounds=10, num_threads=1)


@functools.cache
def small_model() -> tuple[TrainResult, RetryLog]:
    """Trained once per test run on 3,000 simulated failures, with a later held-out window."""
    return simulated(3000, SMALL)


@functools.cache
def small_artifact() -> bytes:
    return save_model(small_model()[0].model)
