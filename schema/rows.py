"""Building a Strawberry object from the row (or core value) it shows.

    return from_row(cls, row, id=cls.global_id(row.id), country=row.issuer_country, _row=row)

fills each field the type declares from the row's attribute of the same name, except the fields
given: ids (a global id is not the row's key), renamed or computed fields, private fields. A
column the type does not declare is never read, so a sealed credential or a token hash cannot
reach the API unless a field is declared for it.
"""

from typing import TypeVar

import strawberry
from strawberry.types.base import StrawberryOptional, get_object_definition

T = TypeVar("T")


def _is_id(field_type: object) -> bool:
    if isinstance(field_type, StrawberryOptional):
        field_type = field_type.of_type
    return field_type is strawberry.ID


# Per type, read once: its fields without a resolver, each with whether it holds an id.
_DATA_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _data_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    if cls not in _DATA_FIELDS:
        _DATA_FIELDS[cls] = tuple(
            (field.python_name, _is_id(field.type))
            for field in get_object_definition(cls, strict=True).fields
            if field.base_resolver is None
        )
    return _DATA_FIELDS[cls]


def from_row(cls: type[T], row: object, /, **given: object) -> T:
    """`cls` with the fields in `given`, the rest of its declared data fields (those without a
    resolver) read from `row`'s same-named attributes. An id field must be given."""
    values = dict(given)
    for name, is_id in _data_fields(cls):
        if name in values:
            continue
        if is_id:
            raise TypeError(f"{cls.__name__}.{name}: give the id; it is not the row's key")
        values[name] = getattr(row, name)
    return cls(**values)
