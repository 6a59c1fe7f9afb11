"""What a batch of transitions writes, held and then written in one statement.

Carrying out a transition changes its payment (state, schedule, reason), may start an attempt,
and adds a timeline row and an outbox event. Through the ORM, a batch of 500 decisions costs
500 row objects of each kind and an UPDATE per payment, each firing the statement-level rollup
triggers. Collected here instead, the batch is written by `flush` as one statement: one
`UPDATE … FROM unnest` per changed table and one `INSERT … SELECT unnest` per new-row table
(`app.bulk.write_all`).

Rows already in the session (the payments and attempts a batch loaded, locked) are changed
as usual and `touch`ed; `flush` writes the columns that changed and marks them unchanged, so
the session's own flush does not write them again. New rows are plain column values.
"""

import uuid
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import SQLModel

from app.bulk import table_of, write_all


class Writes:
    """Rows to insert and loaded rows changed, until `flush`."""

    def __init__(self) -> None:
        self._new: dict[type[SQLModel], list[dict[str, Any]]] = {}
        self._touched: dict[type[SQLModel], dict[uuid.UUID, SQLModel]] = {}

    def insert(self, model: type[SQLModel], row: dict[str, Any]) -> None:
        """A new row (every row of one model sets the same columns)."""
        self._new.setdefault(model, []).append(row)

    def insert_object(self, obj: SQLModel) -> None:
        """A new row from a model object that is not (and will not be) in the session."""
        table = table_of(type(obj))
        self.insert(type(obj), {c.key: getattr(obj, c.key) for c in table.columns})

    def touch(self, obj: SQLModel) -> None:
        """A row loaded in the session whose changed columns the flush writes."""
        key = getattr(obj, "id")  # noqa: B009 - every model written here has an id
        self._touched.setdefault(type(obj), {})[key] = obj

    def __bool__(self) -> bool:
        return bool(self._new) or bool(self._touched)

    async def flush(
        self, session: AsyncSession, *, only: tuple[type[SQLModel], ...] | None = None
    ) -> None:
        """Write everything held in one statement; the held rows are then forgotten. With
        `only`, just the rows of those models are written and forgotten; the rest stay held
        (the caller keeps the session from flushing them meanwhile)."""
        updates: list[tuple[type[SQLModel], list[dict[str, Any]]]] = []
        written: list[tuple[SQLModel, list[str]]] = []
        touched = {m: o for m, o in self._touched.items() if only is None or m in only}
        for model, objects in touched.items():
            changed = _changed_columns(objects.values())
            if not changed:
                continue
            rows = [{"id": k, **_values(o, changed)} for k, o in objects.items()]
            updates.append((model, rows))
            written += [(o, changed) for o in objects.values()]
        inserts = [(m, rows) for m, rows in self._new.items() if only is None or m in only]
        self._new = {m: rows for m, rows in self._new.items() if only is not None and m not in only}
        self._touched = {m: o for m, o in self._touched.items() if m not in touched}
        await write_all(session, inserts, updates)
        for obj, columns in written:
            for name in columns:
                # Written above: the session's flush must not write it again.
                set_committed_value(obj, name, getattr(obj, name))


def _values(obj: SQLModel, columns: list[str]) -> dict[str, Any]:
    """The columns' current values, read from the object's own dict (what the attributes
    return for loaded columns, without the descriptor); an unloaded one through the
    attribute."""
    held = obj.__dict__
    return {c: held[c] if c in held else getattr(obj, c) for c in columns}


def _changed_columns(objects: Any) -> list[str]:
    """The columns set on any of the objects since they were loaded, in the mapper's order.
    The rows are locked by the caller, so a column written back unchanged (set to the value it
    held, or changed on another row of the batch only) keeps the value it holds."""
    changed: set[str] = set()
    order: list[str] = []
    for obj in objects:
        state = inspect(obj)
        if not order:
            order = [a.key for a in state.mapper.column_attrs]
        changed.update(state.committed_state)
    return [name for name in order if name in changed]
