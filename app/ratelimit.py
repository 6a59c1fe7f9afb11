"""Leaky-bucket rate limiting by cost: the pure arithmetic and its atomic Redis twin."""

import asyncio
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
# never interleave a read and a write of the same bucket: for each key in turn, at its own
# time and cost (ARGV: capacity, rate, then now and cost per key), so offers sent together are
# applied one after the other, in order, each atomically. Floats travel as strings (Redis
# truncates Lua numbers in replies) with 17 digits, so both sides compute the same doubles.
_OFFER_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local replies = {}
for i, key in ipairs(KEYS) do
  local now = tonumber(ARGV[2 * i + 1])
  local cost = tonumber(ARGV[2 * i + 2])
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
  replies[#replies + 1] = allowed
  replies[#replies + 1] = stored
  replies[#replies + 1] = string.format('%.17g', retry)
end
return replies
"""


class _Script(Protocol):
    async def __call__(self, keys: list[str], args: list[Any]) -> Any: ...


class _ScriptHost(Protocol):
    def register_script(self, script: str) -> Any: ...


# An offer waiting for its batch: the bucket's key, the cost, the time, and its answer.
_Pending = tuple[str, int, float, "asyncio.Future[Decision]"]


class RedisLeakyBucket:
    """Buckets in Redis, one hash per caller key.

    The offers made during one turn of the event loop (the requests that arrived together)
    go to Redis together, as one call of the script, which applies them one after the other
    in the order they were made, each atomically: the decisions are those of one call per
    offer, made in that order, at one round trip for the lot instead of one each. An offer
    waits at most for the turn to end. When the call fails (Redis unreachable, a timeout),
    every offer of the batch raises its error. The script names several keys at once: the
    buckets must live on one Redis (not spread over a cluster's slots).
    """

    def __init__(self, redis: _ScriptHost, limits: BucketLimits, *, prefix: str) -> None:
        self.limits = limits
        self._prefix = prefix
        self._script: _Script = redis.register_script(_OFFER_LUA)
        self._pending: list[_Pending] = []
        # Batches on their way to Redis (a task must be referenced until it ends).
        self._sending: set[asyncio.Task[None]] = set()

    async def offer(self, key: str, cost: int, *, now: datetime) -> Decision:
        """Offer `cost` units to the bucket of `key` at `now` (the caller's clock)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Decision] = loop.create_future()
        self._pending.append((self._prefix + key, cost, now.timestamp(), answer))
        if len(self._pending) == 1:
            loop.call_soon(self._send)
        return await answer

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._offer_all(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _offer_all(self, batch: list[_Pending]) -> None:
        args: list[Any] = [self.limits.capacity, self.limits.leak_per_second]
        for _, cost, at, _ in batch:
            args += [at, cost]
        try:
            reply = await self._script(keys=[key for key, *_ in batch], args=args)
        except BaseException as exc:
            for *_, answer in batch:
                if answer.done():
                    continue
                if isinstance(exc, Exception):
                    answer.set_exception(exc)
                else:
                    answer.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for i, (_, cost, _, answer) in enumerate(batch):
            allowed, level, retry = reply[3 * i : 3 * i + 3]
            if not answer.done():
                answer.set_result(
                    Decision(
                        allowed=int(allowed) == 1,
                        requested=cost,
                        level=float(level),
                        limits=self.limits,
                        retry_after_seconds=float(retry),
                    )
                )
