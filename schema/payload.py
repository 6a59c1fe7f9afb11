"""Turning a mutation's expected refusals into its payload's typed errors."""

from collections.abc import Callable
from typing import TypeVar

from app.errors import InvalidArgument, InvalidId, NotFound, ValidationFailed

E = TypeVar("E")

# What payload errors are made of; FORBIDDEN and UNAUTHENTICATED are not among them, they stay
# top-level errors.
Refusal = NotFound | InvalidId | InvalidArgument | ValidationFailed
REFUSALS = (NotFound, InvalidId, InvalidArgument, ValidationFailed)


def payload_errors(
    exc: Refusal, make: Callable[[str, str, str | None], E], *, id_field: str
) -> list[E]:
    """`make(code, message, field)` per problem: NOT_FOUND for an unknown or malformed id
    (which look alike, so existence does not leak), INVALID for bad input."""
    if isinstance(exc, ValidationFailed):
        return [make("INVALID", m, f) for f, m in exc.problems]
    if isinstance(exc, InvalidArgument):
        return [make("INVALID", exc.message, exc.field)]
    return [make("NOT_FOUND", exc.message, exc.field or id_field)]
