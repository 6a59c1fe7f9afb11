"""Engine, sessions and the unit of work; every session carries a tenancy scope it enforces."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from functools import cache, lru_cache
from typing import Any, Self
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql.base import ExecutableOption
from sqlmodel import col

from app.models import tables as _tables  # noqa: F401 - every table must be mapped
from app.models.base import TenantOwned
from app.models.merchant import Merchant
from app.tenancy import Scope

# Each connection's session settings. JIT compilation off: PostgreSQL compiles a statement
# whose estimated cost passes `jit_above_cost`, and the statistics statement over a large
# merchant's rollups (a few hundred parameters, a dozen aggregates) took 600-700 ms with it
# against 90 ms without, at ten million payments; the portal's statements are short and
# indexed, the case JIT never pays for.
SERVER_SETTINGS = {"jit": "off"}


class ScopedSession(Session):
    """A session that filters every ORM statement by its scope (see `_enforce_scope`)."""


@event.listens_for(ScopedSession, "do_orm_execute")
def _enforce_scope(state: ORMExecuteState) -> None:
    """The one place tenancy is enforced: merchant and tenant-owned rows outside the scope
    are invisible to ORM selects, updates and deletes, whatever query a caller writes."""
    scope = state.session.info.get("scope")
    if not isinstance(scope, Scope):
        raise RuntimeError("a database session was opened without a tenancy scope")
    if scope.merchant_ids is None:
        return
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return
    state.statement = state.statement.options(*_scope_criteria(scope.merchant_ids))


@lru_cache(maxsize=1024)
def _scope_criteria(merchant_ids: frozenset[UUID]) -> tuple[ExecutableOption, ...]:
    """The criteria options of a scope, built once per set of merchants (immutable, so one
    set of options serves every statement of every session with that scope)."""
    ids = sorted(merchant_ids)
    return (
        *(
            with_loader_criteria(model, col(model.merchant_id).in_(ids), include_aliases=True)
            for model in _tenant_models()
        ),
        with_loader_criteria(Merchant, col(Merchant.id).in_(ids), include_aliases=True),
    )


@cache
def _tenant_models() -> tuple[type[TenantOwned], ...]:
    """Every mapped table that belongs to a merchant."""
    found: list[type[TenantOwned]] = []
    pending: list[type[TenantOwned]] = [TenantOwned]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if hasattr(cls, "__table__"):
            found.append(cls)
    return tuple(sorted(found, key=lambda c: c.__name__))


class UnitOfWork:
    """One transaction: rolls back on exit unless `commit()` was called."""

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope
        self._committed = False

    async def commit(self) -> None:
        await self.session.commit()
        self._committed = True

    async def rollback(self) -> None:
        await self.session.rollback()


class Database:
    """Creates scoped sessions and units of work over one engine or one shared connection."""

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        *,
        engine: AsyncEngine | None = None,
        serialize: bool = False,
    ) -> None:
        self._factory = factory
        self.engine = engine
        # A single shared connection (tests) cannot run two statements at once, and
        # interleaved savepoints of concurrent sessions would release each other.
        self._lock = asyncio.Lock() if serialize else None

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Self:
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args={"server_settings": SERVER_SETTINGS},
        )
        event.listen(engine.sync_engine.pool, "checkout", _closed_by_server)
        return cls(_sessionmaker(engine), engine=engine)

    @classmethod
    def for_connection(cls, connection: AsyncConnection) -> Self:
        """Sessions joined to an open transaction through savepoints (a test's connection)."""
        factory = _sessionmaker(connection, join_transaction_mode="create_savepoint")
        return cls(factory, serialize=True)

    @asynccontextmanager
    async def session(self, scope: Scope) -> AsyncIterator[AsyncSession]:
        """A short session for reads (a dataloader batch, a lookup)."""
        guard: AbstractAsyncContextManager[Any] = self._lock or nullcontext()
        async with guard, self._factory() as session:
            session.info["scope"] = scope
            yield session

    @asynccontextmanager
    async def read(self, scope: Scope) -> AsyncIterator[AsyncSession]:
        """A session for reads, each statement outside any transaction (its own snapshot):
        without the round trips of BEGIN and ROLLBACK. Over a shared connection (tests), a
        plain session."""
        async with self.session(scope) as session:
            if self.engine is not None:
                await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session

    @asynccontextmanager
    async def autocommit(self, scope: Scope) -> AsyncIterator[AsyncSession]:
        """A session each of whose statements is a transaction of its own, committed before
        the call that runs it returns: for a read, or a write that needs no other
        statement with it, without the round trips of BEGIN and COMMIT or ROLLBACK. Over a
        shared connection (tests) the statements run in a savepoint, released at the end
        unless an exception leaves the block."""
        async with self.session(scope) as session:
            if self.engine is None:
                yield session
                await session.commit()
                return
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session

    @asynccontextmanager
    async def uow(self, scope: Scope) -> AsyncIterator[UnitOfWork]:
        """A unit of work: commits only when told, rolls back otherwise."""
        async with self.session(scope) as session:
            uow = UnitOfWork(session, scope)
            try:
                yield uow
            finally:
                if not uow._committed:
                    await session.rollback()

    async def dispose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()


def _closed_by_server(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection the server has closed (a restart, a terminated backend) is
    replaced at checkout, as a pre-ping would, but without a round trip: the driver learns of
    the close as soon as the event loop reads it. (SQLAlchemy's pre-ping costs three round
    trips on asyncpg, BEGIN, a ping and ROLLBACK, on every checkout.) A connection that dies
    unnoticed fails its first statement instead, and SQLAlchemy then invalidates the pool's
    older connections."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    is_closed = getattr(driver, "is_closed", None)
    if is_closed is not None and is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def _sessionmaker(
    bind: AsyncEngine | AsyncConnection, **kwargs: Any
) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=bind,
        expire_on_commit=False,
        autoflush=False,
        sync_session_class=ScopedSession,
        **kwargs,
    )


__all__ = ["Database", "ScopedSession", "UnitOfWork"]
