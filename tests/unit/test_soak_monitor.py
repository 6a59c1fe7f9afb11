"""The soak's monitor keeps sampling whatever a reading meets.

Every "resumed after" figure of the soak comes from the monitor's samples: if its task ended,
every later fault would read "never" although the portal had resumed long before.
"""

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.soak import faults
from tests.support.soak.faults import Monitor
from tests.support.soak.run import _background
from tests.support.stack import free_port

# What a backend sends on a fast shutdown before it exits and its socket closes.
_SHUTDOWN_FIELDS = {
    b"S": "FATAL",
    b"V": "FATAL",
    b"C": "57P01",
    b"M": "terminating connection due to administrator command",
}


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup_reply() -> bytes:
    parameters = {
        "server_version": "16.0",
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
    }
    reply = _message(b"R", struct.pack("!i", 0))  # AuthenticationOk
    for name, value in parameters.items():
        reply += _message(b"S", f"{name}\0{value}\0".encode())
    reply += _message(b"K", struct.pack("!ii", 4242, 1))  # BackendKeyData
    return reply + _message(b"Z", b"I")  # ReadyForQuery, idle


@dataclass
class ShuttingDownServer:
    """A PostgreSQL that accepts a connection, then says it is shutting down, and whose backend
    has not exited yet: the client has the FATAL message but its socket is still open."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if code == 80877103:  # SSLRequest: no TLS here
                writer.write(b"N")
                (length,) = struct.unpack("!i", await reader.readexactly(4))
                await reader.readexactly(length - 4)
            else:
                await reader.readexactly(length - 8)
            fatal = b"".join(k + v.encode() + b"\0" for k, v in _SHUTDOWN_FIELDS.items()) + b"\0"
            writer.write(_startup_reply() + _message(b"E", fatal))
            await writer.drain()
            # The process has not exited yet: nothing more is sent, nothing is closed.
            while await reader.read(1024):
                pass


@dataclass
class _Service:
    url: str


@dataclass
class _Stack:
    postgres: _Service
    redis: _Service
    apis: list[Any] = field(default_factory=list)


@pytest.fixture
async def shutting_down_postgres() -> AsyncIterator[str]:
    fake = ShuttingDownServer()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/portal"
    finally:
        for writer in fake.writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_connection_closing_under_the_monitor_is_a_missing_reading(
    shutting_down_postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg refuses the next query on such a connection with InternalClientError ("another
    # operation is in progress"): neither a PostgresError nor an InterfaceError.
    monkeypatch.setattr(faults, "SAMPLE_EVERY", 0.05)
    nothing = f"redis://127.0.0.1:{free_port()}/0"  # no Redis: heartbeats are not read
    monitor = Monitor(_Stack(_Service(shutting_down_postgres), _Service(nothing)))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    try:
        for _ in range(100):
            if len(monitor.samples) >= 3 or task.done():
                break
            await asyncio.sleep(0.05)
        assert not task.done(), f"the monitor stopped: {task.exception()!r}"
        assert len(monitor.samples) >= 3
        assert all(s.transitions is None for s in monitor.samples)
        assert monitor.failures["transitions"]["InternalClientError"] >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_background_job_that_dies_is_named_with_its_error() -> None:
    async def sampler(stop: asyncio.Event) -> None:
        raise RuntimeError("lost its connection")

    async def steady(stop: asyncio.Event) -> None:
        await stop.wait()

    async with _background(sampler, steady) as died:
        await asyncio.sleep(0.05)
    assert len(died) == 1
    assert "sampler" in died[0]
    assert "lost its connection" in died[0]
