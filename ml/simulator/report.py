"""Calibration figures of the simulator beside the targets of docs/domain.md §4."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml import rules, taxonomy, timeutil
from ml.baselines import FIXED_SCHEDULES, REFERENCE_SCHEDULE, fixed_planner
from ml.engine import run_policy
from ml.simulator.config import CAUSES, PAY_CYCLES, RETRYABLE_CAUSES, load_config
from ml.simulator.stream import card_change_rate
from ml.simulator.world import FUNDS, generate_failures, last_deposit


@dataclass(frozen=True)
class Figure:
    """One calibration figure with its target range."""

    name: str
    value: float
    low: float
    high: float

    @property
    def ok(self) -> bool:
        """Whether the value is inside the target range."""
        return self.low <= self.value <= self.high


def calibration_report(
    n_failures: int = 50_000,
    seed: int = 7,
    config_path: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Simulate a population, retry it on the reference schedule, and compare with §5."""
    config = load_config(config_path)
    batch = generate_failures(n_failures, seed, config)
    obs = batch.observed
    hidden = batch.hidden
    figures: list[Figure] = []

    def share(mask: np.ndarray[Any, Any], within: np.ndarray[Any, Any]) -> float:
        return float(mask[within].mean()) if within.any() else float("nan")

    credit = obs.funding == taxonomy.FUNDINGS.index("credit")
    debit = obs.funding == taxonomy.FUNDINGS.index("debit")
    cat = obs.category
    generic = cat == taxonomy.CATEGORIES.index("do_not_honor")
    funds_code = cat == taxonomy.CATEGORIES.index("insufficient_funds")
    temporary = np.isin(
        cat,
        [
            taxonomy.CATEGORIES.index("velocity_exceeded"),
            taxonomy.CATEGORIES.index("processing_error"),
        ],
    )
    figures += [
        Figure("card share credit", float(credit.mean()), 0.55, 0.65),
        Figure("credit: generic declines", share(generic, credit), 0.45, 0.55),
        Figure("credit: temporary holds", share(temporary, credit), 0.20, 0.30),
        Figure("credit: insufficient funds", share(funds_code, credit), 0.05, 0.09),
        Figure("debit: generic declines", share(generic, debit), 0.33, 0.43),
        Figure("debit: insufficient funds", share(funds_code, debit), 0.25, 0.33),
    ]
    cause = hidden.cause
    retry_causes = np.isin(cause, [CAUSES.index(c) for c in RETRYABLE_CAUSES])
    figures += [
        Figure("retryable (hidden cause)", float(retry_causes.mean()), 0.82, 0.88),
        Figure("never (hidden cause)", float((cause == CAUSES.index("never")).mean()), 0.08, 0.12),
        Figure(
            "new card data (hidden cause)",
            float((cause == CAUSES.index("new_card_data")).mean()),
            0.04,
            0.06,
        ),
        Figure("retryable by observed code", float(rules.retryable(obs).mean()), 0.75, 0.90),
    ]
    cycle_targets = {"weekly": 0.32, "biweekly": 0.37, "semimonthly": 0.20, "monthly": 0.11}
    for c, target in cycle_targets.items():
        value = float((hidden.cycle == PAY_CYCLES.index(c)).mean())
        figures.append(Figure(f"pay cycle {c}", value, target - 0.03, target + 0.03))

    rng = np.random.default_rng(seed + 1)
    days = FIXED_SCHEDULES[REFERENCE_SCHEDULE]
    uniforms = rng.random((len(batch), len(days)))
    run = run_policy(batch, fixed_planner(obs, days), uniforms, horizon_days=max(days) + 1)
    first_tried = ~np.isnan(run.attempts[:, 0])
    first_success = float((run.success_index[first_tried] == 0).mean())
    recovered = run.recovered
    days_to = (run.recovered_at[recovered] - obs.failed_at[recovered]) / timeutil.DAY
    per_attempt = [float((run.success_index == k).mean()) for k in range(len(days))]
    figures += [
        Figure("first retry success", first_success, 0.25, 0.35),
        Figure(
            f"fixed schedule {REFERENCE_SCHEDULE} recovery", float(recovered.mean()), 0.45, 0.55
        ),
        Figure("recoveries within 10 days", float((days_to <= 10.0).mean()), 0.85, 0.95),
    ]
    diminishing = all(a >= b for a, b in itertools.pairwise(per_attempt))
    funds_rec = np.flatnonzero(recovered & (cause == FUNDS))
    after_payday = float("nan")
    if funds_rec.size:
        dep = last_deposit(
            hidden.take(funds_rec), obs.tz_offset_minutes[funds_rec], run.recovered_at[funds_rec]
        )
        after_payday = float(((run.recovered_at[funds_rec] - dep) <= 2 * timeutil.DAY).mean())

    change = card_change_rate(seed=seed, config=config, customers=3000, progress=progress)
    figures.append(Figure("cards changed per year", change, 0.25, 0.35))
    return {
        "n_failures": n_failures,
        "seed": seed,
        "reference_schedule": {"name": REFERENCE_SCHEDULE, "days": list(days)},
        "figures": [
            {"name": f.name, "value": round(f.value, 4), "low": f.low, "high": f.high, "ok": f.ok}
            for f in figures
        ],
        "recovered_by_attempt": [round(x, 4) for x in per_attempt],
        "diminishing_returns": diminishing,
        "low_balance_recoveries_within_2_days_of_payday": round(after_payday, 4),
        "all_ok": all(f.ok for f in figures) and diminishing,
    }


def format_calibration(report: dict[str, Any]) -> str:
    """Plain-text table of the calibration figures beside their targets."""
    lines = [f"{'figure':<42}{'value':>8}  {'target':<15}", "-" * 68]
    for f in report["figures"]:
        mark = "" if f["ok"] else "  MISSED"
        lines.append(f"{f['name']:<42}{f['value']:>8.3f}  {f['low']:.2f}-{f['high']:.2f}{mark}")
    per = ", ".join(f"{x:.3f}" for x in report["recovered_by_attempt"])
    lines.append(f"recovered by attempt of {report['reference_schedule']['name']}: {per}")
    lines.append(
        "low-balance recoveries within 2 days after a payday: "
        f"{report['low_balance_recoveries_within_2_days_of_payday']:.1%}"
    )
    return "\n".join(lines)
