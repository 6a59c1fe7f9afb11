"""The API's HTTP protocol: a response of known length leaves in one write, head and body."""

import asyncio
from typing import Any

import pytest
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from portal.serving import HTTP_PROTOCOL


class FakeTransport(asyncio.Transport):
    """What the protocol writes, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def serve(app: Any, request: bytes) -> FakeTransport:
    config = Config(app=app, http=HTTP_PROTOCOL, lifespan="off", log_config=None)
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


GET = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


async def test_a_response_of_known_length_is_one_write() -> None:
    transport = await serve(Response(b'{"data":1}', media_type="application/json"), GET)
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 10\r\n" in written
    assert written.endswith(b'\r\n\r\n{"data":1}')


async def test_a_streamed_response_is_written_as_it_comes() -> None:
    async def chunks() -> Any:
        yield b"one"
        yield b"two"

    transport = await serve(StreamingResponse(chunks()), GET)
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\n")  # the head alone, before any chunk
    assert b"".join(transport.writes[1:]) == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"


async def test_a_head_request_gets_its_head() -> None:
    transport = await serve(Response(b"hidden"), b"HEAD / HTTP/1.1\r\nHost: example\r\n\r\n")
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("fail", [True, False])
async def test_an_app_stopping_after_the_head_still_sends_it(fail: bool) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        if fail:
            raise RuntimeError("broken")

    transport = await serve(app, GET)
    assert transport.closed
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 OK\r\n")
