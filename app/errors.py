"""Error codes, defined once, and the domain errors that carry them."""

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every code a client may see in `extensions.code` or a payload's `errors[].code`."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_CURSOR = "INVALID_CURSOR"
    # A feed cursor older than the outbox's retention: events after it may have been pruned.
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    INVALID_ID = "INVALID_ID"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    INVALID = "INVALID"
    INVALID_STATE = "INVALID_STATE"
    RECOVERY_DISABLED = "RECOVERY_DISABLED"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    # PostgreSQL or Redis is unreachable for now: retry after the `Retry-After` seconds.
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    # A webhook URL pointing somewhere the portal must not send requests (see app/urls.py).
    URL_NOT_ALLOWED = "URL_NOT_ALLOWED"
    # Refusals of the request itself, before any field is resolved.
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    BAD_REQUEST = "BAD_REQUEST"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    INVALID_TIME_RANGE = "INVALID_TIME_RANGE"
    INVALID_TIMEZONE = "INVALID_TIMEZONE"
    GATE_FAILED = "GATE_FAILED"


class PortalError(Exception):
    """An expected error: shown to the client with its code, never masked."""

    code: ErrorCode = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def extensions(self) -> dict[str, str]:
        """What a GraphQL error built from this one carries in `extensions`."""
        ext = {"code": self.code.value}
        if self.field is not None:
            ext["field"] = self.field
        return ext


class Unauthenticated(PortalError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(PortalError):
    code = ErrorCode.FORBIDDEN


class NotFound(PortalError):
    code = ErrorCode.NOT_FOUND


class InvalidArgument(PortalError):
    code = ErrorCode.INVALID_ARGUMENT


class InvalidCursor(PortalError):
    code = ErrorCode.INVALID_CURSOR


class CursorExpired(PortalError):
    code = ErrorCode.CURSOR_EXPIRED


class InvalidId(PortalError):
    code = ErrorCode.INVALID_ID


class VersionConflict(PortalError):
    code = ErrorCode.VERSION_CONFLICT


class ValidationFailed(PortalError):
    """One or more fields are invalid; `problems` lists (field, message)."""

    code = ErrorCode.INVALID

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


class UrlNotAllowed(PortalError):
    """A well-formed URL whose destination the portal must not send requests to."""

    code = ErrorCode.URL_NOT_ALLOWED


class InvalidState(PortalError):
    """The payment's state does not allow the action."""

    code = ErrorCode.INVALID_STATE


class RecoveryDisabled(PortalError):
    """The merchant's recovery is paused or switched off."""

    code = ErrorCode.RECOVERY_DISABLED


class GateFailed(PortalError):
    """A challenger has not beaten the current champion on a later held-out window."""

    code = ErrorCode.GATE_FAILED


class InvalidTimeRange(PortalError):
    """A statistics range that is empty, reversed, without offset or too long."""

    code = ErrorCode.INVALID_TIME_RANGE


class InvalidTimezone(PortalError):
    """A timezone name that is not in the IANA database."""

    code = ErrorCode.INVALID_TIMEZONE
