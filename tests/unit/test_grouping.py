"""Concurrent requests run in groups: what arrives while a group runs is the next group."""

import asyncio
from collections.abc import Sequence

import pytest

from app.workflows.grouping import Grouper, PerLoop


class Runner:
    """Records each group it is given; answers each request doubled (or fails on "bad")."""

    def __init__(self) -> None:
        self.groups: list[list[object]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, requests: Sequence[object]) -> list[object]:
        self.groups.append(list(requests))
        await self.release.wait()
        return [
            ValueError(f"cannot {r}") if r == "bad" else (r * 2 if isinstance(r, int) else r)
            for r in requests
        ]


async def test_a_lone_request_runs_at_once() -> None:
    run = Runner()
    grouper: Grouper[object, object] = Grouper(run, limit=8)
    assert await grouper.submit(21) == 42
    assert run.groups == [[21]]


async def test_requests_arriving_while_a_group_runs_form_the_next_group() -> None:
    run = Runner()
    run.release.clear()
    grouper: Grouper[object, object] = Grouper(run, limit=3)
    first = asyncio.create_task(grouper.submit(1))
    await asyncio.sleep(0)  # the first group starts, alone, and waits
    rest = [asyncio.create_task(grouper.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    run.release.set()
    assert await first == 2
    assert [await t for t in rest] == [4, 6, 8, 10, 12]
    # At most `limit` a group, in arrival order.
    assert run.groups == [[1], [2, 3, 4], [5, 6]]


async def test_keys_and_distinct_requests_split_groups() -> None:
    run = Runner()
    run.release.clear()
    grouper: Grouper[object, object] = Grouper(
        run, limit=10, key=lambda r: int(str(r)) % 2, distinct=lambda r: r
    )
    busy = asyncio.create_task(grouper.submit(100))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(grouper.submit(n)) for n in (1, 2, 3, 1, 5)]
    await asyncio.sleep(0)
    run.release.set()
    await busy
    assert [await t for t in waiting] == [2, 4, 6, 2, 10]
    # The odd ones first (the oldest waiting is odd), the same request not twice in a group.
    assert run.groups == [[100], [1, 3, 5], [2], [1]]


async def test_each_caller_gets_its_own_failure() -> None:
    run = Runner()
    run.release.clear()
    grouper: Grouper[object, object] = Grouper(run, limit=10)
    busy = asyncio.create_task(grouper.submit(0))
    await asyncio.sleep(0)
    good = asyncio.create_task(grouper.submit(4))
    bad = asyncio.create_task(grouper.submit("bad"))
    await asyncio.sleep(0)
    run.release.set()
    await busy
    assert await good == 8
    with pytest.raises(ValueError, match="cannot bad"):
        await bad


async def test_a_failing_group_fails_its_callers_and_the_next_group_runs() -> None:
    calls: list[list[int]] = []

    async def run(requests: Sequence[int]) -> list[int]:
        calls.append(list(requests))
        if len(calls) == 1:
            await asyncio.sleep(0.01)
            raise RuntimeError("connection lost")
        return list(requests)

    grouper: Grouper[int, int] = Grouper(run, limit=10)
    first = asyncio.create_task(grouper.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(grouper.submit(2))
    with pytest.raises(RuntimeError, match="connection lost"):
        await first
    assert await second == 2
    assert calls == [[1], [2]]


async def test_a_caller_that_stops_waiting_does_not_stop_its_group() -> None:
    run = Runner()
    run.release.clear()
    grouper: Grouper[object, object] = Grouper(run, limit=10)
    busy = asyncio.create_task(grouper.submit(0))
    await asyncio.sleep(0)
    leaving = asyncio.create_task(grouper.submit(7))
    staying = asyncio.create_task(grouper.submit(8))
    await asyncio.sleep(0)
    leaving.cancel()
    run.release.set()
    await busy
    assert await staying == 16
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # Cancelled before its group started, it was left out of it.
    assert run.groups == [[0], [8]]


async def test_one_grouper_per_event_loop() -> None:
    made: list[Grouper[object, object]] = []

    def make() -> Grouper[object, object]:
        made.append(Grouper(Runner(), limit=2))
        return made[-1]

    per_loop: PerLoop[object, object] = PerLoop(make)
    assert per_loop() is per_loop()
    assert len(made) == 1
