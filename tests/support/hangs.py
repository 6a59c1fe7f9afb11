"""A hang fails fast and says where: database waits limited, every task's stack on a timeout."""

import asyncio
import io
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest_timeout  # type: ignore[import-untyped]

# A test's connection holds its transaction open for the whole test: a wait on a lock that
# another connection (code under test with its own pool, a helper process) holds, or on a lock
# that connection waits for, would hang the run without these. They fail the statement
# instead, with PostgreSQL's error naming it, well inside the per-test time limit.
DATABASE_TIMEOUTS = {"lock_timeout": "60s", "statement_timeout": "90s"}

_loop: asyncio.AbstractEventLoop | None = None


async def limit_waits(url: str) -> None:
    """Give every later connection to the database at `url` the DATABASE_TIMEOUTS.

    Set on the database rather than on one engine, so they hold for whoever connects.
    """
    name = url.partition("?")[0].rsplit("/", 1)[1]
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        for setting, value in DATABASE_TIMEOUTS.items():
            await conn.execute(f"ALTER DATABASE {quoted} SET {setting} = '{value}'")
    finally:
        await conn.close()


def watch(loop: asyncio.AbstractEventLoop) -> None:
    """Dump this loop's tasks too when a test times out.

    A test stuck on an `await` shows in a thread stack only as the loop's `select()`; the
    coroutine stacks of its tasks say which await it is (a lock, a query, an executor job).
    """
    global _loop
    _loop = loop
    if getattr(pytest_timeout.dump_stacks, "_with_tasks", False):
        return
    threads: Callable[[Any], None] = pytest_timeout.dump_stacks

    def dump(terminal: Any) -> None:
        threads(terminal)
        for title, stack in task_stacks():
            terminal.sep("~", title=title)
            terminal.write(stack)

    dump._with_tasks = True  # type: ignore[attr-defined]
    pytest_timeout.dump_stacks = dump


def task_stacks() -> list[tuple[str, str]]:
    """(title, stack) of each unfinished task of the watched loop.

    Read from the timer thread while the loop is blocked, on the way to ending the process:
    the task set may change under us, so a second try is allowed before giving up.
    """
    if _loop is None:
        return []
    for _ in range(2):
        try:
            tasks = [t for t in asyncio.all_tasks(_loop) if not t.done()]
            break
        except RuntimeError:  # the set changed size while iterating
            continue
    else:
        return []
    found: list[tuple[str, str]] = []
    for task in tasks:
        out = io.StringIO()
        task.print_stack(file=out)
        found.append((f"Task {task.get_name()}", out.getvalue()))
    return found
