"""Prometheus metrics: request counters, worker figures kept in Redis, database gauges, /metrics."""

import hmac
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis
from sqlalchemy import DateTime, func, literal, select
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from app.clock import Clock
from app.db import Database
from app.enums import PaymentState
from app.models.ingestion import ProcessorConnection
from app.models.payment import Payment
from app.outages import is_outage
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from jobs.telemetry import heartbeat_ages, job_counts, outage_totals, queue_depth

logger = logging.getLogger("portal.metrics")

# The process's own metrics; a registry of our own keeps library defaults out of the output.
REGISTRY = CollectorRegistry()

GRAPHQL_REQUESTS = Counter(
    "portal_graphql_requests",
    "GraphQL HTTP requests by operation name and HTTP status.",
    ["operation", "status"],
    registry=REGISTRY,
)
GRAPHQL_LATENCY = Histogram(
    "portal_graphql_request_duration_seconds",
    "Time to answer a GraphQL HTTP request, by operation name.",
    ["operation"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RATE_LIMIT_UNMETERED = Counter(
    "portal_rate_limit_unmetered_requests",
    "GraphQL requests served without a rate limit decision, by why the limiter could not "
    "answer: outage (Redis unreachable), error (Redis failed the call), bucket (Redis failed "
    "the caller's bucket).",
    ["reason"],
    registry=REGISTRY,
)
_UNMETERED = {
    reason: RATE_LIMIT_UNMETERED.labels(reason=reason) for reason in ("outage", "error", "bucket")
}


def count_unmetered(reason: str) -> None:
    """Count a request served unmetered; `reason` is one of `_UNMETERED`'s."""
    _UNMETERED[reason].inc()


# Operation names come from clients: cap how many distinct ones become label values, so a
# client sending random names cannot grow the exposition without bound.
MAX_OPERATION_LABELS = 200
_OPERATION_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,63}$")
_seen_operations: set[str] = set()
_seen_lock = threading.Lock()


def operation_label(name: str | None) -> str:
    """The label value for an operation name: `anonymous`, the name, or `other` past the cap."""
    if name is None:
        return "anonymous"
    if not _OPERATION_NAME.match(name):
        return "other"
    with _seen_lock:
        if name in _seen_operations:
            return name
        if len(_seen_operations) >= MAX_OPERATION_LABELS:
            return "other"
        _seen_operations.add(name)
    return name


def observe_graphql(operation: str, status: int, seconds: float) -> None:
    """Count one GraphQL request; `operation` is already a label (see `operation_label`)."""
    requests, latency = _series(operation, status)
    requests.inc()
    latency.observe(seconds)


@lru_cache(maxsize=4 * MAX_OPERATION_LABELS)
def _series(operation: str, status: int) -> tuple[Counter, Histogram]:
    """The two series a request updates (prometheus_client's label lookup, once per pair;
    operation labels are capped, statuses few)."""
    return (
        GRAPHQL_REQUESTS.labels(operation=operation, status=str(status)),
        GRAPHQL_LATENCY.labels(operation=operation),
    )


async def job_family(redis: Redis) -> Metric:
    """Job runs by job and outcome, as counted in Redis by every worker."""
    family = CounterMetricFamily(
        "portal_jobs",
        "Background job runs by job and outcome (complete, retry, outage, failed, cancelled), "
        "summed over every worker.",
        labels=["job", "outcome"],
    )
    for (job, outcome), count in sorted((await job_counts(redis)).items()):
        family.add_metric([job, outcome], float(count))
    return family


async def worker_families(redis: Redis, settings: Settings) -> list[Metric]:
    """Worker liveness, queue depth and dependency outages, as workers recorded them."""
    ages = GaugeMetricFamily(
        "portal_worker_heartbeat_age_seconds",
        "Seconds since each worker's last heartbeat (written while its poll loop turns and "
        "PostgreSQL answers); a worker silent for the heartbeat TTL is no longer listed.",
        labels=["worker"],
    )
    beats = await heartbeat_ages(
        redis, ttl=settings.worker_heartbeat_ttl_seconds, queue=settings.queue_name
    )
    for worker_id, age in sorted(beats.items()):
        ages.add_metric([worker_id], age)
    depth = await queue_depth(redis, settings.queue_name)
    queued = GaugeMetricFamily(
        "portal_job_queue_depth",
        "Jobs waiting in the arq queue: due now, or deferred to a later time.",
        labels=["state"],
    )
    queued.add_metric(["due"], float(depth.due))
    queued.add_metric(["deferred"], float(depth.deferred))
    totals = await outage_totals(redis)
    count = CounterMetricFamily(
        "portal_dependency_outages",
        "Outages of PostgreSQL or Redis that workers waited out, recorded when each ended.",
        labels=["dependency"],
    )
    seconds = CounterMetricFamily(
        "portal_dependency_outage_seconds",
        "Seconds workers spent waiting for PostgreSQL or Redis, summed over ended outages.",
        labels=["dependency"],
    )
    for dependency, total in totals.items():
        count.add_metric([dependency.value], float(total.count))
        seconds.add_metric([dependency.value], total.seconds)
    return [ages, queued, count, seconds]


class _Families:
    """Metric families fetched before rendering (prometheus_client collects synchronously)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def database_families(db: Database, now: datetime) -> list[Metric]:
    """Payments by state and ingestion lag per connection: one aggregate query each."""
    payments = GaugeMetricFamily(
        "portal_payments", "Payments in the portal by recovery state.", labels=["state"]
    )
    lag = GaugeMetricFamily(
        "portal_ingestion_lag_seconds",
        "Seconds between now and the ingestion cursor of each processor connection "
        "(its creation time while it has never been read).",
        labels=["connection", "processor"],
    )
    behind = func.coalesce(col(ProcessorConnection.cursor_at), col(ProcessorConnection.created_at))
    async with db.session(SYSTEM_SCOPE) as session:
        by_state = select(col(Payment.state), func.count()).group_by(col(Payment.state))
        counts: dict[PaymentState, int] = dict((await session.execute(by_state)).all())
        lags = (
            await session.execute(
                select(
                    col(ProcessorConnection.id),
                    col(ProcessorConnection.kind),
                    func.extract("epoch", literal(now, DateTime(timezone=True)) - behind),
                ).order_by(col(ProcessorConnection.id))
            )
        ).all()
        for connection_id, kind, seconds in lags:
            lag.add_metric([str(connection_id), kind.value], float(seconds))
    # Every state is reported, zero included, so a series never vanishes from a dashboard.
    for state in PaymentState:
        payments.add_metric([state.value], float(counts.get(state, 0)))
    return [payments, lag]


def _authorized(request: Request, settings: Settings) -> bool:
    if settings.metrics_token is None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), expected)


def metrics_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """The /metrics route handler, bound to the app's settings."""

    async def metrics(request: Request) -> Response:
        if not _authorized(request, settings):
            return PlainTextResponse("unauthorized", 401, {"WWW-Authenticate": "Bearer"})
        db: Database = request.app.state.db
        clock: Clock = request.app.state.clock
        up = GaugeMetricFamily(
            "portal_metrics_database_up", "1 when the database part of this scrape succeeded."
        )
        families: list[Metric] = []
        try:
            families += await database_families(db, clock.now())
            up.add_metric([], 1.0)
        except Exception as exc:
            # A scrape must still answer with the process metrics when the database is down;
            # an outage is one line per scrape, a bug keeps its traceback.
            logger.warning(
                "metrics: database part of the scrape failed (%s)",
                type(exc).__name__,
                exc_info=not is_outage(exc),
            )
            up.add_metric([], 0.0)
        try:
            families.append(await job_family(request.app.state.redis))
            families += await worker_families(request.app.state.redis, settings)
        except Exception as exc:
            logger.warning(
                "metrics: reading worker figures from Redis failed (%s)",
                type(exc).__name__,
                exc_info=not is_outage(exc),
            )
        body = generate_latest(REGISTRY) + generate_latest(_Families([*families, up]))
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return metrics
