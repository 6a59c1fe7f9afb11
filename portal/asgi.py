"""The ASGI application: lifespan-owned resources, GraphQL, health endpoints, the outage net."""

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from app.clock import Clock, SystemClock, clock_from_settings
from app.crypto import CredentialBox
from app.db import Database
from app.embedded import Services, resolve_services
from app.errors import ErrorCode
from app.event_notices import EventNotices, listener_client
from app.outages import outage_of, unavailable_message
from app.ratelimit import BucketLimits, RedisLeakyBucket
from app.settings import Settings, get_settings
from app.tenancy import SYSTEM_SCOPE
from jobs.context import tune_garbage_collector
from jobs.telemetry import worker_state
from portal.dashboard import dashboard_routes
from portal.exports import export_endpoint
from portal.http import PortalGraphQL
from portal.logging import RequestLogMiddleware, configure_logging
from portal.metrics import metrics_endpoint
from portal.webhooks import adyen_webhook
from schema.root import build_schema

logger = logging.getLogger("portal")


@dataclass
class Resources:
    """What the app's requests use; owned by the lifespan unless handed in (tests)."""

    db: Database
    redis: Redis
    arq: ArqRedis | None
    clock: Clock = field(default_factory=SystemClock)


# A Redis that hangs (rather than refusing connections) must not hang every request with it:
# past this a command fails as an outage, and the rate limiter then serves unmetered.
REDIS_TIMEOUT_SECONDS = 2.0


def redis_client(url: str) -> Redis:
    """The API's Redis client: commands and connects give up after `REDIS_TIMEOUT_SECONDS`."""
    client: Redis = Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    return client


def queue_client(url: str, queue_name: str) -> ArqRedis:
    """The API's arq client for enqueueing on `queue_name` (PORTAL_QUEUE_NAME), with the same
    timeouts. It connects on first use (arq's `create_pool` would refuse to start the API while
    Redis is down)."""
    client: ArqRedis = ArqRedis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    # `from_url` hands its keywords to the connection pool: the queue is the client's own.
    client.default_queue_name = queue_name
    return client


async def open_resources(services: Services, settings: Settings) -> Resources:
    db = Database.from_url(
        services.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    redis = redis_client(services.redis_url)
    arq = queue_client(services.redis_url, settings.queue_name)
    return Resources(db=db, redis=redis, arq=arq, clock=clock_from_settings(settings))


async def close_resources(resources: Resources) -> None:
    if resources.arq is not None:
        await resources.arq.aclose()
    await resources.redis.aclose()
    await resources.db.dispose()


async def healthz(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """database and redis: ok or the error; worker: ok (a fresh heartbeat), stale, none, or
    unknown while Redis does not answer. The worker counts toward readiness only where the
    settings require one (a deployment or the demo that runs its worker)."""
    resources: Resources = request.app.state.resources
    settings: Settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        async with resources.db.session(SYSTEM_SCOPE) as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await resources.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    worker: str = "unknown"
    if checks["redis"] == "ok":
        try:
            worker = await worker_state(
                resources.redis,
                stale_after=settings.worker_stale_after_seconds,
                ttl=settings.worker_heartbeat_ttl_seconds,
                queue=settings.queue_name,
            )
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    if settings.readyz_require_worker and worker != "ok":
        ready = False
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", **checks, "worker": worker},
        200 if ready else 503,
    )


class OutageMiddleware:
    """Any endpoint whose handler fails because PostgreSQL or Redis is unreachable answers 503
    with `Retry-After` and one warning line, instead of uvicorn's 500 with a traceback; so an
    endpoint added later cannot turn an outage into a 500. Bugs still propagate (a 500), and so
    does an outage after the response started: its status is already sent."""

    def __init__(self, app: ASGIApp, *, retry_after_seconds: int) -> None:
        self.app = app
        self._retry_after = retry_after_seconds

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is None or started:
                raise
            logger.warning(
                "%s %s failed: %s unavailable (%s)",
                scope["method"],
                scope["path"],
                dependency,
                type(exc).__name__,
            )
            body = {
                "code": ErrorCode.SERVICE_UNAVAILABLE.value,
                "message": unavailable_message(dependency, self._retry_after),
            }
            headers = {"Retry-After": str(self._retry_after)}
            await JSONResponse(body, 503, headers)(scope, receive, send)


class GraphQLRoute:
    """HTTP requests to /graphql go straight to the GraphQL view, the app's busiest route,
    past the outage middleware, the router's matching and the exception middleware, which it
    has no use for: the view answers every method and every failure itself (a coded GraphQL
    error, a 503 for an outage, a 500 for a bug). Everything else, websockets on /graphql
    included, goes through the router."""

    def __init__(self, app: ASGIApp, *, view: ASGIApp) -> None:
        self.app = app
        self._view = view

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        # Served under a root path, the router's matching decides.
        if scope["type"] == "http" and scope["path"] == "/graphql" and not scope.get("root_path"):
            await self._view(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings | None = None, *, resources: Resources | None = None
) -> Starlette:
    """The portal's ASGI app; with `resources` given, the caller owns their lifetime."""
    settings = settings or get_settings()
    schema = build_schema(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned: Resources | None = None
        services: Services | None = None
        current = resources
        if current is None:
            services = await resolve_services(settings)
            logger.info("portal using %s", services.describe())
            current = owned = await open_resources(services, settings)
            # A process of its own: start-up's objects leave the collector's sight, and the
            # young generation is collected less often (requests allocate many short-lived
            # containers that reference counting frees).
            tune_garbage_collector()
        app.state.resources = current
        app.state.settings = settings
        app.state.db = current.db
        app.state.redis = current.redis
        app.state.arq = current.arq
        app.state.clock = current.clock
        app.state.box = CredentialBox(settings.secret_key.get_secret_value())
        app.state.rate_limiter = RedisLeakyBucket(
            current.redis,
            BucketLimits(settings.rate_limit_capacity, settings.rate_limit_leak_per_second),
            prefix="portal:ratelimit:",
        )
        # One Redis subscription per process wakes its GraphQL subscriptions.
        app.state.notices = notices = EventNotices(listener_client(current.redis))
        notices.start()
        try:
            yield
        finally:
            await notices.close()
            if owned is not None:
                await close_resources(owned)
            if services is not None:
                services.close()

    view: Any = PortalGraphQL(
        schema,
        settings=settings,
        graphql_ide="graphiql" if settings.graphiql else None,
        allow_queries_via_get=True,
    )
    return Starlette(
        routes=[
            # Every method reaches the view, so a refusal (405) is a coded GraphQL error too.
            Route("/graphql", view),
            # Subscriptions: graphql-transport-ws on the same path.
            WebSocketRoute("/graphql", view),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint(settings)),
            Route("/webhooks/adyen/{connection_id}", adyen_webhook, methods=["POST"]),
            Route("/exports/payments.csv", export_endpoint(schema, "csv"), methods=["GET"]),
            Route("/exports/payments.parquet", export_endpoint(schema, "parquet"), methods=["GET"]),
            *dashboard_routes(graphiql=settings.graphiql),
        ],
        middleware=[
            Middleware(RequestLogMiddleware),
            # Before the outage middleware: the view answers outages itself.
            Middleware(GraphQLRoute, view=view),
            Middleware(OutageMiddleware, retry_after_seconds=settings.outage_retry_after_seconds),
        ],
        lifespan=lifespan,
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for serving the app (`portal serve`, the demo): no uvicorn log
    configuration or access log (RequestLogMiddleware logs every request, with its id, status
    and timing), and idle connections kept for `keep_alive_seconds`."""
    return {
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": settings.keep_alive_seconds,
    }


def app_from_environment() -> Starlette:
    """The app as each `portal serve --workers N` process builds it: settings and logging anew."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings)
