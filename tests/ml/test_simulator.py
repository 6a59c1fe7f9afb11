"""Simulator: calibration against docs/domain.md §4, determinism, parameter files and the stream."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ml.simulator.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    SimulatorConfig,
    dump_toml,
    load_config,
)
from ml.simulator.report import calibration_report
from ml.simulator.stream import stream_charges
from ml.simulator.world import (
    attempt,
    generate_failures,
    last_deposit,
    success_probability,
    success_probability_batch,
)


def test_shipped_default_file_equals_the_coded_defaults() -> None:
    assert load_config(DEFAULT_CONFIG_PATH) == SimulatorConfig()
    assert load_config() == SimulatorConfig()


def test_dump_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(SimulatorConfig()))
    assert load_config(path) == SimulatorConfig()


def test_partial_json_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"outcome": {"payday_effect": 0.5}, "codes": {"noise": 0.3}}))
    config = load_config(path)
    assert config.outcome.payday_effect == 0.5
    assert config.codes.noise == 0.3
    assert config.population == SimulatorConfig().population


def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[outcome]\npayday_efect = 0.5\n")
    with pytest.raises(ConfigError, match="payday_efect"):
        load_config(path)


def test_calibration_targets_hold_at_moderate_n() -> None:
    report = calibration_report(n_failures=20_000, seed=11)
    failing = [f for f in report["figures"] if not f["ok"]]
    assert failing == []
    assert report["diminishing_returns"]
    assert report["all_ok"]


def test_population_is_deterministic_per_seed() -> None:
    a = generate_failures(2000, seed=5)
    b = generate_failures(2000, seed=5)
    c = generate_failures(2000, seed=6)
    assert np.array_equal(a.observed.failed_at, b.observed.failed_at)
    assert np.array_equal(a.observed.category, b.observed.category)
    assert np.array_equal(a.hidden.cause, b.hidden.cause)
    assert not np.array_equal(a.observed.failed_at, c.observed.failed_at)


def test_codes_predict_recovery_only_partly() -> None:
    batch = generate_failures(20_000, seed=3)
    obs = batch.observed
    # The same observed category hides more than one cause.
    for category in np.unique(obs.category):
        causes = np.unique(batch.hidden.cause[obs.category == category])
        if (obs.category == category).sum() > 500:
            assert causes.size > 1


def test_success_probability_is_a_probability_and_history_lowers_it() -> None:
    batch = generate_failures(5000, seed=2)
    rows = np.arange(len(batch), dtype=np.int64)
    t = batch.observed.failed_at + 3 * 86400.0
    fresh = success_probability_batch(batch, rows, t, np.full((len(batch), 1), np.nan))
    tried = success_probability_batch(batch, rows, t, (t - 3600.0)[:, None])
    assert np.all((fresh >= 0) & (fresh <= 1))
    assert np.all(tried <= fresh + 1e-12)
    assert tried.mean() < fresh.mean()


def test_stream_is_time_ordered_deterministic_and_answers_retries() -> None:
    start = datetime(2025, 3, 1, tzinfo=UTC)
    end = datetime(2025, 4, 15, tzinfo=UTC)
    first = list(stream_charges(9, start, end))
    again = list(stream_charges(9, start, end))
    assert [c.charge_id for c in first] == [c.charge_id for c in again]
    assert all(a.created <= b.created for a, b in itertools.pairwise(first))
    assert all(start <= c.created < end for c in first)
    failed = [c for c in first if c.status == "failed"]
    assert 0.05 < len(failed) / len(first) < 0.15
    for c in failed[:50]:
        assert c.failure is not None
        assert c.decline_category is not None
        assert c.network_code
        later = c.created + timedelta(days=2)
        p = success_probability(c.failure, later, [c.created + timedelta(days=1)])
        assert 0.0 <= p <= 1.0
        outcome = attempt(c.failure, later, np.random.default_rng(1))
        assert outcome == attempt(c.failure, later, np.random.default_rng(1))
    ok = [c for c in first if c.status == "succeeded"]
    assert all(c.failure is None and c.decline_category is None for c in ok)
    assert all(len(c.card.last4) == 4 and len(c.card.bin) == 6 for c in first)


def test_every_customer_has_a_payday_at_or_before_any_time() -> None:
    config = load_config(DEFAULT_CONFIG_PATH.parent / "irregular_income.toml")
    batch = generate_failures(20_000, seed=12, config=config)
    obs = batch.observed
    for days in np.arange(0.05, 20.0, 0.7):
        t = obs.failed_at + days * 86400.0
        dep = last_deposit(batch.hidden, obs.tz_offset_minutes, t)
        assert np.all(np.isfinite(dep))
        assert np.all(dep <= t)
        assert np.all(t - dep <= 40 * 86400.0)


def test_stream_year_matches_the_population_targets() -> None:
    charges = list(
        stream_charges(5, datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    )
    failed = [c for c in charges if c.failure is not None]
    assert 0.07 < len(failed) / len(charges) < 0.13
    causes = [c.failure.cause for c in failed if c.failure is not None]
    share = {k: causes.count(k) / len(causes) for k in set(causes)}
    assert 0.03 < share["new_card_data"] < 0.08
    assert 0.07 < share["never"] < 0.13
    assert 0.35 < share["funds"] < 0.50
    cards: dict[str, set[tuple[str, int, int]]] = {}
    for c in charges:
        cards.setdefault(c.customer_id, set()).add(
            (c.card.last4, c.card.exp_year, c.card.exp_month)
        )
    changed = np.mean([len(v) > 1 for v in cards.values()])
    assert 0.24 < changed < 0.36
    # A card that failed for want of new data is on file with an expiry already past, or
    # was replaced: either way the next charge uses different card data.
    for c in failed:
        late = c.created >= datetime(2025, 12, 1, tzinfo=UTC)
        if c.failure is not None and c.failure.cause == "new_card_data" and not late:
            assert cards[c.customer_id] != {(c.card.last4, c.card.exp_year, c.card.exp_month)}
