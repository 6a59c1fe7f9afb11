"""Relay connections: one generic page of nodes with their cursors, and its paging arguments.

A connection type is declared as `class PaymentConnection(Connection[Payment])` under
`@connection(...)`, which publishes it with its `PaymentEdge`, each described in its own words.
"""

import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, Self, TypeVar

import strawberry
from strawberry.types.nodes import SelectedField, Selection
from typing_extensions import get_original_bases

from app.services.counting import COUNT_LIMIT
from resolvers.counts import Counter
from resolvers.pagination import Page
from schema.described import object_type, subclass

N = TypeVar("N")
M = TypeVar("M")
C = TypeVar("C", bound=type)

FirstArg = Annotated[int | None, strawberry.argument(description="Page size, 1-100.")]
AfterArg = Annotated[str | None, strawberry.argument(description="Cursor to follow.")]


@strawberry.type(description="Where a page ends and whether another follows.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="Whether another page follows.")
    end_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")


@dataclass(kw_only=True)
class Edge(Generic[N]):
    """A node and its cursor."""

    cursor: str
    node: N


@dataclass(kw_only=True)
class Connection(Generic[N]):
    """A page of nodes, and how to count all of them."""

    edges: list[Edge[N]]
    page_info: PageInfo
    count: strawberry.Private[Counter]

    @classmethod
    def from_page(cls, page: Page[M], node: Callable[[M], N], count: Counter) -> Self:
        """The page's rows as nodes (made by `node`), with their cursors; `count` reads the
        whole list's count, only if asked for."""
        return cls(
            edges=[Edge(cursor=cursor, node=node(row)) for cursor, row in page.items],
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
            count=count,
        )


async def _total_count(root: Connection[object]) -> int:
    return (await root.count()).value


async def _is_estimate(root: Connection[object]) -> bool:
    return (await root.count()).estimate


COUNT_DESCRIPTION = (
    "How many {nouns} the whole list holds, every page together: exact up to {limit:,}; "
    "beyond, PostgreSQL's estimate, and `isEstimate` is true. Read only when asked for."
)


def selects(fields: Sequence[Selection], *path: str) -> bool:
    """Whether the field being resolved (`info.selected_fields`) may ask for the field at
    `path` below it, through fragments too. Directives are not evaluated: a field under
    `@include(if: $x)` counts as asked for."""
    return any(
        _selects_path(field.selections, path)
        for field in fields
        if isinstance(field, SelectedField)
    )


def _selects_path(selections: Sequence[Selection], path: Sequence[str]) -> bool:
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name != path[0]:
                continue
            if len(path) == 1 or _selects_path(selection.selections, path[1:]):
                return True
        elif _selects_path(selection.selections, path):
            return True
    return False


def connection(description: str, *, edge: str, noun: str, nouns: str) -> Callable[[C], C]:
    """Publishes a `XConnection(Connection[X])` class and its `XEdge`: `description` and `edge`
    describe the two types, `noun` and `nouns` name one node and several in their fields."""

    def publish(cls: C) -> C:
        (base,) = get_original_bases(cls)
        (node,) = base.__args__
        name = cls.__name__.removesuffix("Connection")
        edge_type = object_type(
            subclass(Edge, f"{name}Edge", cls.__module__),
            edge,
            {
                "cursor": (
                    str,
                    strawberry.field(description=f"Opaque keyset cursor of this {noun}."),
                ),
                "node": (node, strawberry.field(description=f"The {noun}.")),
            },
        )
        fields = {
            "edges": (
                types.GenericAlias(list, (edge_type,)),
                strawberry.field(description=f"The {nouns} of this page."),
            ),
            "page_info": (PageInfo, strawberry.field(description="Paging information.")),
            "total_count": (
                int,
                strawberry.field(
                    resolver=_total_count,
                    description=COUNT_DESCRIPTION.format(nouns=nouns, limit=COUNT_LIMIT),
                ),
            ),
            "is_estimate": (
                bool,
                strawberry.field(
                    resolver=_is_estimate,
                    description=(
                        f"Whether `totalCount` is an estimate: true when the list holds more "
                        f"than {COUNT_LIMIT:,} {nouns}."
                    ),
                ),
            ),
        }
        return object_type(cls, description, fields)

    return publish
