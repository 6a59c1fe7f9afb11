"""Vectorized calendar arithmetic on UTC epoch seconds shifted to a local offset."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DAY = 86400.0
HOUR = 3600.0
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def local_seconds(t: F64, tz_offset_minutes: npt.NDArray[np.integer] | F64) -> F64:
    """Epoch seconds as if the local wall clock were UTC."""
    return t + np.asarray(tz_offset_minutes, dtype=np.float64) * 60.0


def local_day(t_local: F64) -> I64:
    """Days since 1970-01-01 of a local time."""
    return np.floor(t_local / DAY).astype(np.int64)


def weekday(day: I64) -> I64:
    """Monday = 0; 1970-01-01 was a Thursday."""
    return (day + 3) % 7


def day_of_month(day: I64) -> I64:
    """1-based day of month of a day number."""
    d = day.astype("datetime64[D]")
    out: I64 = (d - d.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    return out


def month_start_day(day: I64, month_offset: int = 0) -> I64:
    """Day number of the first of the month containing `day`, shifted by whole months."""
    m = day.astype("datetime64[D]").astype("datetime64[M]") + np.timedelta64(month_offset, "M")
    return m.astype("datetime64[D]").astype(np.int64)


def hour_of_day(t_local: F64) -> F64:
    """Fractional local hour in [0, 24)."""
    return np.mod(t_local, DAY) / HOUR
