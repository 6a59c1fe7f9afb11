"""Schema extensions and execution: documents prepared once, a short way through plain leaf
fields, and error shaping (expected errors keep their code, outages say so, bugs are masked
and logged)."""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property, lru_cache
from typing import Any, cast

import strawberry
from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
    parse,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.pyutils import Path, gather_with_cancel
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext, validate_document
from strawberry.schema.schema_converter import CustomGraphQLEnumType, GraphQLCoreConverter
from strawberry.types import ExecutionContext
from strawberry.types import ExecutionResult as StrawberryExecutionResult
from strawberry.types.field import StrawberryField

from app.errors import ErrorCode, PortalError
from app.outages import Dependency, outage_of, unavailable_message

logger = logging.getLogger("portal.graphql")

_PLAIN_RESULTS = (GraphQLExecutionResult, StrawberryExecutionResult)


def _is_expected(error: GraphQLError) -> bool:
    original = error.original_error
    # No original error: a syntax or validation error, which is the client's to see.
    return original is None or isinstance(original, PortalError | GraphQLError)


def _code_of(error: GraphQLError) -> str:
    """The code of an error that carries none yet: its own when the portal raised it, a
    validation failure when GraphQL itself refused the document, else a bad argument."""
    original = error.original_error
    if isinstance(original, PortalError):
        return original.code.value
    if original is None:
        return ErrorCode.GRAPHQL_VALIDATION_FAILED.value
    return ErrorCode.INVALID_ARGUMENT.value


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

    def on_operation(self) -> Iterator[None]:
        """MaskErrors' hook, with the plain results every query and mutation produce handled
        without its runtime Protocol check (a slow `isinstance` on every request)."""
        self._stream_result_processed = False
        yield
        if self._stream_result_processed:
            return
        result = self.execution_context.result
        if type(result) in _PLAIN_RESULTS:
            if result.errors:  # type: ignore[union-attr]
                result.errors = self._process_errors(result.errors)  # type: ignore[union-attr]
        elif isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult):
            self._process_result(result)
        elif initial_result := getattr(result, "initial_result", None):
            self._process_result(initial_result)

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
                error.extensions = {**(error.extensions or {}), "code": _code_of(error)}
        return processed


# What a leaf field reads, when it reads an attribute and nothing else: the attribute's name,
# how Strawberry reads it, how the leaf type coerces it, and whether null is an error.
_Leaf = tuple[str, Callable[[Any, str], Any], Callable[[Any], Any], bool]


def _enum_coercion(kind: CustomGraphQLEnumType) -> Callable[[Any], Any]:
    """Strawberry's coercion of an enum member (the first name whose value matches), by one
    lookup instead of a walk through the values; anything else goes to the type itself."""
    names: dict[Any, str] = {}
    for name, value in kind.values.items():
        names.setdefault(value.value, name)
    wrapped, coerce = kind.wrapped_cls, kind.coerce_output_value

    def coerce_member(member: Any) -> Any:
        if isinstance(member, wrapped):
            name = names.get(member.value)
            if name is not None:
                return name
        return coerce(member)

    return coerce_member


@lru_cache(maxsize=1024)
def _plain_leaves(parent: GraphQLObjectType) -> dict[str, _Leaf]:
    """The fields of `parent` that Strawberry resolves by reading an attribute (no resolver,
    no field extension, no permission) and whose type is a scalar or an enum, by name."""
    found: dict[str, _Leaf] = {}
    for name, field in parent.fields.items():
        definition = _basic(field)
        if definition is None:
            continue
        kind, non_null = field.type, False
        if isinstance(kind, GraphQLNonNull):
            kind, non_null = kind.of_type, True
        coerce: Callable[[Any], Any]
        if isinstance(kind, CustomGraphQLEnumType):
            coerce = _enum_coercion(kind)
        elif isinstance(kind, GraphQLScalarType | GraphQLEnumType):
            coerce = kind.coerce_output_value
        else:
            continue
        found[name] = (definition.python_name, definition.default_resolver, coerce, non_null)
    return found


# A selection's plain leaves (by response name) and its other fields.
_Plan = tuple[list[tuple[str, _Leaf]], dict[str, Any]]

# What a field of objects reads, when it reads an attribute and nothing else: the attribute's
# name, how Strawberry reads it, the object type, whether it is a list of (non-null) objects,
# and whether null is an error.
_Branch = tuple[str, Callable[[Any, str], Any], GraphQLObjectType, bool, bool]
# A value the short way does not complete: graphql-core's way takes it from the start.
_UNUSUAL = object()
# An object's selection when every field of it, to the leaves, reads an attribute and nothing
# else (`PortalExecutor._tree`): per response name, its leaf (`_Leaf`) or its branch (the
# attribute, how it is read, whether a list, whether null is an error, and the objects' own
# tree).
_Tree = list[
    tuple[str, "_Leaf | None", "tuple[str, Callable[[Any, str], Any], bool, bool, _Tree] | None"]
]


def _basic(field: Any) -> StrawberryField | None:
    """The Strawberry field behind a GraphQL field that reads an attribute and nothing else
    (no resolver, no field extension, no permission, no arguments), or None."""
    definition = (field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    resolve = field.resolve
    if not isinstance(definition, StrawberryField) or resolve is None:
        return None
    if not definition.is_basic_field or resolve.__name__ != "_get_basic_result":
        return None
    return None if field.args else definition


@lru_cache(maxsize=1024)
def _plain_branches(parent: GraphQLObjectType) -> dict[str, _Branch]:
    """The fields of `parent` read from an attribute whose type is an object type, or a list
    of non-null ones, that checks nothing of its values (no `is_type_of`: no interface), by
    name."""
    found: dict[str, _Branch] = {}
    for name, field in parent.fields.items():
        definition = _basic(field)
        if definition is None:
            continue
        kind, non_null, many = field.type, False, False
        if isinstance(kind, GraphQLNonNull):
            kind, non_null = kind.of_type, True
        if isinstance(kind, GraphQLList):
            if not isinstance(kind.of_type, GraphQLNonNull):
                continue
            kind, many = kind.of_type.of_type, True
        if isinstance(kind, GraphQLObjectType) and kind.is_type_of is None:
            found[name] = (
                definition.python_name,
                definition.default_resolver,
                kind,
                many,
                non_null,
            )
    return found


class PortalExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, with a short way through the commonest fields of all: a scalar
    or enum read from an attribute (`amount { currency }`, a payment's `state`: most of the
    fields of a page), and an object or list of objects read from an attribute (a statistics
    series' points and their figures). graphql-core would build a resolve-info object, call
    Strawberry's wrapper and walk the type's wrappers for each one; here the attribute is read
    and coerced by the same type, or the object's own fields executed. Anything unusual (an
    error, null where null is refused, arguments, directives, middleware, a field asked twice
    under one name) takes graphql-core's own way, from the start, so errors read exactly as
    they always did."""

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: dict[str, Any],
        position_context: Any,
    ) -> Any:
        """An object's fields: its plain leaves read here in one loop (no path, no call per
        field), the others executed by graphql-core, the answer in the selection's order.
        Leaves only read attributes, so when one is unusual (see `execute_field`) the object
        is executed whole by graphql-core, from the start, as if this way did not exist."""
        plan = self._plan(parent_type, grouped_field_set)
        if plan is None:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        leaves, others = plan
        results: dict[str, Any] = {}
        for name, (attribute, read, coerce, non_null) in leaves:
            try:
                value = read(source_value, attribute)
                if value is None:
                    if not non_null:
                        results[name] = None
                        continue
                elif not isinstance(value, Exception):
                    coerced = coerce(value)
                    if coerced is not None and coerced is not Undefined:
                        results[name] = coerced
                        continue
            except Exception:  # noqa: S110 - graphql-core's way reports it below
                pass
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        if not others:
            return results
        rest = super().execute_fields(parent_type, source_value, path, others, position_context)
        if self.is_awaitable(rest):
            return self._in_order(grouped_field_set, results, rest)
        return _ordered(grouped_field_set, results, cast("dict[str, Any]", rest))

    async def _in_order(
        self, grouped_field_set: dict[str, Any], leaves: dict[str, Any], rest: Any
    ) -> dict[str, Any]:
        return _ordered(grouped_field_set, leaves, await rest)

    def _plan(
        self, parent_type: GraphQLObjectType, grouped_field_set: dict[str, Any]
    ) -> "_Plan | None":
        """The plain leaves of a selection and the rest of it, or None when it has no plain
        leaf. Worked out once per request for each selection (graphql-core collects an
        object's subfields once for every object of a list); the selection is kept with
        its plan, so its id is not reused while the request runs."""
        key = (parent_type, id(grouped_field_set))
        found = self._plans.get(key)
        if found is not None:
            plan: _Plan | None = found[1]
            return plan
        leaves: list[tuple[str, _Leaf]] = []
        others: dict[str, Any] = {}
        plain = {} if self._middleware else _plain_leaves(parent_type)
        for name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            leaf = plain.get(node.name.value)
            if leaf is not None and len(field_details_list) == 1 and not node.arguments:
                leaves.append((name, leaf))
            else:
                others[name] = field_details_list
        plan = (leaves, others) if leaves else None
        self._plans[key] = (grouped_field_set, plan)
        return plan

    @cached_property
    def _plans(self) -> dict[tuple[GraphQLObjectType, int], tuple[dict[str, Any], Any]]:
        return {}

    def collect_and_execute_subfields(
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        """An object whose selection is plain to the leaves (see `_tree`) is answered by
        reading its attributes, its branches' and so on, in one walk: no path, no field
        executed. Anything unusual on the way sends it through graphql-core whole."""
        tree = self._tree(return_type, field_details_list) if position_context is None else None
        if tree is not None:
            done = _walk(tree, result)
            if done is not _UNUSUAL:
                return done
        return super().collect_and_execute_subfields(
            return_type, field_details_list, path, result, position_context
        )

    def _tree(self, kind: GraphQLObjectType, field_details_list: Any) -> "_Tree | None":
        """The selection of `kind` under these fields when every field of it reads an
        attribute and nothing else, to the leaves (scalars and enums; objects and lists of
        non-null objects that check nothing of their values in between), each asked once
        under its name, with neither arguments nor directives, nothing deferred; else None.
        Worked out once per request and selection (kept with it, so its id is not reused)."""
        key = (kind, id(field_details_list))
        found = self._trees.get(key)
        if found is not None:
            tree: _Tree | None = found[1]
            return tree
        self._trees[key] = (field_details_list, None)  # a selection within itself: not plain
        tree = self._work_out_tree(kind, field_details_list)
        self._trees[key] = (field_details_list, tree)
        return tree

    def _work_out_tree(self, kind: GraphQLObjectType, field_details_list: Any) -> "_Tree | None":
        if self._middleware:
            return None
        grouped_field_set, new_defer_usages, _ = self.collect_subfields(kind, field_details_list)
        if new_defer_usages:
            return None
        leaves, branches = _plain_leaves(kind), _plain_branches(kind)
        tree: _Tree = []
        for name, details in grouped_field_set.items():
            node = details[0].node
            if len(details) != 1 or node.arguments or node.directives:
                return None
            field_name = node.name.value
            leaf = leaves.get(field_name)
            if leaf is not None:
                tree.append((name, leaf, None))
                continue
            branch = branches.get(field_name)
            if branch is None:
                return None
            attribute, read, of_kind, many, non_null = branch
            below = self._tree(of_kind, details)
            if below is None:
                return None
            tree.append((name, None, (attribute, read, many, non_null, below)))
        return tree

    @cached_property
    def _trees(self) -> dict[tuple[GraphQLObjectType, int], tuple[Any, "_Tree | None"]]:
        return {}

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        # Plain leaves are read by `execute_fields`; an object with an unusual one comes here
        # field by field, and its leaves take graphql-core's way.
        if len(field_details_list) == 1 and not self._middleware:
            node = field_details_list[0].node
            if not node.arguments and not node.directives:
                branch = _plain_branches(parent_type).get(node.name.value)
                if branch is not None:
                    completed = self._complete_branch(
                        branch, parent_type, source, field_details_list, path, position_context
                    )
                    if completed is not _UNUSUAL:
                        return completed
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )

    def _complete_branch(
        self,
        branch: _Branch,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        """An object (or a list of objects) read from an attribute, its own fields executed
        straight away: no resolve-info object, no resolver wrapper, no walk through the type's
        wrappers, as graphql-core would for a type that checks nothing of its values. Null
        where null is refused, an error, or anything not a list where a list is expected is
        `_UNUSUAL` (graphql-core's way reports it)."""
        attribute, read, kind, many, non_null = branch
        try:
            value = read(source, attribute)
        except Exception:
            return _UNUSUAL
        if value is None:
            return _UNUSUAL if non_null else None
        if isinstance(value, Exception):
            return _UNUSUAL
        tree = self._tree(kind, field_details_list) if position_context is None else None
        if tree is not None:
            done = _walk_many(tree, value) if many else _walk(tree, value)
            if done is not _UNUSUAL:
                return done
        complete = self.collect_and_execute_subfields
        try:
            if not many:
                done = complete(kind, field_details_list, path, value, position_context)
                if self.is_awaitable(done):
                    return self._settled(done, parent_type, field_details_list, path)
                return done
            if not isinstance(value, list | tuple) or any(
                item is None or isinstance(item, Exception) for item in value
            ):
                return _UNUSUAL
            items: list[Any] = [
                complete(kind, field_details_list, path.add_key(i, None), item, position_context)
                for i, item in enumerate(value)
            ]
        except Exception as error:
            self.handle_field_error(
                error, self._field_type(parent_type, field_details_list), field_details_list, path
            )
            return None
        waiting = [i for i, item in enumerate(items) if self.is_awaitable(item)]
        if not waiting:
            return items

        async def gathered() -> list[Any]:
            for i, done in zip(
                waiting, await gather_with_cancel(*(items[i] for i in waiting)), strict=True
            ):
                items[i] = done
            return items

        return self._settled(gathered(), parent_type, field_details_list, path)

    def _field_type(self, parent_type: GraphQLObjectType, field_details_list: Any) -> Any:
        return parent_type.fields[field_details_list[0].node.name.value].type

    async def _settled(
        self, pending: Any, parent_type: GraphQLObjectType, field_details_list: Any, path: Path
    ) -> Any:
        try:
            return await pending
        except Exception as error:
            self.handle_field_error(
                error, self._field_type(parent_type, field_details_list), field_details_list, path
            )
            return None

    @cached_property
    def _middleware(self) -> bool:
        manager = self.middleware_manager
        return manager is not None and bool(manager.middlewares)


def _walk(tree: _Tree, source: Any) -> Any:
    """An object's answer read along its plain tree (`PortalExecutor._tree`), or `_UNUSUAL`
    at the first value graphql-core would have to report (an error, null where null is
    refused, a value its type does not coerce, anything not a list where a list is due)."""
    results: dict[str, Any] = {}
    try:
        for name, leaf, branch in tree:
            if leaf is not None:
                attribute, read, coerce, non_null = leaf
                value = read(source, attribute)
                if value is None:
                    if non_null:
                        return _UNUSUAL
                    results[name] = None
                    continue
                if isinstance(value, Exception):
                    return _UNUSUAL
                coerced = coerce(value)
                if coerced is None or coerced is Undefined:
                    return _UNUSUAL
                results[name] = coerced
                continue
            if branch is None:  # pragma: no cover - an entry is a leaf or a branch
                return _UNUSUAL
            attribute, read, many, non_null, below = branch
            value = read(source, attribute)
            if value is None:
                if non_null:
                    return _UNUSUAL
                results[name] = None
                continue
            if isinstance(value, Exception):
                return _UNUSUAL
            done = _walk_many(below, value) if many else _walk(below, value)
            if done is _UNUSUAL:
                return _UNUSUAL
            results[name] = done
    except Exception:
        return _UNUSUAL
    return results


def _walk_many(tree: _Tree, values: Any) -> Any:
    """A list of non-null objects read along their plain tree (see `_walk`)."""
    if not isinstance(values, list | tuple):
        return _UNUSUAL
    found = []
    for value in values:
        if value is None or isinstance(value, Exception):
            return _UNUSUAL
        done = _walk(tree, value)
        if done is _UNUSUAL:
            return _UNUSUAL
        found.append(done)
    return found


def _ordered(
    grouped_field_set: dict[str, Any], leaves: dict[str, Any], rest: dict[str, Any]
) -> dict[str, Any]:
    """The fields of an object in the order the selection names them, as graphql-core
    answers them."""
    return {
        name: leaves[name] if name in leaves else rest[name]
        for name in grouped_field_set
        if name in leaves or name in rest
    }


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
