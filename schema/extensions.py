"""Error shaping: expected errors keep their code, unexpected ones are masked and logged."""

import logging

from graphql import GraphQLError
from strawberry.extensions import MaskErrors

from app.errors import ErrorCode, PortalError

logger = logging.getLogger("portal.graphql")


def _is_expected(error: GraphQLError) -> bool:
    original = error.original_error
    # No original error: a syntax or validation error, which is the client's to see.
    return original is None or isinstance(original, PortalError | GraphQLError)


class ShapeErrors(MaskErrors):
    """Masks bugs (logged with their traceback) and gives every error an extensions.code."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda e: not _is_expected(e))

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        logger.error(
            "unexpected error in %s",
            ".".join(str(p) for p in error.path or ()),
            exc_info=error.original_error,
        )
        masked = super().anonymise_error(error)
        masked.extensions = {"code": ErrorCode.INTERNAL_SERVER_ERROR.value}
        return masked

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed = super()._process_errors(errors)
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
