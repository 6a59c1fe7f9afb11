"""uvicorn's HTTP protocol, writing each response's head and body in one socket write.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, then its body in a write of its own: two system calls, and on loopback
two segments for the client to wake up for, where one would do. For a response of known
length (Starlette's `Response`: a head, then the whole body at once) the head is held and
sent with the body's first write. Streamed responses (chunked) and everything else are
written as uvicorn writes them; the connection's other writes (`100 Continue`) are not held.
"""

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
except ImportError:  # httptools absent (uvicorn without its standard extras): uvicorn's choice
    HTTP_PROTOCOL: Any = "auto"
else:

    class _HeadWithBody:
        """A cycle's transport, holding its response head until the body's first write."""

        __slots__ = ("_cycle", "_head", "_transport")

        def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
            self._transport = transport
            self._cycle = cycle
            self._head: bytes | None = None

        def write(self, data: bytes) -> None:
            head = self._head
            if head is not None:
                self._head = None
                self._transport.write(head + data)
            elif (
                self._cycle.response_started
                and not self._cycle.response_complete
                and self._cycle.chunked_encoding is False
                and self._cycle.scope["method"] != "HEAD"  # no body write will follow
                and data.startswith(b"HTTP/")
            ):
                self._head = data  # the head of a response of known length
            else:
                self._transport.write(data)

        def close(self) -> None:
            self._flush()
            self._transport.close()

        def _flush(self) -> None:
            if self._head is not None:
                head, self._head = self._head, None
                self._transport.write(head)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

    class OneWriteHttpTools(HttpToolsProtocol):
        """httptools' protocol, each response of known length written at once."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            # The app has not run yet: its task starts on the loop's next turn.
            if cycle is not None and cycle.transport is self.transport:
                cycle.transport = _HeadWithBody(self.transport, cycle)  # type: ignore[assignment]

    HTTP_PROTOCOL = OneWriteHttpTools
