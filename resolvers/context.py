"""The typed per-request context: who is asking, the database, loaders, clock and settings."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

from arq.connections import ArqRedis
from redis.asyncio import Redis

from app.clock import Clock
from app.crypto import CredentialBox
from app.db import Database, UnitOfWork
from app.errors import Unauthenticated
from app.event_notices import EventNotices
from app.settings import Settings
from app.tenancy import Principal
from app.workflows.authentication import PrincipalCache
from resolvers.loaders import Loaders


class ChangeBy(TypedDict):
    """Who makes a change, and when: the keywords the core's changing services take, passed
    to them as `**by`."""

    principal: Principal
    now: datetime


@dataclass
class Context:
    """Built by the HTTP view for each request (and by tests around `schema.execute`)."""

    db: Database
    principal: Principal | None
    clock: Clock
    settings: Settings
    redis: Any = None
    request_id: str | None = None
    arq: ArqRedis | None = None
    # The HTTP view's cache of authenticated keys, which a revocation empties of the key.
    principals: PrincipalCache | None = None
    # Websockets: the process's event notices, the `connection_init` payload, and how to look
    # the connection's key up again (a subscription ends when its key is revoked).
    notices: EventNotices | None = None
    connection_params: dict[str, Any] | None = None
    reauthenticate: Callable[[], Awaitable[Principal | None]] | None = None
    _loaders: Loaders | None = field(default=None, init=False, repr=False)

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated("send a valid API key as 'Authorization: Bearer <token>'")
        return self.principal

    def require_write(self) -> None:
        """Refuse a mutation (UNAUTHENTICATED without a key, FORBIDDEN for a READ-only key)."""
        self.require_principal().require_write()

    @asynccontextmanager
    async def change(self) -> AsyncIterator[tuple[UnitOfWork, ChangeBy]]:
        """A unit of work for one change, and who makes it when (the caller, the clock's now):
        committed when the block ends, rolled back when it raises (a refusal included)."""
        principal = self.require_principal()
        async with self.db.uow(principal.scope) as uow:
            yield uow, ChangeBy(principal=principal, now=self.clock.now())
            await uow.commit()

    def credential_box(self) -> CredentialBox:
        """Seals and opens stored credentials and signing secrets."""
        return CredentialBox(self.settings.secret_key.get_secret_value())

    def job_queue(self) -> ArqRedis:
        """The arq client jobs are enqueued on."""
        if self.arq is not None:
            return self.arq
        if isinstance(self.redis, ArqRedis):
            return self.redis
        if isinstance(self.redis, Redis):
            # arq's client is a Redis subclass: share the plain client's pool rather than
            # require every context builder to pass both.
            self.arq = ArqRedis(pool_or_conn=self.redis.connection_pool)
            return self.arq
        raise RuntimeError("no Redis client in the request context; jobs cannot be queued")

    def reset_loaders(self) -> None:
        """Forget what the loaders cached (after the principal's scope changed)."""
        self._loaders = None

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.db, self.require_principal().scope)
        return self._loaders
