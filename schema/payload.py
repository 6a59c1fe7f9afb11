"""Turning a mutation's expected refusals into its payload's typed errors."""

from collections.abc import Callable
from typing import TypeVar

from app.errors import InvalidArgument, InvalidId, NotFound, UrlNotAllowed, ValidationFailed

E = TypeVar("E")

# What payload errors are made of; FORBIDDEN and UNAUTHENTICATED are not among them, they stay
# top-level errors.
# A mutation whose code enum lacks URL_NOT_ALLOWED never raises UrlNotAllowed.
Refusal = NotFound | InvalidId | InvalidArgument | ValidationFailed | UrlNotAllowed
REFUSALS = (NotFound, InvalidId, InvalidArgument, ValidationFailed, UrlNotAllowed)


def payload_errors(
    exc: Refusal, make: Callable[[str, str, str | None], E], *, id_field: str
) -> list[E]:
    """`make(code, message, field)` per problem: NOT_FOUND for an unknown or malformed id
    (which look alike, so existence does not leak), INVALID for bad input, URL_NOT_ALLOWED for
    a URL pointing where the portal must not send requests."""
    if isinstance(exc, ValidationFailed):
        return [make("INVALID", m, f) for f, m in exc.problems]
    if isinstance(exc, UrlNotAllowed):
        return [make(exc.code.value, exc.message, exc.field)]
    if isinstance(exc, InvalidArgument):
        return [make("INVALID", exc.message, exc.field)]
    return [make("NOT_FOUND", exc.message, exc.field or id_field)]
