"""Scoring throughput: feature building + predict over a 14-day candidate grid, on one core."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ml.features import build_features, failure_context
from ml.policy import PolicyConfig, candidate_grid, choose, plan_batch
from ml.simulator.world import generate_failures
from ml.train import TrainConfig, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--train-failures", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    trained = train_model(
        generate_failures(args.train_failures, args.seed), TrainConfig(seed=args.seed)
    )
    model = trained.model
    model.num_threads = 1
    config = PolicyConfig()
    batch = generate_failures(args.decisions, args.seed + 1)
    records = batch.observed
    n = len(records)
    grid = candidate_grid(records.failed_at, config)
    g = grid.shape[1]
    rng = np.random.default_rng(args.seed)
    # Up to two earlier retries per decision, as the retry engine would pass them.
    n_prev = rng.integers(0, 3, n)
    prev = np.full((n, 2), np.nan)
    for j in range(2):
        prev[:, j] = np.where(j < n_prev, records.failed_at + (j + 1) * 86400.0, np.nan)
    trees = model.booster.num_trees()
    print(f"model: {trees} trees, {g} candidates per decision (every {config.grid_hours:g} h)")

    # One decision at a time, as a serving call would do it.
    rows = np.zeros(g, dtype=np.int64)
    # The caller hands ml one failure's record (the portal adapts its row before the call).
    singles = [records.take(np.array([i])) for i in range(n)]
    passes = []
    for _ in range(args.repeat):
        feat_s = 0.0
        pred_s = 0.0
        plan_s = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            ctx = failure_context(singles[i], model.payday_reading)
            x = build_features(ctx, rows, grid[i], np.repeat(prev[i : i + 1], g, axis=0))
            t1 = time.perf_counter()
            p = model.predict(x)
            t2 = time.perf_counter()
            plan_batch(p[None, :], grid[i : i + 1], np.array([4]), config)
            t3 = time.perf_counter()
            feat_s += t1 - t0
            pred_s += t2 - t1
            plan_s += t3 - t2
        passes.append((feat_s + pred_s, feat_s, pred_s, plan_s))
    all_rates = sorted(n / p[0] for p in passes)
    # The fastest pass is the one least disturbed by other work on a shared machine.
    scoring, feat_s, pred_s, plan_s = min(passes)
    print(f"\nper decision (1 failure x grid), one core, best of {args.repeat} passes:")
    print(f"  all passes: {', '.join(f'{r:,.0f}' for r in all_rates)} decisions/s")
    print(f"  decisions/s (features + predict): {n / scoring:,.0f}")
    print(f"  decisions/s (incl. planning):     {n / (scoring + plan_s):,.0f}")
    print(
        f"  split: features {feat_s / n * 1e6:,.0f} us ({feat_s / scoring:.0%}), "
        f"predict {pred_s / n * 1e6:,.0f} us ({pred_s / scoring:.0%}), "
        f"planning {plan_s / n * 1e6:,.0f} us"
    )

    # Batched: all decisions at once, as a cron job scoring the whole book would.
    t0 = time.perf_counter()
    ctx_all = failure_context(records, model.payday_reading)
    x = build_features(
        ctx_all,
        np.repeat(np.arange(n, dtype=np.int64), g),
        grid.reshape(-1),
        np.repeat(prev, g, axis=0),
    )
    t1 = time.perf_counter()
    model.predict(x)
    t2 = time.perf_counter()
    print("\nbatched (all decisions in one call), one core:")
    print(f"  decisions/s (features + predict): {n / (t2 - t0):,.0f}")
    print(
        f"  split: features {(t1 - t0) / n * 1e6:,.0f} us/decision ({(t1 - t0) / (t2 - t0):.0%}), "
        f"predict {(t2 - t1) / n * 1e6:,.0f} us/decision ({(t2 - t1) / (t2 - t0):.0%})"
    )

    # The full public call, with row adaptation, planning and the explanation.
    sample = min(n, 300)
    row_objs = [records.row(i) for i in range(sample)]
    t0 = time.perf_counter()
    for i in range(sample):
        choose(model, row_objs[i], [], list(grid[i]), remaining_budget=4, config=config)
    t1 = time.perf_counter()
    print(
        f"\nml.policy.choose (full call incl. explanation): {sample / (t1 - t0):,.0f} decisions/s"
    )


if __name__ == "__main__":
    main()
