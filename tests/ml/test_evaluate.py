"""Offline evaluation smoke test at small N."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml.evaluate import BEST_FIXED, MODEL, ORACLE, format_table, run_evaluation


def test_evaluation_writes_report_and_plot(tmp_path: Path) -> None:
    report = run_evaluation(n_failures=3000, seed=1, config_path=None, out_dir=tmp_path)
    assert (tmp_path / "report.json").is_file()
    assert (tmp_path / "recovery_by_day.png").stat().st_size > 1000
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["policies"].keys() == report["policies"].keys()
    assert {"days_1_3_5_7", "4_in_14_days", "8_in_14_days", "7_in_28_days", "decline_aware"} < set(
        report["policies"]
    )
    for name, p in report["policies"].items():
        assert p["rule_violations"] == 0, name
        assert 0.2 < p["recovery_rate"] < 0.8
        curve = p["cumulative_recovery_by_day"]
        assert curve == sorted(curve)
    assert report["policies"][MODEL]["attempts_per_failure"] <= 4
    # With the same draws, no policy recovers more than the oracle, by count or by amount.
    oracle = report["policies"][ORACLE]
    assert oracle["attempts_per_failure"] <= 4
    for name, p in report["policies"].items():
        assert oracle["recovered"] >= p["recovered"], name
        assert oracle["recovery_rate_by_amount"] >= p["recovery_rate_by_amount"], name
    # A model trained on this little history may lose to the best fixed schedule, never to the
    # oracle.
    gap = report["gap_closed"]
    assert gap["share"] < 1.0
    assert gap["ci95_low"] <= gap["share"] <= gap["ci95_high"]
    lift = report["lift_revenue"]["decline_aware"]
    assert lift["ci95_low"] <= lift["lift"] <= lift["ci95_high"]
    table = format_table(report)
    assert "model" in table
    assert "oracle" in table
    assert f"{gap['share']:.1%}" in table
    assert "model against the oracle by hidden cause" in table
    _check_breakdown(report)


def _check_breakdown(report: dict[str, Any]) -> None:
    """Each grouping splits the failed amount and the model's shortfall to the oracle."""
    policies = report["policies"]
    breakdown = report["loss_breakdown"]
    model = policies[MODEL]["recovery_rate_by_amount"]
    oracle = policies[ORACLE]["recovery_rate_by_amount"]
    best = policies[report["best_fixed_same_budget"]]["recovery_rate_by_amount"]
    for key in ("by_category", "by_hidden_cause"):
        rows = breakdown[key].values()
        assert sum(r["share_of_amount"] for r in rows) == pytest.approx(1.0, abs=1e-3)
        short = sum(r["model_short_of_oracle"] for r in rows)
        assert short == pytest.approx(oracle - model, abs=2e-3)
        gain = sum(r["model_over_best_fixed"] for r in rows)
        assert gain == pytest.approx(model - best, abs=2e-3)
        for r in rows:
            for name in (MODEL, ORACLE, BEST_FIXED):
                assert 0.0 <= r[name] <= 1.0
    causes = breakdown["by_hidden_cause"]
    # A dead card recovers under no timing, and the oracle does not retry it.
    assert causes["never"][ORACLE] == 0.0
    assert causes["never"]["oracle_attempts"] == 0.0
    assert causes["never"]["oracle_first_retry_median_hours"] is None
    retries = breakdown["recovered_by_retry"]
    assert sum(retries[MODEL]) == pytest.approx(model, abs=2e-3)
    assert sum(retries[ORACLE]) == pytest.approx(oracle, abs=2e-3)
    assert sum(retries[BEST_FIXED]) == pytest.approx(best, abs=2e-3)


def test_evaluation_is_deterministic(tmp_path: Path) -> None:
    a = run_evaluation(n_failures=1500, seed=4, config_path=None, out_dir=tmp_path / "a")
    b = run_evaluation(n_failures=1500, seed=4, config_path=None, out_dir=tmp_path / "b")
    assert a["policies"] == b["policies"]
    assert a["lift_revenue"] == b["lift_revenue"]
    assert a["gap_closed"] == b["gap_closed"]


def test_perturbed_configs_load_and_run(tmp_path: Path) -> None:
    configs = sorted((Path(__file__).parents[2] / "ml" / "configs").glob("*.toml"))
    assert len(configs) >= 4
    report = run_evaluation(n_failures=1500, seed=2, config_path=configs[0], out_dir=tmp_path)
    assert report["config_path"].endswith(".toml")
