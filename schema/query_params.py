"""A GraphQL input object read from URL query parameters, by the schema's own types.

An HTTP endpoint that takes the same filter as a GraphQL field (the payment exports take
`PaymentFilter`) reads it through here: each parameter is a field of the input type, named as
in GraphQL (`declineCategories`, `failedAfter`), and its value is coerced by that field's type
in the built schema (enum names, `DateTime`, `Long`), so the two cannot drift apart: a field
added to the input is a parameter at once, and a value GraphQL refuses is refused here too.
A list field takes the parameter repeated, or one value of comma-separated items.
"""

from collections.abc import Iterable
from typing import Any, TypeVar

import strawberry
from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLFloat,
    GraphQLInputObjectType,
    GraphQLInt,
    GraphQLScalarType,
    get_named_type,
    is_list_type,
    is_non_null_type,
    parse_value,
)

from app.errors import InvalidArgument

T = TypeVar("T")

# Scalars whose parse_value wants a JSON number or boolean, not the parameter's text.
_LITERAL_SCALARS = (GraphQLInt, GraphQLFloat, GraphQLBoolean)


def input_from_query(
    schema: strawberry.Schema,
    input_cls: type[T],
    params: Iterable[tuple[str, str]],
    *,
    ignore: frozenset[str] = frozenset(),
) -> T:
    """`input_cls` (a Strawberry input) from (name, value) pairs; InvalidArgument naming the
    parameter for an unknown name, a value the field's type refuses, or a repeated single
    value. Names in `ignore` belong to the endpoint, not the input."""
    definition = input_cls.__strawberry_definition__  # type: ignore[attr-defined]
    graphql_type = schema._schema.get_type(definition.name)
    if not isinstance(graphql_type, GraphQLInputObjectType):
        raise TypeError(f"{definition.name} is not an input type of the schema")
    python_names = {
        schema.config.name_converter.get_graphql_name(f): f.python_name for f in definition.fields
    }
    raw: dict[str, list[str]] = {}
    for name, value in params:
        if name in ignore:
            continue
        if name not in graphql_type.fields:
            known = ", ".join(sorted(graphql_type.fields))
            raise InvalidArgument(f"unknown parameter {name!r}; known: {known}", field=name)
        raw.setdefault(name, []).append(value)
    values: dict[str, Any] = {}
    for name, texts in raw.items():
        field_type = graphql_type.fields[name].type
        if is_non_null_type(field_type):
            field_type = field_type.of_type
        named = get_named_type(field_type)
        if is_list_type(field_type):
            items = [item.strip() for text in texts for item in text.split(",")]
            values[python_names[name]] = [_coerce(name, named, item) for item in items if item]
        elif len(texts) > 1:
            raise InvalidArgument(f"{name} takes one value, not {len(texts)}", field=name)
        else:
            values[python_names[name]] = _coerce(name, named, texts[0])
    return input_cls(**values)


def _coerce(name: str, named: Any, text: str) -> Any:
    if not isinstance(named, GraphQLScalarType | GraphQLEnumType):
        raise InvalidArgument(f"{name} cannot be given as a query parameter", field=name)
    try:
        if named in _LITERAL_SCALARS:
            result = named.parse_literal(parse_value(text))
        else:
            result = named.parse_value(text)
    except (GraphQLError, ValueError, TypeError) as error:
        message = error.message if isinstance(error, GraphQLError) else str(error)
        raise InvalidArgument(f"{name}: {message}", field=name) from error
    if result is None:
        raise InvalidArgument(f"{name}: {text!r} is not a valid value", field=name)
    return result
