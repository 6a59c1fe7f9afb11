"""Custom scalars: 64-bit integers for money."""

from typing import NewType

import strawberry
from graphql import GraphQLError
from strawberry.types.scalar import ScalarDefinition

MAX_LONG = 2**63 - 1

Long = NewType("Long", int)


def _parse_long(value: object) -> int:
    """The integer a Long argument holds. A bad one is the client's error (GraphQLError,
    shown as it is), not a ValueError, which the error masking would take for a bug."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise GraphQLError("Long must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise GraphQLError("Long must be an integer") from None
    if not -MAX_LONG - 1 <= number <= MAX_LONG:
        raise GraphQLError("Long is outside the 64-bit range")
    return number


SCALAR_MAP: dict[object, ScalarDefinition] = {
    Long: strawberry.scalar(
        name="Long",
        description=(
            "A 64-bit signed integer (GraphQL Int is 32-bit); serialized as a JSON number. "
            "Used for amounts in minor units."
        ),
        serialize=int,
        parse_value=_parse_long,
    )
}
