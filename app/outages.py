"""Dependency outages: telling "PostgreSQL or Redis is unreachable" apart from a bug.

An outage is transient and the caller's answer differs from a bug's: an HTTP request gets a 503
with `Retry-After` (the client should retry), a job is re-queued for later instead of failing
for good, a worker waits and reconnects instead of exiting. Everything that needs that decision
asks `outage_of(exc)`, so the rules live in one place.

What counts, found anywhere in the exception's chain (`__cause__`, `__context__`, SQLAlchemy's
`orig`, GraphQL's `original_error`):
- Redis: `redis.exceptions.ConnectionError` (refused, reset, still loading its data set) and
  `redis.exceptions.TimeoutError`. The redis client wraps every socket error in these.
- PostgreSQL: a SQLAlchemy error whose connection was invalidated (the server closed it, e.g.
  on restart), asyncpg's connection-class errors (`08xxx`), operator intervention (`57Pxx`:
  shutdown, crash, "cannot connect now" while starting), the client's own "connection is
  closed", too many connections, a pool checkout that timed out, and a bare `OSError` or
  `TimeoutError` (asyncpg raises the socket's own error when it cannot connect) unless an
  httpx error wraps it: an unreachable processor or webhook receiver is not an outage of ours.
  A context suppressed with `raise … from None` is not followed.
"""

from collections.abc import Iterator
from enum import StrEnum

import asyncpg.exceptions as pg_errors
import httpx
import redis.exceptions as redis_errors
import sqlalchemy.exc as sa_errors


class Dependency(StrEnum):
    """A service the portal cannot work without."""

    DATABASE = "database"
    REDIS = "redis"


_PG_OUTAGES: tuple[type[BaseException], ...] = (
    pg_errors.PostgresConnectionError,
    pg_errors.OperatorInterventionError,
    pg_errors.ConnectionDoesNotExistError,
    pg_errors.TooManyConnectionsError,
    pg_errors.InterfaceError,
    sa_errors.TimeoutError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it, as Python and the libraries record it; not past an httpx
    error (its socket errors are a processor's or a receiver's, not ours) nor into a context
    the raiser suppressed (`raise … from None`)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, httpx.HTTPError):
            continue
        linked = [
            current.__cause__,
            None if current.__suppress_context__ else current.__context__,
            getattr(current, "orig", None),
            getattr(current, "original_error", None),
        ]
        pending.extend(link for link in linked if isinstance(link, BaseException))


def outage_of(exc: BaseException) -> Dependency | None:
    """The dependency whose outage caused `exc`, or None when it is something else."""
    for current in _chain(exc):
        if isinstance(current, redis_errors.ConnectionError | redis_errors.TimeoutError):
            return Dependency.REDIS
        if isinstance(current, sa_errors.DBAPIError) and current.connection_invalidated:
            return Dependency.DATABASE
        if isinstance(current, _PG_OUTAGES):
            return Dependency.DATABASE
        # The redis client wraps every socket error in its own, and httpx's are not followed:
        # a bare one is PostgreSQL's (asyncpg raises the socket's own error on connect).
        if isinstance(current, OSError | TimeoutError):
            return Dependency.DATABASE
    return None


def is_outage(exc: BaseException) -> bool:
    """True when `exc` comes from PostgreSQL or Redis being unreachable."""
    return outage_of(exc) is not None


def unavailable_message(dependency: Dependency, retry_after_seconds: int) -> str:
    """What a caller is told when its request met an outage: which service, and when to retry."""
    name = "the database" if dependency is Dependency.DATABASE else "Redis"
    return f"{name} is unavailable; retry in {retry_after_seconds} s"
