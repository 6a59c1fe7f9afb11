"""Runs the offline evaluation on the default and the perturbed simulators and prints the tables.

Each table has the oracle's row and the share of the best-fixed-to-oracle gap the model closes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ml.evaluate import format_table, run_evaluation

CONFIGS = Path(__file__).resolve().parents[1] / "ml" / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--failures", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/ml_evaluation")
    parser.add_argument("--configs", nargs="*", default=None, help="config files; default: all")
    args = parser.parse_args()
    paths = [Path(p) for p in args.configs] if args.configs else sorted(CONFIGS.glob("*.toml"))
    paths.sort(key=lambda p: p.stem != "default")
    summary = {}
    for path in paths:
        started = time.perf_counter()
        report = run_evaluation(
            n_failures=args.failures,
            seed=args.seed,
            config_path=path,
            out_dir=Path(args.out) / path.stem,
            progress=False,
        )
        elapsed = time.perf_counter() - started
        print(f"\n== {path.name}: N={args.failures:,}, {elapsed:.0f} s ==")
        print(format_table(report))
        best = report["best_fixed_same_budget"]
        summary[path.stem] = {
            "model_recovery": report["policies"]["model"]["recovery_rate"],
            "oracle_recovery": report["policies"]["oracle"]["recovery_rate"],
            "best_fixed": best,
            "lift_over_best_fixed": report["lift_revenue"][best],
            "gap_closed": report["gap_closed"],
            "lift_over_decline_aware": report["lift_revenue"]["decline_aware"],
            "auc": report["model_metrics"]["auc"],
            "ece": report["model_metrics"]["ece"],
            "all_targets_met": report["all_targets_met"],
            "seconds": round(elapsed, 1),
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
