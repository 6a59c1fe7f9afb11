"""Set-based SQL: many values bound as one array, many rows written in ONE statement.

An executemany runs its statement once per row, and with it every statement-level trigger
(the recovery rollups are such triggers), so batches of clean rows go through these instead.
The SQL text depends only on the table and the column names, so each shape is prepared once.
"""

import json
from collections.abc import Mapping, Sequence
from functools import cache
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


def _source(
    table: sa.Table,
    prefix: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """The rows as a derived table: one array per column, bound as `<prefix>_<column>` (with
    `rows`' values, or at execution when `rows` is None, so that several parts can share one
    statement). A JSONB column travels as text; `_value` casts it back."""
    arrays = []
    for name in columns:
        values = None
        if rows is not None:
            values = _array_values(table, name, [row[name] for row in rows])
        item = sa.Text() if _is_json(table, name) else table.c[name].type
        arrays.append(sa.bindparam(f"{prefix}_{name}", values, type_=postgresql.ARRAY(item)))
    return sa.func.unnest(*arrays).table_valued(*columns).render_derived()


def _is_json(table: sa.Table, name: str) -> bool:
    return isinstance(table.c[name].type, postgresql.JSONB)


def _array_values(table: sa.Table, name: str, values: list[Any]) -> list[Any]:
    if _is_json(table, name):
        return [None if v is None else json.dumps(v) for v in values]
    return values


def _value(table: sa.Table, source: Any, name: str) -> Any:
    if _is_json(table, name):
        return sa.cast(source.c[name], postgresql.JSONB)
    return source.c[name]


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
    source = _source(table, "rows", columns, rows)
    values = sa.select(*[_value(table, source, c) for c in columns])
    statement = sa.insert(table).from_select(columns, values)
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
        source = _source(table, "rows", names, group)
        statement = (
            sa.update(table)
            .where(table.c[key] == source.c[key])
            .values({name: _value(table, source, name) for name in names if name != key})
        )
        await session.execute(statement)


Rows = Sequence[Mapping[str, Any]]
# A part of `write_all`: insert or update, the table, its columns, and those of its columns
# whose rows all hold one value (bound once, not as an array).
_Shape = tuple[tuple[str, str, tuple[str, ...], frozenset[str]], ...]


def _part_value(
    table: sa.Table, source: Any, prefix: str, single: frozenset[str], column: str
) -> Any:
    """A column's value in a part: from the arrays' derived table, or its one bound value."""
    if column not in single:
        return _value(table, source, column)
    json = _is_json(table, column)
    bound = sa.bindparam(f"{prefix}_{column}", type_=sa.Text() if json else table.c[column].type)
    return sa.cast(bound, postgresql.JSONB) if json else bound


@cache
def _write_statement(shape: _Shape) -> Any:
    parts: list[Any] = []
    for i, (kind, name, columns, single) in enumerate(shape):
        table = SQLModel.metadata.tables[name]
        prefix = f"p{i}"
        source = _source(table, prefix, [c for c in columns if c not in single])
        if kind == "insert":
            values = sa.select(*[_part_value(table, source, prefix, single, c) for c in columns])
            parts.append(sa.insert(table).from_select(columns, values))
        else:
            parts.append(
                sa.update(table)
                .where(table.c.id == source.c.id)
                .values(
                    {c: _part_value(table, source, prefix, single, c) for c in columns if c != "id"}
                )
            )
    *ctes, last = parts
    return last.add_cte(*(part.cte(f"write_{i}") for i, part in enumerate(ctes)))


def _single(values: list[Any]) -> bool:
    """Whether every value is the same one (and of the same type: 1 is not True)."""
    first = values[0]
    kind = type(first)
    return all(v == first and type(v) is kind for v in values)


async def write_all(
    session: AsyncSession,
    inserts: Sequence[tuple[type[SQLModel], Rows]] = (),
    updates: Sequence[tuple[type[SQLModel], Rows]] = (),
) -> None:
    """INSERT and UPDATE the rows of several tables in ONE statement (each part a
    data-modifying CTE): one round trip, and each statement-level trigger fires once.

    Rows of one part set the same columns; an UPDATE matches on `id`, and a table is updated
    by one part at most, each row once. All parts see the database as it was before the
    statement, so none may read what another writes (foreign keys are checked at its end).
    A column whose rows all hold one value (of a part of several rows; never the first
    column, which stays an array and sets the part's row count) is bound once rather than as
    an array: the driver encodes every array element apart. Each shape (tables, columns and
    which are single) is built once.
    """
    shape: list[tuple[str, str, tuple[str, ...], frozenset[str]]] = []
    params: dict[str, Any] = {}
    updated: set[str] = set()
    for kind, model_rows in (("insert", inserts), ("update", updates)):
        for model, rows in model_rows:
            if not rows:
                continue
            table, columns = table_of(model), _columns(rows)
            if kind == "update":
                if table.name in updated:
                    raise ValueError(f"{table.name} is updated by one part at most")
                updated.add(table.name)
            single: set[str] = set()
            for position, name in enumerate(columns):
                values = _array_values(table, name, [row[name] for row in rows])
                key = f"p{len(shape)}_{name}"
                if position > 0 and name != "id" and len(values) > 1 and _single(values):
                    single.add(name)
                    params[key] = values[0]
                else:
                    params[key] = values
            shape.append((kind, table.name, tuple(columns), frozenset(single)))
    if shape:
        await session.execute(_write_statement(tuple(shape)), params)
