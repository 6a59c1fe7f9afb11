"""Strawberry object types whose fields are given at run time, each with its description.

The generic shapes (a connection's edges, a mutation's errors) are one class each; the type each
use publishes (`PaymentEdge`, `ConnectProcessorError`) is made here from that class, under its
own name and with descriptions in its own words.
"""

from collections.abc import Mapping
from typing import TypeVar

import strawberry
from strawberry.types.field import StrawberryField

T = TypeVar("T", bound=type)

# A field: its type and its `strawberry.field(...)` (which carries the description).
FieldSpec = tuple[object, StrawberryField]


def subclass(base: type, name: str, module: str) -> type:
    """An empty subclass of `base` named `name`, as if written in `module`."""
    return type(name, (base,), {"__module__": module})


def object_type(cls: T, description: str, fields: Mapping[str, FieldSpec]) -> T:
    """`cls` as a Strawberry object type, with `fields` added after its own, in order."""
    for name, (annotation, field) in fields.items():
        cls.__annotations__[name] = annotation
        setattr(cls, name, field)
    return strawberry.type(cls, description=description)
