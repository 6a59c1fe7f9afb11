"""Error shaping: expected errors keep their code, outages say so, bugs are masked and logged."""

import logging

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors
from strawberry.types import ExecutionContext

from app.errors import ErrorCode, PortalError
from app.outages import Dependency, outage_of, unavailable_message

logger = logging.getLogger("portal.graphql")


def _is_expected(error: GraphQLError) -> bool:
    original = error.original_error
    # No original error: a syntax or validation error, which is the client's to see.
    return original is None or isinstance(original, PortalError | GraphQLError)


def _code_of(error: GraphQLError) -> str:
    original = error.original_error
    if isinstance(original, PortalError):
        return str(original.code)
    return ErrorCode.GRAPHQL_VALIDATION_FAILED.value if original is None else "GRAPHQL_ERROR"


def _outage(error: GraphQLError) -> Dependency | None:
    original = error.original_error
    return None if original is None or _is_expected(error) else outage_of(original)


def outage_in(error: GraphQLError) -> tuple[Dependency, BaseException] | None:
    """The dependency and the exception behind a field error that `ShapeErrors` marked
    SERVICE_UNAVAILABLE, for the one log line the HTTP view writes per failed request."""
    original = error.original_error
    if (error.extensions or {}).get("code") != ErrorCode.SERVICE_UNAVAILABLE.value:
        return None
    if original is None:
        return None
    dependency = outage_of(original)
    return None if dependency is None else (dependency, original)


class ShapeErrors(MaskErrors):
    """Masks bugs (logged with their traceback) and gives every error an extensions.code.

    A field that failed because PostgreSQL or Redis is unreachable is not a bug: its error
    says SERVICE_UNAVAILABLE with a retry time instead of INTERNAL_SERVER_ERROR, and is not
    logged here (the HTTP view answers 503 and logs the request once, however many fields
    failed). The original exception stays attached for that log line; it is never serialized.
    """

    def __init__(self, *, retry_after_seconds: int) -> None:
        super().__init__(should_mask_error=lambda e: not _is_expected(e))
        self._retry_after = retry_after_seconds

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        logger.error(
            "unexpected error in %s",
            ".".join(str(p) for p in error.path or ()),
            exc_info=error.original_error,
        )
        masked = super().anonymise_error(error)
        masked.extensions = {"code": ErrorCode.INTERNAL_SERVER_ERROR.value}
        return masked

    def _unavailable(self, error: GraphQLError, dependency: Dependency) -> GraphQLError:
        return GraphQLError(
            unavailable_message(dependency, self._retry_after),
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=error.original_error,
            extensions={
                "code": ErrorCode.SERVICE_UNAVAILABLE.value,
                "retryAfterSeconds": self._retry_after,
            },
        )

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed = []
        for error in errors:
            dependency = _outage(error)
            if dependency is not None:
                processed.append(self._unavailable(error, dependency))
            elif self.should_mask_error(error):
                processed.append(self.anonymise_error(error))
            else:
                processed.append(error)
        for error in processed:
            if not error.extensions or "code" not in error.extensions:
                original = error.original_error
                if isinstance(original, PortalError):
                    code = original.code.value
                elif original is None:
                    code = ErrorCode.GRAPHQL_VALIDATION_FAILED.value
                else:
                    code = ErrorCode.INVALID_ARGUMENT.value
                error.extensions = {**(error.extensions or {}), "code": code}
        return processed


class PortalSchema(strawberry.Schema):
    """Strawberry's schema, except for what Strawberry logs of each field error (at ERROR,
    with its traceback). A client's own mistake (a validation error, a bad argument, a
    forbidden field: an error with its code) is no fault of the portal's: one INFO line each.
    An error caused by an outage is left out: during one, every request would log a traceback
    per failed field, where the HTTP view writes one warning line. Bugs keep the ERROR and
    the traceback."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            if _is_expected(error):
                code = (error.extensions or {}).get("code") or _code_of(error)
                logger.info("client error %s: %s", code, error.message.split("\n", 1)[0])
        bugs = [e for e in errors if not _is_expected(e) and _outage(e) is None]
        if bugs:
            super().process_errors(bugs, execution_context)
