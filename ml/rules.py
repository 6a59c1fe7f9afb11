"""Card-network retry rules (docs/domain.md §2) as a small pure check for offline evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml import taxonomy, timeutil
from ml.records import FailureRecords

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntIndex = npt.NDArray[np.intp] | I64
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class NetworkCaps:
    """Per-credential attempt limits; defaults are the portal's."""

    visa_reattempts_30d: int = 15
    mastercard_declines_24h: int = 10
    mastercard_declines_30d: int = 35
    other_attempts_30d: int = 20
    customer_attempts_per_hour: int = 5


_ADVICE = np.array(
    [
        [
            [taxonomy.retry_advice(cat, brand, code, adv) for adv in taxonomy.ADVICE_CODES]
            for code in taxonomy.NETWORK_CODES
        ]
        for brand in taxonomy.BRANDS
        for cat in taxonomy.CATEGORIES
    ]
).reshape(
    len(taxonomy.BRANDS),
    len(taxonomy.CATEGORIES),
    len(taxonomy.NETWORK_CODES),
    len(taxonomy.ADVICE_CODES),
)
_DELAY = np.array([taxonomy.ADVICE_DELAY_HOURS.get(a, 0.0) for a in taxonomy.ADVICE_CODES])


def retryable(records: FailureRecords) -> B:
    """Whether the same credential may be retried at all (advice retry or retry_later)."""
    advice = _ADVICE[records.brand, records.category, records.network_code, records.advice_code]
    out: B = np.isin(advice, [taxonomy.ADVICE_RETRY, taxonomy.ADVICE_RETRY_LATER])
    return out


def not_before(records: FailureRecords) -> F64:
    """Earliest allowed retry time from Mastercard advice delays."""
    out: F64 = records.failed_at + _DELAY[records.advice_code] * timeutil.HOUR
    return out


def _limits(records: FailureRecords, caps: NetworkCaps) -> tuple[I64, I64]:
    brand = records.brand
    visa = brand == taxonomy.BRANDS.index("visa")
    mc = brand == taxonomy.BRANDS.index("mastercard")
    # Visa's cap counts reattempts; the other networks count every attempt incl. the decline.
    limit_30d = np.where(
        visa,
        caps.visa_reattempts_30d + 1,
        np.where(mc, caps.mastercard_declines_30d, caps.other_attempts_30d),
    )
    limit_24h = np.where(mc, caps.mastercard_declines_24h, np.iinfo(np.int64).max)
    return limit_30d.astype(np.int64), limit_24h.astype(np.int64)


def allowed(
    records: FailureRecords,
    prev: F64,
    t: F64,
    caps: NetworkCaps | None = None,
) -> B:
    """Whether a retry at t is allowed after the decline and earlier retries `prev` (NaN-padded).

    `records`, `prev` and `t` are aligned row by row.
    """
    caps = caps or NetworkCaps()
    ok = retryable(records) & (t >= not_before(records)) & (t > records.failed_at)
    ok &= ~np.any(prev >= t[:, None], axis=1)
    history = np.concatenate([records.failed_at[:, None], prev], axis=1)
    limit_30d, limit_24h = _limits(records, caps)
    n30 = np.sum(history > (t - 30 * timeutil.DAY)[:, None], axis=1)
    n24 = np.sum(history > (t - timeutil.DAY)[:, None], axis=1)
    n1h = np.sum(history > (t - timeutil.HOUR)[:, None], axis=1)
    ok &= (n30 + 1 <= limit_30d) & (n24 + 1 <= limit_24h)
    ok &= n1h + 1 <= caps.customer_attempts_per_hour
    out: B = ok
    return out


def count_violations(
    records: FailureRecords, attempts: F64, caps: NetworkCaps | None = None
) -> I64:
    """Rule violations per failure in a log of retry times (n, k), NaN where none was made."""
    n, k = attempts.shape
    violations = np.zeros(n, dtype=np.int64)
    for j in range(k):
        t = attempts[:, j]
        made = ~np.isnan(t)
        if not made.any():
            continue
        prev = attempts[:, :j] if j else np.full((n, 1), np.nan)
        rows = np.flatnonzero(made)
        ok = allowed(records.take(rows), prev[rows], t[rows], caps)
        violations[rows[~ok]] += 1
    return violations
