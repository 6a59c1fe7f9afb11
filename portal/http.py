"""The GraphQL HTTP view: GraphQL-over-HTTP negotiation, auth, cost limits, then execution."""

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    get_operation_ast,
    parse,
)
from graphql.language import OperationType as AstOperationType
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema import Schema
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from app.clock import Clock
from app.db import Database
from app.errors import ErrorCode
from app.outages import Dependency, outage_of, unavailable_message
from app.ratelimit import BucketError, Decision, LimiterError, RedisLeakyBucket
from app.services.api_key import hash_token
from app.settings import Settings
from app.tenancy import Principal
from app.workflows.authentication import PrincipalCache, authenticate
from portal import metrics
from portal.dashboard import graphiql_page
from portal.logging import request_id_from
from resolvers.context import Context
from resolvers.cost import MAX_INTROSPECTION_LISTS, Cost, PageSizes, operation_cost
from schema.extensions import outage_in

logger = logging.getLogger("portal.http")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
# Request bodies must be JSON: browsers send text/plain, forms and multipart cross-origin
# without a preflight, so accepting those would make every mutation CSRF-able.
_BODY_TYPES = frozenset({APPLICATION_JSON, GRAPHQL_RESPONSE_JSON})
_PARSE_CACHE_SIZE = 256
# The token limit bounds the document, not the variables: bound the whole body too.
MAX_BODY_BYTES = 1_048_576
# Buckets whose failures are remembered (so each is logged once), at most.
_MOST_FAILING_BUCKETS = 1024


def bearer_token(request: Request | WebSocket) -> str | None:
    return _bearer(request.headers.get("authorization", ""))


def _bearer(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class _SubscriptionsOnly:
    """The schema as the websocket transport sees it: subscriptions only. Queries and
    mutations go over HTTP, where the rate limiter and the method rules apply."""

    def __init__(self, schema: Any) -> None:
        self._schema = schema

    def __getattr__(self, name: str) -> Any:
        return getattr(self._schema, name)

    async def stream(self, query: str | None, *args: Any, **kwargs: Any) -> Any:
        operation = None
        with contextlib.suppress(GraphQLError):  # syntax errors: Strawberry's answer (4400)
            operation = get_operation_ast(parse(query or ""), kwargs.get("operation_name"))
        if operation is not None and operation.operation is not AstOperationType.SUBSCRIPTION:
            return _refused(
                ErrorCode.BAD_REQUEST,
                f"a {operation.operation.value} is served over HTTP; websockets run "
                "subscriptions only",
            )
        kwargs["allowed_operation_types"] = {OperationType.SUBSCRIPTION}
        return await self._schema.stream(query, *args, **kwargs)


async def _refused(code: ErrorCode, message: str) -> AsyncIterator[PreExecutionError]:
    """An operation's only result: an error before execution (an `error` message)."""
    yield PreExecutionError(
        data=None, errors=[GraphQLError(message, extensions={"code": code.value})]
    )


class TextFrames(ASGIWebSocketAdapter):
    """graphql-transport-ws messages as text frames, as the protocol's clients read them
    (a browser hands a binary frame over as a Blob, which `JSON.parse` cannot read):
    `encode_json` gives bytes for HTTP bodies, which would make them binary frames."""

    async def send_json(self, message: Mapping[str, object]) -> None:
        encoded: bytes | str = self.view.encode_json(message)
        text = encoded.decode() if isinstance(encoded, bytes) else encoded
        try:
            await self.ws.send_text(text)
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


class SubscriptionHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws, running subscriptions only."""

    def __init__(self, *, schema: Any, **kwargs: Any) -> None:
        only: Any = _SubscriptionsOnly(schema)
        super().__init__(schema=only, **kwargs)


def negotiate(accept: str | None) -> str | None:
    """The response media type for an Accept header, or None when it allows neither (406).

    No header, or one matching only through wildcards, gets `application/json` (legacy
    clients). When both are named with equal preference, the spec's own type wins.
    """
    if accept is None or not accept.strip():
        return APPLICATION_JSON
    # For each type we serve: (q, specificity) of the most specific range that matches it.
    best: dict[str, tuple[float, int]] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for served in (GRAPHQL_RESPONSE_JSON, APPLICATION_JSON):
            if media == served:
                specificity = 2
            elif media in {"application/*", "*/*"}:
                specificity = 1 if media == "application/*" else 0
            else:
                continue
            if served not in best or specificity > best[served][1]:
                best[served] = (q, specificity)
    # Highest q, then the most specific range; ties go to the spec's type when both are
    # named, and to application/json when both only match a wildcard.
    candidates = [
        (q, spec, served == (GRAPHQL_RESPONSE_JSON if spec == 2 else APPLICATION_JSON), served)
        for served, (q, spec) in best.items()
        if q > 0
    ]
    return max(candidates)[3] if candidates else None


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse(query: str, max_tokens: int) -> DocumentNode:
    return parse(query, max_tokens=max_tokens)


class Refusal(Exception):
    """A request refused before execution, with its HTTP status and error code."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extensions = extensions or {}


@dataclass
class _Params:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None


@dataclass
class _Outcome:
    operation: str = "unknown"
    extensions: dict[str, Any] = field(default_factory=dict)


class PortalGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view, answering HTTP per the GraphQL-over-HTTP draft.

    Media types: `Accept: application/graphql-response+json` gets that type and its status
    codes; `application/json`, `*/*` or no Accept header get `application/json` with 200 for
    every well-formed request (the legacy behaviour the spec allows; the spec would default
    a missing header to the new type since 2025, but existing clients rely on JSON); an
    Accept naming neither gets 406.

    Status codes with `application/graphql-response+json`: 200 when the operation executed,
    field errors included, and also when `data` is null because a non-null field failed
    (the spec's "partial response"). 400 for request errors, where the body has no `data`:
    unparseable or non-object body, missing or mistyped parameters, syntax and validation
    errors, an operation that cannot be determined, variable coercion failures, a query
    costlier than the whole bucket. 413 for a body over `MAX_BODY_BYTES`. 429 with
    `Retry-After` when over budget (legacy JSON: 200 with the same `RATE_LIMITED` error and
    `data: null`). 500 when something broke outside field resolution.

    Outages: when PostgreSQL or Redis is unreachable (see `app.outages`), whether in
    authentication, in a resolver or dataloader, or in a mutation, the answer is 503 with
    `Retry-After: <outage_retry_after_seconds>` and `SERVICE_UNAVAILABLE` errors ("the database
    is unavailable; retry in N s", `extensions.retryAfterSeconds`), for both media types:
    legacy JSON clients get 503 too, since a 200 would tell them the answer is complete. When
    only some fields met the outage, the whole response is still 503 and `data` is left out:
    the fields that did resolve are a snapshot the client cannot complete, and retrying the
    request is the one reaction that works for every client. The errors keep their paths. A
    mutation that met an outage before its commit changed nothing; one whose commit lost its
    connection may or may not have been applied, as with any lost connection (a versioned
    change, `expectedVersion`, is safe to retry). Each request failed by an outage is logged
    once, as a warning naming the dependency and the error type, without a traceback. Bugs are
    still masked as INTERNAL_SERVER_ERROR, with the statuses above.

    The rate limiter fails open: whenever it cannot answer, the request is served unmetered
    (no `extensions.cost`) rather than refused, and the query guards still bound it, so a Redis
    fault does not take down an API whose data is in PostgreSQL. That holds for Redis
    unreachable or timing out (logged as a warning), for Redis answering the limiter's call
    with an error (a refused script, a read-only replica, out of memory: logged as an error
    with Redis's message, since it needs an operator) and for Redis failing one caller's
    bucket (its key holding another type): that caller alone is served unmetered, the
    requests whose offers went to Redis in the same call get their decisions. Each failure
    is logged when it starts and when the limiter answers again, and each request served
    unmetered is counted in `portal_rate_limit_unmetered_requests_total{reason}`. No limiter
    failure answers 500.

    Authentication: a request without a token is executed and fields needing a caller
    answer `UNAUTHENTICATED` errors. The spec leaves authorisation to the schema during
    execution, so that is a 200 partial response with `data: null`, not a 401. A token that
    is presented but unknown, revoked, expired or malformed is an HTTP-level failure: 401 with
    `WWW-Authenticate: Bearer error="invalid_token"` for the spec type; for legacy JSON the
    request runs unauthenticated as before.

    Independent of media type: GET runs queries only (a mutation gets 405 with
    `Allow: POST`); POST bodies must be `application/json` (or the GraphQL response type),
    anything else is 415, so a cross-site form cannot post a mutation; batching is refused
    with 400; other methods get 405. Every error carries `extensions.code`. With rate
    limiting on, every response past the HTTP-level refusals (405, 406, 413, 415, a
    malformed body, 401) carries `extensions.cost`.
    """

    graphql_transport_ws_handler_class = SubscriptionHandler
    websocket_adapter_class = TextFrames

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        # Subscriptions: graphql-transport-ws only (the older graphql-ws protocol is refused
        # with 4406), authenticated by the `connection_init` payload (see `on_ws_connect`).
        kwargs.setdefault("subscription_protocols", (GRAPHQL_TRANSPORT_WS_PROTOCOL,))
        kwargs.setdefault("connection_init_wait_timeout", timedelta(seconds=10))
        super().__init__(*args, **kwargs)
        self._settings = settings
        self._pages = PageSizes(settings.default_page_size, settings.max_page_size)
        if not isinstance(self.schema, Schema):
            raise TypeError("PortalGraphQL serves a strawberry.Schema")
        # The graphql-core schema, which query costs are computed against.
        self._graphql_schema: GraphQLSchema = self.schema._schema
        self._principals = PrincipalCache(timedelta(seconds=settings.auth_cache_seconds))
        # Key lookups under way, by the token's digest (see `_authenticate`).
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        # The cost of operations that take no variables, by query text and operation name:
        # it depends on nothing else, and clients send the same few documents.
        self._fixed_costs = lru_cache(maxsize=_PARSE_CACHE_SIZE)(self._fixed_cost)
        # Why the rate limiter last failed to answer (Redis unreachable, or Redis's error for
        # the whole call), if it has not answered since; and the buckets whose own offers
        # failed last. Each failure is logged when it starts and when it ends, not once per
        # request served meanwhile.
        self._unmetered: str | None = None
        self._failing_buckets: dict[str, None] = {}

    async def render_graphql_ide(self, request: Request) -> Response:
        # Strawberry's page loads the IDE from a CDN; this one is served by the portal itself.
        return graphiql_page()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        started = time.perf_counter()
        outcome = _Outcome()
        try:
            response = await self._serve(request, outcome)
        except Exception as exc:
            # Still a GraphQL-shaped answer with a code, never a bare text/plain 500.
            media = negotiate(request.headers.get("accept")) or APPLICATION_JSON
            dependency = outage_of(exc)
            if dependency is None:
                logger.exception("GraphQL request failed before producing a result")
                failure = Refusal(500, ErrorCode.INTERNAL_SERVER_ERROR, "Internal server error")
            else:
                _log_outage(dependency, exc)
                failure = self._unavailable(dependency)
            response = self._refusal(failure, media, outcome.extensions)
        request.state.graphql_operation = outcome.operation
        metrics.observe_graphql(
            outcome.operation, response.status_code, time.perf_counter() - started
        )
        await response(scope, receive, send)

    async def _serve(self, request: Request, outcome: _Outcome) -> Response:
        accept = request.headers.get("accept")
        if request.method not in {"GET", "POST"}:
            return self._refusal(
                Refusal(
                    405,
                    ErrorCode.METHOD_NOT_ALLOWED,
                    "GraphQL is served over GET (queries) and POST",
                    headers={"Allow": "GET, POST"},
                ),
                APPLICATION_JSON,
            )
        if (
            request.method == "GET"
            and self.graphql_ide
            and "text/html" in (accept or "")
            and "query" not in request.query_params
        ):
            return await self.render_graphql_ide(request)
        media = negotiate(accept)
        if media is None:
            refusal = Refusal(
                406,
                ErrorCode.NOT_ACCEPTABLE,
                f"Accept must allow {GRAPHQL_RESPONSE_JSON} or {APPLICATION_JSON}",
            )
            return self._refusal(refusal, APPLICATION_JSON)
        try:
            return await self._execute(request, media, outcome)
        except Refusal as refusal:
            return self._refusal(refusal, media, outcome.extensions)

    async def _execute(self, request: Request, media: str, outcome: _Outcome) -> Response:
        params = await self._read_params(request)
        document: DocumentNode | None = None
        operation: OperationDefinitionNode | None = None
        # A syntax error is left for Strawberry to report, shaped like every other error.
        with contextlib.suppress(GraphQLError):
            document = _parse(params.query, self._settings.max_tokens)
        if document is not None:
            operation = get_operation_ast(document, params.operation_name)
            if operation is not None:
                name = operation.name.value if operation.name else None
                outcome.operation = metrics.operation_label(name)
        if (
            request.method == "GET"
            and operation is not None
            and operation.operation is not AstOperationType.QUERY
        ):
            raise Refusal(
                405,
                ErrorCode.METHOD_NOT_ALLOWED,
                f"a {operation.operation.value} is only accepted over POST",
                headers={"Allow": "POST"},
            )

        token = bearer_token(request)
        state = request.app.state
        principal = None
        if token is not None:
            principal = await self._authenticate(state.db, state.clock, token)
            if principal is None and media == GRAPHQL_RESPONSE_JSON:
                raise Refusal(
                    401,
                    ErrorCode.UNAUTHENTICATED,
                    "the API key is unknown, revoked or expired",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )

        if self._settings.rate_limit_enabled:
            await self._charge(request, document, params, principal, outcome)

        context = self._context(request, principal)
        if document is not None and operation is None:
            # GetOperation() must fail here; Strawberry would run the first operation instead.
            message = (
                f"Unknown operation named '{params.operation_name}'."
                if params.operation_name
                else "Must provide operation name if query contains multiple operations."
            )
            code = {"code": ErrorCode.GRAPHQL_VALIDATION_FAILED.value}
            result = ExecutionResult(data=None, errors=[GraphQLError(message, extensions=code)])
        else:
            result = await self._run(request, params, context)
        body = await self.process_result(request, result)
        if outcome.extensions:
            body["extensions"] = {**(body.get("extensions") or {}), **outcome.extensions}
        outages = [found for error in result.errors or () if (found := outage_in(error))]
        if outages:
            dependency, exc = outages[0]
            _log_outage(dependency, exc, fields=len(outages))
            # Half an answer is not one a client can use: it retries the whole request.
            body.pop("data", None)
            retry = self._settings.outage_retry_after_seconds
            return self._response(body, media, 503, {"Retry-After": str(retry)})
        status = 200
        if media == GRAPHQL_RESPONSE_JSON and result.data is None:
            status = _status_without_data(result)
            if status != 200:
                # A request error: the GraphQL spec says `data` is then absent.
                body.pop("data", None)
        return self._response(body, media, status)

    async def _run(self, request: Request, params: _Params, context: Context) -> ExecutionResult:
        allowed = {OperationType.QUERY}
        if request.method == "POST":
            allowed.add(OperationType.MUTATION)
        try:
            return await self.schema.execute(
                params.query,
                variable_values=params.variables,
                context_value=context,
                operation_name=params.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=params.extensions,
            )
        except CannotGetOperationTypeError as error:
            return ExecutionResult(data=None, errors=[GraphQLError(error.as_http_error_reason())])
        except InvalidOperationTypeError as error:
            raise Refusal(
                400, ErrorCode.BAD_REQUEST, error.as_http_error_reason(request.method)
            ) from error

    async def _charge(
        self,
        request: Request,
        document: DocumentNode | None,
        params: _Params,
        principal: Principal | None,
        outcome: _Outcome,
    ) -> None:
        """Pour the operation's cost into the caller's bucket; refuse when it overflows."""
        state = request.app.state
        bucket: RedisLeakyBucket = state.rate_limiter
        cost = 1
        if document is not None:
            if params.variables:
                measured = operation_cost(
                    self._graphql_schema,
                    document,
                    params.operation_name,
                    params.variables,
                    self._pages,
                )
            else:
                measured = self._fixed_costs(params.query, params.operation_name)
            if measured.introspection_lists > MAX_INTROSPECTION_LISTS:
                raise Refusal(
                    400,
                    ErrorCode.QUERY_TOO_COMPLEX,
                    f"introspection nests lists {measured.introspection_lists} deep; at most "
                    f"{MAX_INTROSPECTION_LISTS} (types {{ fields {{ args }} }}) are answered",
                )
            cost = measured.total
        if principal is not None and principal.key_id is not None:
            key = f"key:{principal.key_id}"
        else:
            key = f"ip:{request.client.host if request.client else 'unknown'}"
        clock: Clock = state.clock
        try:
            decision: Decision = await bucket.offer(key, cost, now=clock.now())
        except Exception as exc:
            # The limiter could not answer: served unmetered (see the class docstring).
            # Anything but Redis's or the limiter's own failure is a bug, and raises.
            if not self._unanswered(key, exc):
                raise
            return
        if self._unmetered is not None:
            logger.info("rate limiter available again; requests are metered")
            self._unmetered = None
        if key in self._failing_buckets:
            del self._failing_buckets[key]
            logger.info("rate limiter bucket answers again; its caller is metered")
        outcome.extensions["cost"] = decision.as_extension()
        if decision.allowed:
            return
        if decision.too_costly:
            raise Refusal(
                400,
                ErrorCode.QUERY_TOO_COMPLEX,
                f"the query costs {cost}, more than the limit of {bucket.limits.capacity}; "
                "request smaller pages or fewer fields",
            )
        retry = max(1, math.ceil(decision.retry_after_seconds))
        raise Refusal(
            429,
            ErrorCode.RATE_LIMITED,
            f"query cost budget exhausted; retry in {retry}s",
            headers={"Retry-After": str(retry)},
            extensions={"retryAfterSeconds": retry},
        )

    def _fixed_cost(self, query: str, operation_name: str | None) -> Cost:
        """The cost of an operation without variables (cached by `_fixed_costs`)."""
        document = _parse(query, self._settings.max_tokens)
        return operation_cost(self._graphql_schema, document, operation_name, None, self._pages)

    def _unanswered(self, key: str, exc: Exception) -> bool:
        """Whether `exc` is the limiter failing to decide an offer: Redis unreachable or
        failing the call, or failing this one bucket; logs it and counts the request."""
        if isinstance(exc, BucketError):
            metrics.count_unmetered("bucket")
            if key not in self._failing_buckets:
                if len(self._failing_buckets) >= _MOST_FAILING_BUCKETS:
                    self._failing_buckets.pop(next(iter(self._failing_buckets)))
                self._failing_buckets[key] = None
                logger.error(
                    "rate limiter bucket failed (%s); its caller is served unmetered until it "
                    "answers",
                    exc,
                )
            return True
        if outage_of(exc) is Dependency.REDIS:
            metrics.count_unmetered("outage")
            reason = "outage"
            if self._unmetered != reason:
                logger.warning(
                    "rate limiter unavailable (%s); serving unmetered until Redis answers",
                    type(exc).__name__,
                )
        elif isinstance(exc, RedisError | LimiterError):
            metrics.count_unmetered("error")
            reason = f"{type(exc).__name__}: {exc}"
            if self._unmetered != reason:
                logger.error("rate limiter failed (%s); serving unmetered until it answers", reason)
        else:
            return False
        self._unmetered = reason
        return True

    async def _read_params(self, request: Request) -> _Params:
        data: Any
        if request.method == "GET":
            query_params = request.query_params
            data = {key: query_params.get(key) for key in query_params}
            for name in ("variables", "extensions"):
                if isinstance(data.get(name), str):
                    data[name] = _json(data[name], f"`{name}` is not valid JSON")
        else:
            content_type = request.headers.get("content-type", "")
            media, *params = (p.strip().lower() for p in content_type.split(";"))
            charset = next(
                (p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")),
                "utf-8",
            )
            if media not in _BODY_TYPES or charset != "utf-8":
                raise Refusal(
                    415,
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "POST bodies must be JSON: Content-Type: application/json",
                )
            data = _json(await _read_body(request), "the body is not valid JSON")
            if isinstance(data, list):
                raise Refusal(400, ErrorCode.BAD_REQUEST, "batched requests are not supported")
            if not isinstance(data, dict):
                raise Refusal(400, ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        query = data.get("query")
        # An empty string is as missing as no query at all (Strawberry raises on it, a 500).
        if not isinstance(query, str) or not query:
            raise Refusal(400, ErrorCode.BAD_REQUEST, "`query` must be a non-empty string")
        operation_name = data.get("operationName")
        if operation_name == "":
            operation_name = None
        if not isinstance(operation_name, str | None):
            raise Refusal(400, ErrorCode.BAD_REQUEST, "`operationName` must be a string")
        for name in ("variables", "extensions"):
            if not isinstance(data.get(name), dict | None):
                raise Refusal(400, ErrorCode.BAD_REQUEST, f"`{name}` must be an object")
        return _Params(query, data.get("variables"), operation_name, data.get("extensions"))

    def _unavailable(self, dependency: Dependency) -> Refusal:
        retry = self._settings.outage_retry_after_seconds
        return Refusal(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            unavailable_message(dependency, retry),
            headers={"Retry-After": str(retry)},
            extensions={"retryAfterSeconds": retry},
        )

    def _refusal(
        self, refusal: Refusal, media: str, response_extensions: dict[str, Any] | None = None
    ) -> Response:
        error: dict[str, Any] = {
            "message": refusal.message,
            "extensions": {"code": refusal.code.value, **refusal.extensions},
        }
        body: dict[str, Any] = {"errors": [error]}
        if response_extensions:
            body["extensions"] = response_extensions
        # With legacy JSON, an over-budget request is still a well-formed request: 200.
        status = refusal.status
        if media == APPLICATION_JSON and refusal.code in {
            ErrorCode.RATE_LIMITED,
            ErrorCode.QUERY_TOO_COMPLEX,
        }:
            status = 200
            body["data"] = None
        return self._response(body, media, status, refusal.headers)

    def encode_json(self, data: object) -> bytes:
        """orjson: a page of payments encodes several times faster than with json.dumps."""
        try:
            return orjson.dumps(data)
        except TypeError:
            # Beyond orjson (integers past 64 bits, say): the standard library's answer.
            return json.dumps(data, separators=(",", ":")).encode()

    def _response(
        self,
        body: GraphQLHTTPResponse | dict[str, Any],
        media: str,
        status: int,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return Response(
            self.encode_json(body),
            status_code=status,
            media_type=f"{media}; charset=utf-8",
            headers=headers,
        )

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """Every error carries extensions.code, parse errors included (they skip extensions)."""
        response = await super().process_result(request, result)
        errors = response.get("errors")
        for error in errors if isinstance(errors, list) else []:
            if isinstance(error, dict):
                extensions = error.setdefault("extensions", {})
                if isinstance(extensions, dict):
                    extensions.setdefault("code", ErrorCode.GRAPHQL_VALIDATION_FAILED.value)
        return response

    async def _authenticate(self, db: Database, clock: Clock, token: str) -> Principal | None:
        """The token's principal: from this process's cache while fresh, else looked up.

        Requests that miss the cache for one token while its lookup runs share that lookup
        (a busy key's entry expiring would otherwise send every request in flight to
        PostgreSQL at once): its answer is as fresh as theirs would be, less the time they
        waited for it, and a key's expiry is still checked at each request's own time. When
        the lookup fails, they all get its error; when it is cancelled (its client went
        away), each looks the token up itself.
        """
        now = clock.now()
        principal = self._principals.get(token, now=now)
        if principal is not None:
            return principal
        digest = hash_token(token)
        pending = self._lookups.get(digest)
        if pending is not None:
            try:
                shared = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the lookup
            else:
                return None if shared is None or shared.expired(now) else shared
        lookup: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._lookups[digest] = lookup
        generation = self._principals.generation
        try:
            principal = await authenticate(db, token, now=now)
        except asyncio.CancelledError:
            lookup.cancel()
            raise
        except Exception as exc:
            lookup.set_exception(exc)
            lookup.exception()  # retrieved: no "never retrieved" warning when none waited
            raise
        finally:
            if self._lookups.get(digest) is lookup:
                del self._lookups[digest]
        lookup.set_result(principal)
        if principal is not None:
            self._principals.put(token, principal, now=now, generation=generation)
        return principal

    def _context(self, request: Request | WebSocket, principal: Principal | None) -> Context:
        state = request.app.state
        request_id = getattr(request.state, "request_id", None) or request_id_from(
            request.headers.get("x-request-id")
        )
        return Context(
            db=state.db,
            principal=principal,
            clock=state.clock,
            settings=self._settings,
            redis=state.redis,
            arq=getattr(state, "arq", None),
            request_id=request_id,
            principals=self._principals,
            notices=getattr(state, "notices", None),
        )

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        """The context for transports that reach Strawberry's own pipeline (websockets)."""
        db: Database = request.app.state.db
        clock: Clock = request.app.state.clock
        token = bearer_token(request)
        principal = None if token is None else await self._authenticate(db, clock, token)
        context = self._context(request, principal)
        if token is not None and principal is not None:
            context.reauthenticate = self._reauthenticate(db, clock, token)
        return context

    def _reauthenticate(
        self, db: Database, clock: Clock, token: str
    ) -> Callable[[], Awaitable[Principal | None]]:
        """How a websocket's subscriptions look their key up again as they go."""

        async def reauthenticate() -> Principal | None:
            return await self._authenticate(db, clock, token)

        return reauthenticate

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate a websocket by its `connection_init` payload:
        `{"authorization": "Bearer <key>"}`. An unknown, revoked or malformed key closes the
        connection (4403); none leaves it unauthenticated (subscribing then answers
        UNAUTHENTICATED). Each subscription looks the key up again as it goes (through the
        process's key cache), so a revoked key's subscriptions end within
        `PORTAL_AUTH_CACHE_SECONDS`."""
        unset: UnsetType = UNSET
        params = context.connection_params or {}
        raw = params.get("authorization", params.get("Authorization"))
        if raw is None:
            return unset
        token = _bearer(raw) if isinstance(raw, str) else None
        principal = None
        if token is not None:
            principal = await self._authenticate(context.db, context.clock, token)
        if token is None or principal is None:
            raise ConnectionRejectionError(
                {"code": ErrorCode.UNAUTHENTICATED.value, "message": "the API key is unknown"}
            )
        context.principal = principal
        context.reauthenticate = self._reauthenticate(context.db, context.clock, token)
        return unset


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def _too_large() -> Refusal:
    """Made when refused only: an exception built per request costs more than reading it."""
    return Refusal(413, ErrorCode.BAD_REQUEST, f"the body exceeds {MAX_BODY_BYTES} bytes")


def _json(raw: str | bytes, message: str) -> Any:
    try:
        # Decoded here: json.loads would otherwise sniff UTF-16/32 where the spec says UTF-8.
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise Refusal(400, ErrorCode.BAD_REQUEST, message) from error


def _log_outage(dependency: Dependency, exc: BaseException, *, fields: int = 0) -> None:
    """The one line a request failed by an outage leaves: no traceback, it is not a bug."""
    where = f" in {fields} field(s)" if fields else ""
    logger.warning(
        "GraphQL request failed: %s unavailable (%s)%s", dependency, type(exc).__name__, where
    )


def _status_without_data(result: ExecutionResult) -> int:
    """The spec status for a response whose `data` is null or absent."""
    errors = result.errors or []
    if any(error.path for error in errors):
        return 200  # execution ran and a non-null field failed: a partial response
    codes = {(error.extensions or {}).get("code") for error in errors}
    if ErrorCode.INTERNAL_SERVER_ERROR.value in codes:
        return 500
    return 400


__all__ = ["PortalGraphQL", "Refusal", "bearer_token", "negotiate"]
