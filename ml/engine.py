"""Runs a retry policy against simulated failures with common random numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml import timeutil
from ml.simulator.world import FailureBatch, success_probability_batch

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# planner(attempt_index, rows, previous retry times of those rows) -> next times (NaN = stop)
Planner = Callable[[int, I64, F64], F64]


@dataclass(frozen=True)
class PolicyRun:
    """Everything a policy did: retry times, which one succeeded, and when."""

    attempts: F64
    success_index: I64
    recovered_at: F64

    @property
    def recovered(self) -> npt.NDArray[np.bool_]:
        """Whether each failure was recovered."""
        out: npt.NDArray[np.bool_] = self.success_index >= 0
        return out

    @property
    def attempt_count(self) -> I64:
        """Retries made per failure."""
        out: I64 = (~np.isnan(self.attempts)).sum(axis=1)
        return out


def run_policy(
    batch: FailureBatch,
    planner: Planner,
    uniforms: F64,
    horizon_days: float,
) -> PolicyRun:
    """Play a policy attempt by attempt; attempt k of failure i succeeds when u[i, k] < p."""
    n, max_attempts = uniforms.shape
    attempts = np.full((n, max_attempts), np.nan)
    success = np.full(n, -1, dtype=np.int64)
    active = np.arange(n, dtype=np.int64)
    end = batch.observed.failed_at + horizon_days * timeutil.DAY
    for k in range(max_attempts):
        if active.size == 0:
            break
        prev = attempts[active, :k] if k else np.full((active.size, 1), np.nan)
        t = planner(k, active, prev)
        go = ~np.isnan(t) & (t <= end[active])
        rows = active[go]
        t = t[go]
        attempts[rows, k] = t
        p = success_probability_batch(batch, rows, t, prev[go])
        won = uniforms[rows, k] < p
        success[rows[won]] = k
        active = rows[~won]
    recovered_at = np.full(n, np.nan)
    hit = np.flatnonzero(success >= 0)
    recovered_at[hit] = attempts[hit, success[hit]]
    return PolicyRun(attempts, success, recovered_at)
