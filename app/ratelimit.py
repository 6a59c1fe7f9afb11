"""Leaky-bucket rate limiting by cost: the pure arithmetic and its atomic Redis twin."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from app.workflows.grouping import Grouper, PerLoop


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


class LimiterError(Exception):
    """The limiter could not decide an offer."""


class BucketError(LimiterError):
    """Redis failed this one bucket's offer (its key holds another type, say)."""


# Redis's error codes that refuse a command whatever key it names: the server's state (a
# read-only replica, out of memory, a failing disk, a script running too long, an ACL), not
# the bucket's. A bucket failed with one of them fails the limiter, not the bucket alone.
_SERVER_REFUSALS = frozenset(
    {
        "READONLY",
        "OOM",
        "MISCONF",
        "NOREPLICAS",
        "MASTERDOWN",
        "BUSY",
        "LOADING",
        "NOPERM",
        "CLUSTERDOWN",
        "TRYAGAIN",
    }
)


# The same arithmetic as `offer`, run inside Redis so that replicas sharing one Redis
# never interleave a read and a write of the same bucket: for each key in turn, at its own
# time and cost (ARGV: capacity, rate, then now and cost per key), so offers sent together are
# applied one after the other, in order, each atomically. Floats travel as strings (Redis
# truncates Lua numbers in replies) with 17 digits, so both sides compute the same doubles.
# Each key is applied under `pcall`: a key Redis fails (it holds another type, a write refused
# for lack of memory or on a read-only replica) answers -1 and Redis's message in place of its
# decision, and the keys after it are applied all the same (a script's error would stop the
# script there, leaving the keys before it charged and every offer of the call unanswered).
_OFFER_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local function apply(key, now, cost)
  local state = redis.call('HMGET', key, 'level', 'at')
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
  redis.call('HSET', key, 'level', stored, 'at', string.format('%.17g', at))
  redis.call('PEXPIRE', key, math.ceil(level / rate * 1000) + 1000)
  return allowed, stored, string.format('%.17g', retry)
end
local replies = {}
for i, key in ipairs(KEYS) do
  local ok, allowed, stored, retry = pcall(
    apply, key, tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2]))
  if not ok then
    local failure = allowed
    if type(failure) == 'table' then failure = failure.err end
    allowed, stored, retry = -1, tostring(failure), ''
  end
  replies[#replies + 1] = allowed
  replies[#replies + 1] = stored
  replies[#replies + 1] = retry
end
return replies
"""


class _Script(Protocol):
    async def __call__(self, keys: list[str], args: list[Any]) -> Any: ...


class _ScriptHost(Protocol):
    def register_script(self, script: str) -> Any: ...


# An offer: the bucket's key, the cost and the time.
_Offer = tuple[str, int, float]
# Offers sent to Redis in one call of the script, at most.
OFFERS_PER_CALL = 500


class RedisLeakyBucket:
    """Buckets in Redis, one hash per caller key.

    Offers go to Redis in groups (`Grouper`): an offer made while none is on its way goes at
    once, and the offers made while a call runs go together in the next one, where the script
    applies them one after the other in the order they were made, each atomically. The
    decisions are those of one call per offer, made in that order, at one round trip for the
    lot.

    Failures: when the call fails as a whole (Redis unreachable, a timeout, the script
    refused), every offer of the group raises that Redis error; a reply of the wrong shape
    raises `LimiterError` for each. When Redis fails one bucket (see the script), that offer
    alone raises `BucketError` with Redis's message and the others get their decisions; a
    refusal that is the server's state, not the bucket's (`READONLY`, `OOM`...), raises
    `LimiterError` with Redis's message. The
    script names several keys at once: the buckets must live on one Redis (not spread over a
    cluster's slots).
    """

    def __init__(self, redis: _ScriptHost, limits: BucketLimits, *, prefix: str) -> None:
        self.limits = limits
        self._prefix = prefix
        self._script: _Script = redis.register_script(_OFFER_LUA)
        self._groups: PerLoop[_Offer, Decision] = PerLoop(
            lambda: Grouper(self._offer_all, limit=OFFERS_PER_CALL)
        )

    async def offer(self, key: str, cost: int, *, now: datetime) -> Decision:
        """Offer `cost` units to the bucket of `key` at `now` (the caller's clock)."""
        return await self._groups().submit((self._prefix + key, cost, now.timestamp()))

    async def _offer_all(self, offers: Sequence[_Offer]) -> list[Decision | LimiterError]:
        args: list[Any] = [self.limits.capacity, self.limits.leak_per_second]
        for _, cost, at in offers:
            args += [at, cost]
        reply = await self._script(keys=[key for key, _, _ in offers], args=args)
        if not isinstance(reply, list) or len(reply) != 3 * len(offers):
            raise LimiterError(f"the rate limit script answered {reply!r:.200}")
        results: list[Decision | LimiterError] = []
        for i, (_, cost, _) in enumerate(offers):
            allowed, level, retry = reply[3 * i : 3 * i + 3]
            if allowed == -1:
                message = level.decode() if isinstance(level, bytes) else str(level)
                code = message.partition(" ")[0]
                error = LimiterError if code in _SERVER_REFUSALS else BucketError
                results.append(error(message))
                continue
            try:
                decision = Decision(
                    allowed=int(allowed) == 1,
                    requested=cost,
                    level=float(level),
                    limits=self.limits,
                    retry_after_seconds=float(retry),
                )
            except (TypeError, ValueError):
                results.append(LimiterError(f"the rate limit script answered {reply!r:.200}"))
                continue
            results.append(decision)
        return results
