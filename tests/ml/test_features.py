"""Feature builder: observable inputs only, as-of semantics, one path for training and serving."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

import numpy as np

import ml.features
from ml.features import FEATURE_LIST, N_FEATURES, build_features, failure_context
from ml.records import FailureRecords
from ml.simulator.world import FailureBatch, HiddenState, generate_failures


def _imports(module: object) -> set[str]:
    tree = ast.parse(Path(inspect.getfile(module)).read_text())  # type: ignore[arg-type]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_feature_builder_cannot_reach_the_simulator() -> None:
    imported = _imports(ml.features) | _imports(__import__("ml.records", fromlist=["x"]))
    assert not any(name.startswith("ml.simulator") for name in imported)


def test_observable_records_hold_no_hidden_field() -> None:
    hidden = {f.name for f in dataclasses.fields(HiddenState)}
    observed = {f.name for f in dataclasses.fields(FailureRecords)}
    assert hidden.isdisjoint(observed)
    hints = typing.get_type_hints(failure_context)
    assert hints["records"] is FailureRecords
    for hint in typing.get_type_hints(build_features).values():
        assert hint not in (HiddenState, FailureBatch)


def test_features_do_not_change_when_the_hidden_world_does() -> None:
    batch = generate_failures(500, seed=4)
    other = dataclasses.replace(
        batch,
        hidden=dataclasses.replace(batch.hidden, cause=np.roll(batch.hidden.cause, 7)),
    )
    rows = np.arange(500, dtype=np.int64)
    t = batch.observed.failed_at + 30 * 3600.0
    prev = np.full((500, 1), np.nan)
    a = build_features(failure_context(batch.observed), rows, t, prev)
    b = build_features(failure_context(other.observed), rows, t, prev)
    assert np.array_equal(a, b, equal_nan=True)


def test_portal_rows_and_arrays_give_the_same_features() -> None:
    batch = generate_failures(300, seed=8)
    obs = batch.observed
    rebuilt = FailureRecords.from_rows([obs.row(i) for i in range(len(obs))])
    rows = np.arange(len(obs), dtype=np.int64)
    t = obs.failed_at + 50 * 3600.0
    prev = (obs.failed_at + 24 * 3600.0)[:, None]
    a = build_features(failure_context(obs), rows, t, prev)
    b = build_features(failure_context(rebuilt), rows, t, prev)
    assert a.shape == (len(obs), N_FEATURES) == (len(obs), len(FEATURE_LIST.features))
    assert np.allclose(a, b, equal_nan=True)


def test_features_are_as_of_the_decision_time() -> None:
    batch = generate_failures(200, seed=9)
    obs = batch.observed
    ctx = failure_context(obs)
    rows = np.arange(len(obs), dtype=np.int64)
    t = obs.failed_at + 48 * 3600.0
    nothing = np.full((len(obs), 2), np.nan)
    future = np.stack([t + 3600.0, t + 7200.0], axis=1)
    assert np.array_equal(
        build_features(ctx, rows, t, nothing), build_features(ctx, rows, t, future), equal_nan=True
    )
    past = np.stack([obs.failed_at + 24 * 3600.0, nothing[:, 0]], axis=1)
    x = build_features(ctx, rows, t, past)
    col = FEATURE_LIST.features.index
    assert np.all(x[:, col("attempt_number")] == 2)
    assert np.allclose(x[:, col("hours_since_last_attempt")], 24.0)
    assert np.allclose(x[:, col("hours_since_failure")], 48.0)


def test_past_successes_after_the_decline_are_not_used() -> None:
    batch = generate_failures(100, seed=10)
    obs = batch.observed
    leaked = dataclasses.replace(
        obs,
        past_success=np.concatenate([obs.past_success[:, :-1], (obs.failed_at + 9e4)[:, None]], 1),
    )
    cleaned = dataclasses.replace(
        obs, past_success=np.concatenate([obs.past_success[:, :-1], np.full((100, 1), np.nan)], 1)
    )
    rows = np.arange(100, dtype=np.int64)
    t = obs.failed_at + 2e5
    prev = np.full((100, 1), np.nan)
    assert np.array_equal(
        build_features(failure_context(leaked), rows, t, prev),
        build_features(failure_context(cleaned), rows, t, prev),
        equal_nan=True,
    )
