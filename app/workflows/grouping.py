"""Running concurrent requests of one process together: what arrives while a group runs is
run as the next group.

A request that finds nothing running starts at once (no waiting for company), so a lone
request costs what it did alone; under load, each group's round trips, statement triggers and
commit are shared by every request in it. The group runs in a task of its own: a caller that
stops waiting (cancelled) does not stop the group its request is in.
"""

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class Grouper(Generic[Request, Result]):
    """Requests of one event loop, run in groups of at most `limit` by `run` (a result or an
    exception for each request of the group, in order).

    `key(request)`: requests run together only with requests of the same key (those of
    another key wait for a later group, in arrival order); a request whose key is already in
    the group (`distinct`, say the same payment twice) waits too.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Request]], Awaitable[Sequence[Result | BaseException]]],
        *,
        limit: int,
        key: Callable[[Request], Hashable] = lambda _: None,
        distinct: Callable[[Request], Hashable] | None = None,
    ) -> None:
        self._run = run
        self._limit = limit
        self._key = key
        self._distinct = distinct
        self._pending: list[tuple[Request, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Request, asyncio.Future[Result]]]:
        """The next group: the oldest request and those after it that may join it."""
        first, _ = self._pending[0]
        key = self._key(first)
        taken: list[tuple[Request, asyncio.Future[Result]]] = []
        left: list[tuple[Request, asyncio.Future[Result]]] = []
        seen: set[Hashable] = set()
        for entry in self._pending:
            request, future = entry
            if future.done():
                continue  # its caller stopped waiting before the group started
            mark = None if self._distinct is None else self._distinct(request)
            if len(taken) < self._limit and self._key(request) == key and mark not in seen:
                taken.append(entry)
                if mark is not None:
                    seen.add(mark)
            else:
                left.append(entry)
        self._pending = left
        return taken

    async def _drain(self) -> None:
        while self._pending:
            group = self._take()
            if not group:
                continue
            try:
                results = await self._run([request for request, _ in group])
            except Exception as exc:  # handed to every caller of the group
                results = [exc] * len(group)
            except BaseException as exc:
                # Cancelled (the loop is closing) or stopped: every caller still waiting is
                # told, none is left waiting for a group that will not run.
                for _, future in group + self._pending:
                    if not future.done():
                        future.set_exception(exc)
                self._pending = []
                raise
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class PerLoop(Generic[Request, Result]):
    """One `Grouper` per event loop, made on first use in it."""

    def __init__(self, make: Callable[[], Grouper[Request, Result]]) -> None:
        self._make = make
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, Grouper[Request, Result]
        ] = weakref.WeakKeyDictionary()

    def __call__(self) -> Grouper[Request, Result]:
        loop = asyncio.get_running_loop()
        grouper = self._by_loop.get(loop)
        if grouper is None:
            grouper = self._by_loop[loop] = self._make()
        return grouper
