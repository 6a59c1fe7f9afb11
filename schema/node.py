"""The Node interface, and the table of node types behind `node(id:)`."""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import strawberry
from strawberry.dataloader import DataLoader

from resolvers.context import Context
from resolvers.ids import decode_id, encode_id
from resolvers.loaders import Loaders

M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)


@strawberry.interface(description="An object with an opaque, globally unique id.")
class Node:
    id: strawberry.ID = strawberry.field(description="Opaque global id; use with `node(id:)`.")

    @classmethod
    def global_id(cls, key: uuid.UUID) -> strawberry.ID:
        """The global id of this type's object `key`, naming the type by its class (its GraphQL
        name, which `node(id:)` looks it up by)."""
        return strawberry.ID(encode_id(cls.__name__, key))


class FromModel(Protocol[M_contra]):
    """A node type built from its database row."""

    @classmethod
    def from_model(cls, row: M_contra) -> Node: ...


@dataclass(frozen=True)
class NodeType:
    """A type `node(id:)` answers with: its class and how to fetch one by key."""

    cls: type
    fetch: Callable[[Loaders, uuid.UUID], Awaitable[Node | None]]


def node_type(
    cls: type[FromModel[M]], loader: Callable[[Loaders], DataLoader[uuid.UUID, M | None]]
) -> NodeType:
    """`cls`, fetched by `loader` (so within the caller's scope) and built from its row."""

    async def fetch(loaders: Loaders, key: uuid.UUID) -> Node | None:
        row = await loader(loaders).load(key)
        return None if row is None else cls.from_model(row)

    return NodeType(cls, fetch)


class NodeTypes:
    """Every node type, by name: what a global id may name, and the schema's Node types."""

    def __init__(self, *types: NodeType) -> None:
        self._by_name = {t.cls.__name__: t for t in types}

    @property
    def classes(self) -> list[type]:
        return [t.cls for t in self._by_name.values()]

    async def fetch(self, ctx: Context, global_id: str) -> Node | None:
        """The node a global id names; null when it is not visible to the caller."""
        ctx.require_principal()
        type_name, key = decode_id(global_id, expected=self._by_name.keys())
        return await self._by_name[type_name].fetch(ctx.loaders, key)
