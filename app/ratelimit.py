"""Leaky-bucket rate limiting by cost: the pure arithmetic and its atomic Redis twin."""

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class BucketLimits:
    """A bucket holds up to `capacity` cost units and drains `leak_per_second` of them."""

    capacity: int
    leak_per_second: float

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.leak_per_second <= 0:
            raise ValueError("a bucket needs a positive capacity and leak rate")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of offering `requested` units to a bucket at some instant."""

    allowed: bool
    requested: int
    level: float
    limits: BucketLimits
    retry_after_seconds: float

    @property
    def too_costly(self) -> bool:
        """The cost can never fit, however long the caller waits."""
        return self.requested > self.limits.capacity

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.limits.capacity - self.level))

    @property
    def reset_seconds(self) -> float:
        """Seconds until the bucket is empty again if nothing more is poured in."""
        return self.level / self.limits.leak_per_second

    def as_extension(self) -> dict[str, Any]:
        """What a response reports in `extensions.cost`."""
        return {
            "requested": self.requested,
            "remaining": self.remaining,
            "limit": self.limits.capacity,
            "resetSeconds": round(self.reset_seconds, 3),
        }


def offer(
    level: float, last: float | None, now: float, cost: int, limits: BucketLimits
) -> tuple[Decision, float, float]:
    """Drain the bucket to `now`, then pour `cost` in if it fits.

    Returns the decision with the new level and timestamp to store. Times are seconds on any
    monotonic-enough scale; a clock that steps back does not refill the bucket.
    """
    at = now if last is None else max(now, last)
    if last is not None:
        level = max(0.0, level - (at - last) * limits.leak_per_second)
    if cost <= limits.capacity and level + cost <= limits.capacity:
        level += cost
        return Decision(True, cost, level, limits, 0.0), level, at
    retry = (level + cost - limits.capacity) / limits.leak_per_second
    return Decision(False, cost, level, limits, retry), level, at


# The same arithmetic as `offer`, run inside Redis so that replicas sharing one Redis
# never interleave a read and a write of the same bucket. Floats travel as strings (Redis
# truncates Lua numbers in replies) with 17 digits, so both sides compute the same doubles.
_OFFER_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or 0
local last = tonumber(state[2])
local at = now
if last ~= nil then
  if last > now then at = last end
  level = math.max(0, level - (at - last) * rate)
end
local allowed = 0
local retry = 0
if cost <= capacity and level + cost <= capacity then
  level = level + cost
  allowed = 1
else
  retry = (level + cost - capacity) / rate
end
local stored = string.format('%.17g', level)
redis.call('HSET', KEYS[1], 'level', stored, 'at', string.format('%.17g', at))
redis.call('PEXPIRE', KEYS[1], math.ceil(level / rate * 1000) + 1000)
return {allowed, stored, string.format('%.17g', retry)}
"""


class _Script(Protocol):
    async def __call__(self, keys: list[str], args: list[Any]) -> Any: ...


class _ScriptHost(Protocol):
    def register_script(self, script: str) -> Any: ...


class RedisLeakyBucket:
    """Buckets in Redis, one hash per caller key; each offer is one atomic script call."""

    def __init__(self, redis: _ScriptHost, limits: BucketLimits, *, prefix: str) -> None:
        self.limits = limits
        self._prefix = prefix
        self._script: _Script = redis.register_script(_OFFER_LUA)

    async def offer(self, key: str, cost: int, *, now: datetime) -> Decision:
        """Offer `cost` units to the bucket of `key` at `now` (the caller's clock)."""
        reply = await self._script(
            keys=[self._prefix + key],
            args=[self.limits.capacity, self.limits.leak_per_second, now.timestamp(), cost],
        )
        allowed, level, retry = reply
        return Decision(
            allowed=int(allowed) == 1,
            requested=cost,
            level=float(level),
            limits=self.limits,
            retry_after_seconds=float(retry),
        )
