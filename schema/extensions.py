"""Error shaping: expected errors keep their code, outages say so, bugs are masked and logged."""

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import strawberry
from graphql import ASTValidationRule, DocumentNode, GraphQLError, GraphQLSchema, parse
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext

from app.errors import ErrorCode, PortalError
from app.outages import Dependency, outage_of, unavailable_message

logger = logging.getLogger("portal.graphql")


def _is_expected(error: GraphQLError) -> bool:
    original = error.original_error
    # No original error: a syntax or validation error, which is the client's to see.
    return original is None or isinstance(original, PortalError | GraphQLError)


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


class DocumentCache:
    """Parsed and validated documents by query text: what every request of a known query
    would otherwise redo. Parsing has the token limit; validation runs the specified rules,
    Strawberry's own and the portal's guards (depth, aliases, introspection). Only documents
    that parse are kept, with their validation errors (an invalid query is refused from the
    cache too); the least recently used go past `maxsize`.
    """

    def __init__(
        self, rules: Sequence[type[ASTValidationRule]], *, max_tokens: int, maxsize: int = 512
    ) -> None:
        self.rules = tuple(rules)
        self.max_tokens = max_tokens
        self._maxsize = maxsize
        self._entries: OrderedDict[str, tuple[DocumentNode, list[GraphQLError]]] = OrderedDict()
        # Requests run on one event loop, but a cache shared across threads must not tear.
        self._lock = threading.Lock()

    def prepared(
        self, schema: GraphQLSchema, query: str, rules: tuple[type[ASTValidationRule], ...]
    ) -> tuple[DocumentNode, list[GraphQLError]] | None:
        """The document and its validation errors against `schema` under `rules` (the same
        on every call: one schema's, its execution context's rules, which `PreparedDocuments`
        extends with `self.rules`); None when it does not parse (Strawberry then parses it
        again and reports the syntax error in its own words)."""
        with self._lock:
            entry = self._entries.get(query)
            if entry is not None:
                self._entries.move_to_end(query)
                return entry
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError:
            return None
        entry = (document, validate_document(schema, document, rules))
        with self._lock:
            self._entries[query] = entry
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
        return entry


class PreparedDocuments(SchemaExtension):
    """Hands Strawberry a request's document parsed and validated from `DocumentCache`, in one
    hook (in place of ParserCache, ValidationCache, AddValidationRules and MaxTokensLimiter,
    whose four hooks and per-request hashing of the whole document cost more than the rest of
    a small query). A query that does not parse goes through Strawberry's own parsing, with
    the same token limit and rules."""

    def __init__(self, cache: DocumentCache) -> None:
        super().__init__()
        self._cache = cache

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self._cache.max_tokens
        rules = (*context.validation_rules, *self._cache.rules)
        context.validation_rules = rules
        if context.query and context.graphql_document is None:
            prepared = self._cache.prepared(context.schema._schema, context.query, rules)
            if prepared is not None:
                document, errors = prepared
                context.graphql_document = document
                # A list, even empty, tells Strawberry that validation has run.
                context.pre_execution_errors = errors
        yield


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
    """Strawberry's schema, except that Strawberry's own log of each field error (at ERROR,
    with its traceback) leaves out errors caused by an outage: during one, every request
    would log a traceback per failed field, where the HTTP view writes one warning line."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        super().process_errors([e for e in errors if _outage(e) is None], execution_context)
