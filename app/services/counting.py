"""Counting a list's rows at a bounded cost: exact up to a limit, PostgreSQL's estimate beyond.

A connection's `totalCount` must not cost a scan of a merchant's whole history: each count
reads at most `limit + 1` rows (`SELECT count(*) FROM (… LIMIT limit + 1)`), and a list longer
than that is counted by the planner's row estimate of the same query (`EXPLAIN`), marked as an
estimate. Many counts (one per parent of a nested list) are one statement each way.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

# Lists up to this long are counted exactly.
COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class Count:
    """How many rows a list holds: exact, or (beyond the limit) the planner's estimate."""

    value: int
    estimate: bool


async def bounded_counts(
    session: AsyncSession, queries: Sequence[Any], *, limit: int = COUNT_LIMIT
) -> list[Count]:
    """The count of each query's rows, in order. Each query selects the rows to count (any
    columns) and must name its scope in its own WHERE clause: the estimate's `EXPLAIN` is
    sent as text, outside the session's tenancy criteria."""
    if not queries:
        return []
    branches = [
        select(
            literal(i, Integer).label("i"),
            select(func.count())
            .select_from(query.limit(limit + 1).subquery())
            .scalar_subquery()
            .label("n"),
        )
        for i, query in enumerate(queries)
    ]
    statement: Any = branches[0] if len(branches) == 1 else union_all(*branches)
    exact = {int(i): int(n) for i, n in (await session.execute(statement)).all()}
    over = [i for i in range(len(queries)) if exact[i] > limit]
    estimates = await _estimates(session, [queries[i] for i in over])
    counts = [Count(exact[i], estimate=False) for i in range(len(queries))]
    for i, estimate in zip(over, estimates, strict=True):
        # The planner may guess low; the list holds more than `limit` rows for certain.
        counts[i] = Count(max(estimate, limit + 1), estimate=True)
    return counts


async def _estimates(session: AsyncSession, queries: Sequence[Any]) -> list[int]:
    """The planner's row estimate of each query, from one `EXPLAIN` of them all."""
    if not queries:
        return []
    dialect = (await session.connection()).dialect
    statement: Any = queries[0] if len(queries) == 1 else union_all(*list(queries))
    sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    # Sent to the driver as it is: the literal values may hold anything, a `:word` included,
    # which `text()` would read as a bind parameter.
    connection = await session.connection()
    raw = (await connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql)).scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    if len(queries) == 1:
        return [int(plan["Plan Rows"])]
    children = plan.get("Plans", []) if plan.get("Node Type") == "Append" else []
    if len(children) == len(queries):
        return [int(child["Plan Rows"]) for child in children]
    # The planner reshaped the union (it may drop a branch it proves empty): one each.
    return [(await _estimates(session, [query]))[0] for query in queries]
