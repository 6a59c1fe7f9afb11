"""Serve an ASGI app on a free loopback port inside the running event loop (tests, demo, bench)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import multiprocessing
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from multiprocessing.connection import Connection

import uvicorn
from starlette.types import ASGIApp


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback(host: str) -> None:
    """Refuse any address but loopback: the sandbox must never be reachable from elsewhere."""
    if not is_loopback(host):
        raise ValueError(
            f"the sandbox serves loopback only (127.0.0.1, ::1, localhost); refusing {host!r}"
        )


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run the app with uvicorn on a free port of host; yields its base URL."""
    require_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose protocol
    # says TCP, and without it every response waits out the peer's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.005)
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def _serve_in_child(channel: Connection, start: datetime, config_path: str | None) -> None:
    from sandbox.app import create_app

    async def run() -> None:
        async with serving(create_app(lambda: start, config_path)) as base:
            channel.send(base)
            # Serve until the parent says stop, or goes away (the pipe then reads EOF).
            with contextlib.suppress(EOFError):
                await asyncio.get_running_loop().run_in_executor(None, channel.recv)

    asyncio.run(run())


@contextlib.contextmanager
def in_subprocess(start: datetime, config_path: str | None = None) -> Iterator[tuple[str, int]]:
    """The sandbox in a process of its own, as a processor is another machine: it does not
    share the caller's core. Time stands at `start` until moved over the admin clock API.
    Yields (base URL, process id)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_in_child, args=(child, start, config_path), daemon=True)
    process.start()
    try:
        pid = process.pid
        if pid is None:  # pragma: no cover - start() either sets it or raises
            raise RuntimeError("the sandbox process did not start")
        yield str(parent.recv()), pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
