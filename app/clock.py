"""The clock: one object that says what time it is, so tests and the demo can move it."""

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from app.settings import Settings


class Clock(Protocol):
    """Anything that can tell the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._at = at

    def now(self) -> datetime:
        return self._at

    def set(self, at: datetime) -> None:
        self._at = at


class AcceleratedClock:
    """Simulated time that runs `speed` times faster than the wall clock from `start` (demo)."""

    def __init__(self, start: datetime, speed: float) -> None:
        if start.tzinfo is None:
            raise ValueError("AcceleratedClock needs an aware start")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._start = start
        self._speed = speed
        self._origin = time.monotonic()

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._origin) * self._speed
        return self._start + timedelta(seconds=elapsed)

    @property
    def speed(self) -> float:
        return self._speed


def clock_from_settings(settings: Settings) -> Clock:
    """The clock a long-running process (API, worker) uses: the system clock, or the simulated
    one that PORTAL_CLOCK_START and PORTAL_CLOCK_SPEED describe, where simulated time is
    start + (wall time - start) x speed, so separate processes and restarts share one timeline."""
    start = settings.clock_start
    if start is None:
        return SystemClock()
    elapsed = datetime.now(UTC) - start
    return AcceleratedClock(start + elapsed * settings.clock_speed, settings.clock_speed)
