"""The Node interface: every entity reachable by an opaque global id."""

import strawberry


@strawberry.interface(description="An object with an opaque, globally unique id.")
class Node:
    id: strawberry.ID = strawberry.field(description="Opaque global id; use with `node(id:)`.")
