"""Which exceptions count as a PostgreSQL or Redis outage, and which are bugs."""

import asyncio

import httpx
import pytest
import redis.exceptions as redis_errors
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.outages import Dependency, is_outage, outage_of


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def test_redis_connection_errors_are_redis_outages() -> None:
    refused = _wrapped(redis_errors.ConnectionError("refused"), ConnectionRefusedError())
    assert outage_of(refused) is Dependency.REDIS
    assert outage_of(redis_errors.TimeoutError("slow")) is Dependency.REDIS
    assert outage_of(redis_errors.BusyLoadingError("loading")) is Dependency.REDIS


def test_a_bare_socket_error_is_the_database() -> None:
    assert outage_of(ConnectionRefusedError(111, "refused")) is Dependency.DATABASE
    assert outage_of(TimeoutError()) is Dependency.DATABASE


def test_an_unreachable_processor_is_not_an_outage() -> None:
    error = _wrapped(httpx.ConnectError("refused"), ConnectionRefusedError())
    assert outage_of(error) is None


def test_bugs_are_not_outages() -> None:
    assert not is_outage(ValueError("bad"))
    assert not is_outage(KeyError("x"))
    assert not is_outage(redis_errors.ResponseError("WRONGTYPE"))
    assert not is_outage(_wrapped(RuntimeError("outer"), ZeroDivisionError()))


async def test_a_closed_database_port_is_a_database_outage() -> None:
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nothing")
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert outage_of(caught.value) is Dependency.DATABASE
    finally:
        await engine.dispose()


async def test_a_terminated_session_is_a_database_outage(database_url: str) -> None:
    """What a PostgreSQL restart does to a connection in use: the server ends it."""
    engine = create_async_engine(database_url, pool_size=2)
    try:
        async with engine.connect() as victim, engine.connect() as admin:
            pid = (await victim.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await asyncio.sleep(0.05)
            with pytest.raises(Exception) as caught:
                await victim.execute(text("SELECT 1"))
        assert outage_of(caught.value) is Dependency.DATABASE
    finally:
        await engine.dispose()


def test_a_database_error_raised_while_handling_a_processor_error_is_an_outage() -> None:
    processor = _wrapped(httpx.ConnectError("refused"), ConnectionRefusedError())
    database = ConnectionRefusedError(111, "refused")
    database.__context__ = processor
    assert outage_of(database) is Dependency.DATABASE


def _bug_hiding_a_socket_error() -> None:
    try:
        raise ConnectionRefusedError(111, "refused")
    except OSError:
        raise ValueError("bad input") from None


def test_a_suppressed_context_is_not_followed() -> None:
    with pytest.raises(ValueError) as caught:
        _bug_hiding_a_socket_error()
    assert outage_of(caught.value) is None
