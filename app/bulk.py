"""Set-based SQL: many values bound as one array, many rows written in ONE statement.

An executemany runs its statement once per row, and with it every statement-level trigger
(the recovery rollups are such triggers), so batches of clean rows go through these instead.
The SQL text depends only on the table and the column names, so each shape is prepared once.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel


def any_array(values: Sequence[Any], item_type: Any) -> Any:
    """`= ANY(:array)`: one bound array instead of an IN list whose length changes the SQL
    text, so the driver prepares each statement once rather than once per batch size.
    Off the primary key it relies on current statistics to pick the matching index: with
    none, the planner may scan a merchant's rows filtering each against the whole array."""
    return sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(item_type)))


def unnest(values: Sequence[Any], item_type: Any) -> Any:
    """A one-column derived table of the values, to join on: the planner drives an index
    lookup per value instead of testing every row against the whole array."""
    array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(item_type))
    return sa.func.unnest(array).table_valued("value").render_derived()


def table_of(model: type[SQLModel]) -> sa.Table:
    table = sa.inspect(model).local_table
    if not isinstance(table, sa.Table):  # pragma: no cover - every model here maps a table
        raise TypeError(f"{model.__name__} does not map a table")
    return table


def _source(table: sa.Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Any:
    arrays = [
        sa.bindparam(
            f"rows_{name}",
            [row[name] for row in rows],
            type_=postgresql.ARRAY(table.c[name].type),
        )
        for name in columns
    ]
    return sa.func.unnest(*arrays).table_valued(*columns).render_derived()


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(rows[0])
    for row in rows:
        if row.keys() != rows[0].keys():
            raise ValueError("every row of one bulk write must set the same columns")
    return columns


async def insert_rows(
    session: AsyncSession, model: type[SQLModel], rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT the rows (all with the same keys) in one statement; columns left out get their
    server defaults."""
    if not rows:
        return
    table = table_of(model)
    columns = _columns(rows)
    source = _source(table, columns, rows)
    statement = sa.insert(table).from_select(columns, sa.select(*[source.c[c] for c in columns]))
    await session.execute(statement)


async def update_rows(
    session: AsyncSession,
    model: type[SQLModel],
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str = "id",
) -> None:
    """UPDATE the rows matched on `key`, as if applied one after another: rows for the same
    key merge (later values win), then one statement per distinct set of columns."""
    table = table_of(model)
    merged: dict[Any, dict[str, Any]] = {}
    for row in rows:
        merged.setdefault(row[key], {}).update(row)
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in merged.values():
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for names, group in groups.items():
        source = _source(table, names, group)
        statement = (
            sa.update(table)
            .where(table.c[key] == source.c[key])
            .values({name: source.c[name] for name in names if name != key})
        )
        await session.execute(statement)
