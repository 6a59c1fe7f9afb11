"""Telling every API process that a merchant's feed grew: small notices over Redis pub/sub.

A notice carries merchant ids only, never an event: subscribers read the events themselves
from PostgreSQL, by position (`app/services/event_feed.py`). So a lost notice delays an event
and never loses it: each API process holds one Redis subscription (`EventNotices`) shared by
its subscribers; when that subscription is (re)established, every subscriber reads the
database again (whatever was published while it was down is caught up there), and every
subscriber also reads it every `FALLBACK_SECONDS` without being told.

Pub/sub channels are not scoped by Redis database number, so the channel names the database:
deployments sharing one Redis server do not wake each other's subscribers.
"""

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from redis.asyncio import Redis

from app.outages import outage_of

logger = logging.getLogger(__name__)

# A subscriber reads the feed this often even when no notice came.
FALLBACK_SECONDS = 30.0
# With no message for this long the subscription pings Redis; no answer for as long again
# and it reconnects (a Redis that hangs rather than closing the connection).
PING_AFTER_SECONDS = 5.0
RECONNECT_INITIAL_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0


def channel(redis: Redis) -> str:
    """The notices' channel for the Redis database `redis` uses."""
    database = redis.connection_pool.connection_kwargs.get("db", 0)
    return f"portal:events:{database}"


async def publish(redis: Redis, merchant_ids: Collection[uuid.UUID]) -> None:
    """Say that these merchants' feeds grew (after the positions committed)."""
    if merchant_ids:
        body = json.dumps(sorted(str(m) for m in merchant_ids))
        await redis.publish(channel(redis), body)


def _merchants(data: Any) -> set[uuid.UUID]:
    try:
        return {uuid.UUID(m) for m in json.loads(data)}
    except (ValueError, TypeError, AttributeError):
        logger.warning("event notice ignored: not a list of merchant ids")
        return set()


def listener_client(redis: Redis) -> Redis:
    """A client for the subscription, on the same server and database as `redis` but
    without its command timeout (a subscription is idle between notices)."""
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}
    return Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


class EventNotices:
    """One API process's Redis subscription to notices, waking its subscribers."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        # Whether the subscription is established; and how many times it was (tests, logs).
        self.listening = False
        self.subscriptions = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-notices")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    @contextmanager
    def watch(self, merchant_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever `merchant_id`'s feed may have grown; the watcher clears it
        before each read of the feed, so a notice arriving during the read is not lost."""
        wake = asyncio.Event()
        self._waiters[merchant_id].add(wake)
        try:
            yield wake
        finally:
            waiters = self._waiters.get(merchant_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[merchant_id]

    def _wake(self, merchant_ids: Collection[uuid.UUID] | None) -> None:
        """Wake the watchers of these merchants; of every merchant when None."""
        if merchant_ids is None:
            groups = list(self._waiters.values())
        else:
            groups = [self._waiters[m] for m in merchant_ids if m in self._waiters]
        for group in groups:
            for wake in group:
                wake.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            established = self.subscriptions
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if outage_of(exc) is None:
                    logger.exception("event notices: subscription failed")
                elif self.listening or attempt == 0:
                    logger.warning(
                        "event notices: Redis unavailable (%s); subscribers read the "
                        "database until it answers",
                        type(exc).__name__,
                    )
            self.listening = False
            if self.subscriptions > established:
                attempt = 0  # it was up: the backoff starts over
            delay = min(RECONNECT_MAX_SECONDS, RECONNECT_INITIAL_SECONDS * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(channel(self._redis))
            self.listening = True
            self.subscriptions += 1
            if self.subscriptions > 1:
                logger.info("event notices: subscribed to Redis again")
            # Notices published while nobody listened are gone: everyone reads the database.
            self._wake(None)
            heard = time.monotonic()
            pinged: float | None = None
            while True:
                message = await pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    heard, pinged = now, None
                    if message.get("type") == "message":
                        self._wake(_merchants(message.get("data")))
                    continue
                if pinged is not None and now - pinged > PING_AFTER_SECONDS:
                    raise TimeoutError("Redis did not answer the subscription's ping")
                if pinged is None and now - heard > PING_AFTER_SECONDS:
                    await pubsub.ping()
                    pinged = now


__all__ = ["FALLBACK_SECONDS", "EventNotices", "channel", "listener_client", "publish"]
