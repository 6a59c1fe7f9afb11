"""The API server's options: an idle client connection stays open for `keep_alive_seconds`, so
a client or proxy that drops idle connections sooner never sends on one the server is closing."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from app.settings import Settings
from portal.asgi import server_options
from tests.support.stack import free_port

UVICORN_DEFAULT_KEEP_ALIVE = 5
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(_ok, host="127.0.0.1", port=port, **server_options(settings))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _idle_for(port: int, seconds: float) -> bool:
    """Whether a connection that answered one request is still open after `seconds` idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(2) == b"ok"
        try:
            closed = await asyncio.wait_for(reader.read(1), seconds)
        except TimeoutError:
            return True
        assert closed == b""
        return False
    finally:
        writer.close()


async def test_idle_connections_are_kept_for_the_setting() -> None:
    async with _serving(Settings(keep_alive_seconds=1)) as port:
        assert await _idle_for(port, 0.5)
        assert not await _idle_for(port, 3)


def test_the_default_outlasts_the_idle_timeouts_in_front_of_the_api() -> None:
    """Longer than uvicorn's 5 s and a load balancer's common 60 s: the client drops first."""
    kept = server_options(Settings())["timeout_keep_alive"]
    assert kept > max(UVICORN_DEFAULT_KEEP_ALIVE, 60)


@pytest.mark.parametrize("seconds", [0, 3601])
def test_the_setting_is_bounded(seconds: int) -> None:
    with pytest.raises(ValueError, match="keep_alive_seconds"):
        Settings(keep_alive_seconds=seconds)
