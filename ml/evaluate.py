"""Offline evaluation: the model policy against fixed and decline-aware schedules and the oracle.

The oracle knows each failure's hidden state (ml/oracle.py): with the model's budget and rules it
recovers the most any timing can, so (model - best fixed) / (oracle - best fixed) is the share of
what timing can add over the best fixed schedule that the model takes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml import baselines, rules, taxonomy, timeutil
from ml.artifact import TimingModel
from ml.engine import Planner, PolicyRun, run_policy
from ml.features import failure_context
from ml.oracle import OracleConfig, OraclePlans, oracle_planner, plan_failures
from ml.policy import PolicyConfig, candidate_grid, plan_batch, score_candidates
from ml.records import FailureRecords
from ml.simulator.config import CAUSES, config_to_dict, load_config
from ml.simulator.world import DEFAULT_START, FailureBatch, generate_failures
from ml.train import TrainConfig, train_model

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

MODEL = "model"
ORACLE = "oracle"
DECLINE_AWARE = "decline_aware"
# The best fixed schedule of the model's budget, in the loss breakdown.
BEST_FIXED = "best_fixed"
# Fixed schedules within the model's budget (at most 4 retries in 14 days).
SAME_BUDGET_FIXED = ("days_1_3_5_7", "4_in_14_days")
MAX_ATTEMPTS = 8
BOOTSTRAP_SAMPLES = 1000
TARGETS = {
    "lift_over_best_fixed": 0.10,
    "lift_over_decline_aware": 0.05,
    "attempts_per_recovery_ratio_max": 0.85,
    "auc_min": 0.70,
    "ece_max": 0.02,
    "recovery_low": 0.55,
    "recovery_high": 0.72,
    # Share of the gap between the best fixed schedule and the oracle the model closes.
    "gap_closed_min": 0.5,
}


def model_planner(
    model: TimingModel,
    records: FailureRecords,
    config: PolicyConfig,
    chunk: int = 2048,
) -> Planner:
    """The model policy as a planner: grid, rule filter, score, plan over the remaining budget."""
    context = failure_context(records, model.payday_reading)

    def plan(k: int, rows: I64, prev: F64) -> F64:
        out = np.full(rows.size, np.nan)
        remaining = config.budget - k
        if remaining <= 0:
            return out
        for lo in range(0, rows.size, chunk):
            r = rows[lo : lo + chunk]
            p = prev[lo : lo + chunk]
            cand = candidate_grid(records.failed_at[r], config)
            g = cand.shape[1]
            flat = cand.reshape(-1)
            rep = np.repeat(np.arange(r.size), g)
            last = np.fmax(records.failed_at[r], np.fmax.reduce(p, axis=1))
            ok = rules.allowed(records.take(r[rep]), p[rep], flat)
            ok &= flat >= last[rep] + baselines.MIN_GAP_HOURS * timeutil.HOUR
            cand = np.where(ok, flat, np.nan).reshape(r.size, g)
            probs = score_candidates(model, context, r, p, cand)
            out[lo : lo + chunk] = plan_batch(
                probs, cand, np.full(r.size, remaining, dtype=np.int64), config
            ).next_t
        return out

    return plan


def _currency_sums(records: FailureRecords, amounts: F64) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in np.unique(records.currency):
        out[taxonomy.CURRENCIES[int(c)]] = int(amounts[records.currency == c].sum())
    return out


def _normalized_amount(records: FailureRecords) -> F64:
    """Amount over its currency's mean failed amount: comparable across currencies."""
    out = np.empty(len(records))
    for c in np.unique(records.currency):
        m = records.currency == c
        out[m] = records.amount_minor[m] / records.amount_minor[m].mean()
    return out


def policy_metrics(records: FailureRecords, run: PolicyRun, weight: F64) -> dict[str, Any]:
    """Recovery, attempts, time to recover and violations of one policy run."""
    rec = run.recovered
    attempts = run.attempt_count
    days = (run.recovered_at[rec] - records.failed_at[rec]) / timeutil.DAY
    amount = records.amount_minor.astype(np.float64)
    violations = rules.count_violations(records, run.attempts)
    by_day = [
        round(float((rec & (run.recovered_at - records.failed_at <= d * timeutil.DAY)).mean()), 5)
        for d in range(29)
    ]
    recovered_count = int(rec.sum())
    return {
        "failures": len(records),
        "recovered": recovered_count,
        "recovery_rate": round(recovered_count / len(records), 4),
        "recovery_rate_by_amount": round(float((weight * rec).sum() / weight.sum()), 4),
        "recovered_amount_by_currency": _currency_sums(records, amount * rec),
        "failed_amount_by_currency": _currency_sums(records, amount),
        "attempts": int(attempts.sum()),
        "attempts_per_failure": round(float(attempts.mean()), 4),
        "attempts_per_recovery": round(float(attempts.sum() / max(recovered_count, 1)), 4),
        "median_days_to_recover": round(float(np.median(days)), 3) if days.size else None,
        "p90_days_to_recover": round(float(np.percentile(days, 90)), 3) if days.size else None,
        "rule_violations": int(violations.sum()),
        "cumulative_recovery_by_day": by_day,
    }


def _bootstrap_sums(stack: F64, seed: int, samples: int) -> F64:
    """Column sums of `stack` (policies, failures) over paired resamples of the failures."""
    n = stack.shape[1]
    rng = np.random.default_rng(seed)
    sums = np.empty((samples, stack.shape[0]))
    for b in range(samples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        sums[b] = stack @ w
    return sums


def paired_lift(
    treatment: F64, baselines_: dict[str, F64], seed: int, samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, dict[str, float]]:
    """Relative lift of sum(treatment) over each baseline with a paired bootstrap 95% CI."""
    names = list(baselines_)
    stack = np.vstack([treatment] + [baselines_[k] for k in names])
    sums = _bootstrap_sums(stack, seed, samples)
    lifts = sums[:, :1] / np.maximum(sums[:, 1:], 1e-12) - 1.0
    point = stack.sum(axis=1)
    out = {}
    for j, name in enumerate(names):
        lo, hi = np.percentile(lifts[:, j], [2.5, 97.5])
        out[name] = {
            "lift": round(float(point[0] / max(point[j + 1], 1e-12) - 1.0), 4),
            "ci95_low": round(float(lo), 4),
            "ci95_high": round(float(hi), 4),
        }
    return out


def gap_share(
    model: F64, best_fixed: F64, oracle: F64, seed: int, samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, float]:
    """(model - best fixed) / (oracle - best fixed) of the sums, with a paired bootstrap 95% CI."""
    stack = np.vstack([model, best_fixed, oracle])

    def share(sums: F64) -> F64:
        out: F64 = (sums[..., 0] - sums[..., 1]) / np.maximum(sums[..., 2] - sums[..., 1], 1e-12)
        return out

    lo, hi = np.percentile(share(_bootstrap_sums(stack, seed, samples)), [2.5, 97.5])
    return {
        "share": round(float(share(stack.sum(axis=1))), 4),
        "ci95_low": round(float(lo), 4),
        "ci95_high": round(float(hi), 4),
    }


def _group_rows(
    groups: npt.NDArray[np.integer[Any]],
    names: tuple[str, ...],
    runs: dict[str, PolicyRun],
    weight: F64,
    failed_at: F64,
) -> dict[str, dict[str, float | None]]:
    """Per group: its share of the failed amount, each policy's recovery by amount, and the
    model's shortfall to the oracle and gain over the best fixed schedule as shares of all."""
    total = weight.sum()
    out: dict[str, dict[str, float | None]] = {}
    for g in np.unique(groups):
        m = groups == g
        w = weight[m]
        if w.sum() <= 0:
            continue
        value = {k: float((w * r.recovered[m]).sum()) for k, r in runs.items()}
        row: dict[str, float | None] = {"share_of_amount": round(float(w.sum() / total), 4)}
        row |= {k: round(v / float(w.sum()), 4) for k, v in value.items()}
        row["model_short_of_oracle"] = round((value[ORACLE] - value[MODEL]) / total, 4)
        row["model_over_best_fixed"] = round((value[MODEL] - value[BEST_FIXED]) / total, 4)
        row["model_attempts"] = round(float(runs[MODEL].attempt_count[m].mean()), 3)
        row["oracle_attempts"] = round(float(runs[ORACLE].attempt_count[m].mean()), 3)
        for name in (MODEL, ORACLE):
            first = (runs[name].attempts[m, 0] - failed_at[m]) / timeutil.HOUR
            row[f"{name}_first_retry_median_hours"] = (
                round(float(np.nanmedian(first)), 1) if np.isfinite(first).any() else None
            )
        out[names[int(g)]] = row
    return out


def loss_breakdown(batch: FailureBatch, runs: dict[str, PolicyRun], weight: F64) -> dict[str, Any]:
    """Where the model falls short of the oracle: by decline category, by the hidden cause,
    and by the retry that recovered (runs: MODEL, ORACLE and BEST_FIXED).

    The shortfalls of a grouping sum to (oracle - model) / failed amount, by amount.
    """
    records = batch.observed
    total = weight.sum()
    width = max(int(run.attempt_count.max()) for run in runs.values())
    by_retry = {
        name: [
            round(float((weight * (run.success_index == k)).sum() / total), 4) for k in range(width)
        ]
        for name, run in runs.items()
    }
    return {
        "by_category": _group_rows(
            records.category, taxonomy.CATEGORIES, runs, weight, records.failed_at
        ),
        "by_hidden_cause": _group_rows(batch.hidden.cause, CAUSES, runs, weight, records.failed_at),
        "recovered_by_retry": by_retry,
    }


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    if not enabled:
        yield lambda _msg: None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task("evaluation", total=total)

        def step(msg: str) -> None:
            bar.update(task, advance=1, description=msg)

        yield step


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, m in report["policies"].items():
        curve = m["cumulative_recovery_by_day"]
        style = "--" if name == ORACLE else "-"
        width = 2.5 if name == MODEL else 1.2
        ax.plot(range(len(curve)), curve, style, label=name, linewidth=width)
    ax.set_xlabel("days since the decline")
    ax.set_ylabel("share of failed payments recovered")
    ax.set_title(f"Cumulative recovery by day (N = {report['n_failures']:,})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _planners(
    records: FailureRecords, model: TimingModel, config: PolicyConfig, oracle: OraclePlans
) -> dict[str, tuple[Planner, float]]:
    """Every policy's planner with the horizon (days) its retries must fall in."""
    planners: dict[str, tuple[Planner, float]] = {
        MODEL: (model_planner(model, records, config), config.horizon_days),
        ORACLE: (oracle_planner(records, oracle), config.horizon_days),
        DECLINE_AWARE: (baselines.decline_aware_planner(records), 15.0),
    }
    for name, days in baselines.FIXED_SCHEDULES.items():
        planners[name] = (baselines.fixed_planner(records, days), max(days) + 1.0)
    return planners


def run_evaluation(
    n_failures: int = 100_000,
    seed: int = 0,
    config_path: str | Path | None = None,
    out_dir: str | Path = "out/evaluation",
    progress: bool = False,
) -> dict[str, Any]:
    """Train on simulated history, then replay every policy on the same later failures.

    Writes report.json and recovery_by_day.png into out_dir and returns the report.
    """
    config = load_config(config_path)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(4)]
    policy_config = PolicyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    oracle_config = OracleConfig(
        budget=policy_config.budget, horizon_days=policy_config.horizon_days
    )
    names = [MODEL, ORACLE, DECLINE_AWARE, *baselines.FIXED_SCHEDULES]
    with _progress(progress, 4 + len(names)) as step:
        step("simulating training history")
        history = generate_failures(n_failures, seeds[0], config)
        step("training")
        trained = train_model(history, TrainConfig(seed=seed))
        step("simulating evaluation failures")
        batch = generate_failures(
            n_failures, seeds[1], config, start=DEFAULT_START + 365.0 * timeutil.DAY
        )
        records = batch.observed
        # Common random numbers: attempt k of failure i draws the same uniform in every policy.
        uniforms = np.random.default_rng(seeds[2]).random((n_failures, MAX_ATTEMPTS))
        step("planning the oracle's retries")
        oracle_plans = plan_failures(batch, oracle_config)
        planners = _planners(records, trained.model, policy_config, oracle_plans)
        runs: dict[str, PolicyRun] = {}
        for name in names:
            step(f"replaying {name}")
            planner, horizon = planners[name]
            runs[name] = run_policy(batch, planner, uniforms, horizon)

    weight = _normalized_amount(records)
    policies = {name: policy_metrics(records, runs[name], weight) for name in names}
    policies[MODEL]["budget"] = {"retries": policy_config.budget, "days": 14}
    policies[ORACLE]["budget"] = {"retries": oracle_config.budget, "days": 14}
    # The chance its plans give, beside what the draws made of it.
    policies[ORACLE]["expected_recovery_rate"] = round(float(oracle_plans.chance.mean()), 4)
    value = {name: weight * runs[name].recovered for name in names}
    count = {name: runs[name].recovered.astype(np.float64) for name in names}
    others = [n for n in names if n != MODEL]
    lift_amount = paired_lift(value[MODEL], {k: value[k] for k in others}, seeds[3])
    lift_count = paired_lift(count[MODEL], {k: count[k] for k in others}, seeds[3] + 1)
    best_fixed = max(SAME_BUDGET_FIXED, key=lambda k: policies[k]["recovery_rate_by_amount"])
    best_any = max(baselines.FIXED_SCHEDULES, key=lambda k: policies[k]["recovery_rate_by_amount"])
    gap = gap_share(value[MODEL], value[best_fixed], value[ORACLE], seeds[3] + 2)
    breakdown = loss_breakdown(
        batch,
        {MODEL: runs[MODEL], ORACLE: runs[ORACLE], BEST_FIXED: runs[best_fixed]},
        weight,
    )
    m = trained.metrics
    model_rate = policies[MODEL]["recovery_rate"]
    apr_ratio = policies[MODEL]["attempts_per_recovery"] / max(
        policies[best_fixed]["attempts_per_recovery"], 1e-9
    )
    checks = {
        "lift_over_best_fixed": lift_amount[best_fixed]["lift"] >= TARGETS["lift_over_best_fixed"]
        and lift_amount[best_fixed]["ci95_low"] > 0,
        "lift_over_decline_aware": lift_amount[DECLINE_AWARE]["lift"]
        >= TARGETS["lift_over_decline_aware"]
        and lift_amount[DECLINE_AWARE]["ci95_low"] > 0,
        "attempts_per_recovery": apr_ratio <= TARGETS["attempts_per_recovery_ratio_max"],
        "zero_violations": all(p["rule_violations"] == 0 for p in policies.values()),
        "auc": (m["auc"] or 0.0) >= TARGETS["auc_min"],
        "ece": m["ece"] <= TARGETS["ece_max"],
        "recovery_in_range": TARGETS["recovery_low"] <= model_rate <= TARGETS["recovery_high"],
        "gap_closed": gap["share"] >= TARGETS["gap_closed_min"],
    }
    report: dict[str, Any] = {
        "n_failures": n_failures,
        "seed": seed,
        "config_path": str(config_path) if config_path else "default",
        "simulator_config": config_to_dict(config),
        "policy_config": {
            "budget": policy_config.budget,
            "horizon_days": policy_config.horizon_days,
            "grid_hours": policy_config.grid_hours,
            "min_gap_hours": policy_config.min_gap_hours,
            "min_probability": policy_config.min_probability,
        },
        "schedules": {k: list(v) for k, v in baselines.FIXED_SCHEDULES.items()},
        "model_metrics": m,
        "policies": policies,
        "best_fixed_same_budget": best_fixed,
        "best_fixed_any_budget": best_any,
        "lift_revenue": lift_amount,
        "lift_count": lift_count,
        "gap_closed": gap,
        "loss_breakdown": breakdown,
        "attempts_per_recovery_ratio_vs_best_fixed": round(apr_ratio, 4),
        "targets": TARGETS,
        "checks": checks,
        "all_targets_met": all(checks.values()),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False))
    _plot(report, out / "recovery_by_day.png")
    report["files"] = {
        "report": str(out / "report.json"),
        "plot": str(out / "recovery_by_day.png"),
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of the evaluation for a terminal."""
    head = (
        f"{'policy':<16}{'recovered':>10}{'by amount':>10}{'att/fail':>9}{'att/rec':>9}"
        f"{'median d':>9}{'viol':>6}{'revenue lift (95% CI)':>28}"
    )
    lines = [head, "-" * len(head)]
    for name, p in report["policies"].items():
        lift = report["lift_revenue"].get(name)
        lift_s = (
            f"{lift['lift']:+.1%} [{lift['ci95_low']:+.1%}, {lift['ci95_high']:+.1%}]"
            if lift
            else "-"
        )
        lines.append(
            f"{name:<16}{p['recovery_rate']:>10.1%}{p['recovery_rate_by_amount']:>10.1%}"
            f"{p['attempts_per_failure']:>9.2f}{p['attempts_per_recovery']:>9.2f}"
            f"{p['median_days_to_recover'] or 0:>9.2f}{p['rule_violations']:>6}{lift_s:>28}"
        )
    m = report["model_metrics"]
    lines.append(
        f"model: AUC {m['auc']}, log loss {m['log_loss']}, Brier {m['brier']}, ECE {m['ece']}; "
        f"best fixed (same budget) {report['best_fixed_same_budget']}"
    )
    gap = report["gap_closed"]
    lines.append(
        f"gap closed by the model, (model - best fixed) / (oracle - best fixed) by amount: "
        f"{gap['share']:.1%} [{gap['ci95_low']:.1%}, {gap['ci95_high']:.1%}]"
    )
    lines.extend(format_breakdown(report["loss_breakdown"]))
    lines.append(
        "checks: "
        + ", ".join(f"{k}={'ok' if v else 'MISSED'}" for k, v in report["checks"].items())
    )
    return "\n".join(lines)


def format_breakdown(breakdown: dict[str, Any]) -> list[str]:
    """The loss breakdown as table lines: groups the oracle recovers something from."""
    lines = []
    for key, title in (("by_hidden_cause", "hidden cause"), ("by_category", "decline category")):
        head = (
            f"{title:<20}{'amount':>8}{'best fix':>9}{'model':>7}{'oracle':>7}"
            f"{'short':>8}{'gain':>8}{'1st retry h m/o':>16}{'att m/o':>10}"
        )
        lines += ["", "model against the oracle by " + title + " (recovery by amount)", head]
        for name, r in breakdown[key].items():
            if not r[ORACLE]:
                continue
            first = "/".join(
                "-"
                if r[f"{k}_first_retry_median_hours"] is None
                else f"{r[f'{k}_first_retry_median_hours']:.0f}"
                for k in (MODEL, ORACLE)
            )
            lines.append(
                f"{name:<20}{r['share_of_amount']:>8.1%}{r[BEST_FIXED]:>9.1%}{r[MODEL]:>7.1%}"
                f"{r[ORACLE]:>7.1%}{r['model_short_of_oracle']:>+8.2%}"
                f"{r['model_over_best_fixed']:>+8.2%}{first:>14}"
                f"{r['model_attempts']:>6.2f}/{r['oracle_attempts']:.2f}"
            )
    retries = breakdown["recovered_by_retry"]
    lines.append("")
    lines.append(
        "recovered by retry 1, 2, ... (share of amount): "
        + "; ".join(
            f"{name} " + " ".join(f"{v:.1%}" for v in values) for name, values in retries.items()
        )
    )
    return lines
