"""The soak: the stack under steady API load while faults are injected, then a drain and the
invariants (no double charge, charges equal attempts, everything ingested, no error outside an
outage, only outage answers inside one, no crash, processing resumes after every fault).

`run_soak(SoakConfig(...))` returns a `SoakReport`; bench/soak.py prints it, the fault test
asserts on it. Time in here is the harness's monotonic clock (seconds); the portal's simulated
clock only decides how fast payments fail, are retried and recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.crypto import CredentialBox
from app.db import Database
from app.enums import MerchantStatus, Processor, Role
from app.services.api_key import create_api_key
from app.services.connection import create_connection
from app.services.merchant import create_merchant, set_recovery_status
from app.services.retry.delivery import DELIVERY_HEADER
from app.services.webhook_endpoint import create_webhook_endpoint
from app.settings import normalize_database_url
from app.tenancy import SYSTEM_SCOPE, system_principal
from resolvers.ids import encode_id
from sandbox.server import serving
from tests.support.stack import Service, Stack, stack_folder

# After a dependency or an API process is back, its clients get this long to reconnect before
# an error counts as "outside a fault window" (pools find their dead connections on first use).
GRACE_SECONDS = 5.0
# Processing must be visible again (a new payment transition) this soon after each fault.
RESUME_BOUND_SECONDS = 60.0
# A process supervisor restarts a dead process after this pause.
SUPERVISOR_DELAY = 1.0
SAMPLE_EVERY = 0.5
REQUEST_TIMEOUT = 10.0
# The load never has more requests in flight than this: at the cap a tick is shed, not queued.
MAX_IN_FLIGHT = 32

# Transport errors where the server closed the connection before any answer.
CLOSED_WITHOUT_ANSWER = frozenset({"ReadError", "RemoteProtocolError", "WriteError"})
# Faults the schedule knows. API-affecting ones open windows for the API error figures.
API_FAULTS = frozenset({"postgres_restart", "redis_restart", "api_restart"})
FAULT_KINDS = (
    "postgres_restart",
    "redis_restart",
    "worker_kill",
    "api_restart",
    "processor_429",
    "processor_5xx",
)


@dataclass(frozen=True)
class SoakConfig:
    """How long, how hard, and which faults when (each at a fraction of the load phase)."""

    minutes: float
    faults: tuple[tuple[float, str], ...]
    rate: float = 60.0
    speed: float = 3600.0
    processors: tuple[Processor, ...] = (Processor.STRIPE, Processor.BRAINTREE, Processor.ADYEN)
    customers: int = 8000
    history_days: int = 2
    # How long PostgreSQL or Redis stays down in a restart: long enough to be an outage that
    # clients notice, as a crash and restart by a supervisor is.
    outage_seconds: float = 3.0
    processor_window_seconds: float = 15.0
    drain_seconds: float = 120.0
    seed: int = 7
    keep: Path | None = None
    progress: Callable[[str], None] = print

    def __post_init__(self) -> None:
        unknown = {kind for _, kind in self.faults} - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")


@dataclass
class Tenant:
    """One merchant of the soak, connected to one sandbox account."""

    name: str
    processor: Processor
    merchant_id: uuid.UUID
    merchant_gid: str
    connection_id: uuid.UUID
    account_id: str
    token: str


@dataclass
class Tenants:
    """The merchants, and the keys that act on them."""

    merchants: list[Tenant]
    partner_token: str
    partner_merchants: list[str]
    support_token: str


@dataclass
class Sample:
    """One API request: when, where, what, and how it ended."""

    op: str
    api: int
    start: float
    end: float
    status: int | None
    code: str
    retry_after: bool = False

    @property
    def label(self) -> str:
        """'status code' as the report counts it ('-' when no HTTP answer came)."""
        return f"{self.status or '-'} {self.code}"

    @property
    def ok(self) -> bool:
        # A version conflict is the optimistic lock doing its job between concurrent editors.
        return self.code in {"OK", "VERSION_CONFLICT"}


@dataclass
class FaultRecord:
    """One injected fault: from when it started until the service was back."""

    kind: str
    target: str
    start: float
    end: float = 0.0
    detail: str = ""

    @property
    def affects_api(self) -> bool:
        return self.kind in API_FAULTS


@dataclass
class MonitorSample:
    """What the monitor saw at one instant."""

    at: float
    transitions: int | None
    heartbeats: dict[str, str] | None
    ready: list[int | None]
    ready_bodies: list[dict[str, Any] | None]


@dataclass
class ExitRecord:
    """A process that ended without being asked to."""

    name: str
    code: int
    at: float
    tail: str


@dataclass
class Invariant:
    """One property the run must keep."""

    name: str
    ok: bool
    detail: str


@dataclass
class Resume:
    """How long after a fault's end each sign of life came back (seconds, None: never)."""

    fault: FaultRecord
    processing: float | None
    ready: float | None
    heartbeat: float | None
    heartbeat_seen: bool


@dataclass
class SoakReport:
    """Everything a run measured; `failed` lists the broken invariants."""

    config: SoakConfig
    load_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    shed: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    exits: list[ExitRecord] = field(default_factory=list)
    resumes: list[Resume] = field(default_factory=list)
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)
    generated_failed: int = 0
    ingested_failed: int = 0
    sandbox_charges: int = 0
    portal_attempts: int = 0
    sandbox_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    keys: int = 0
    replays: int = 0
    webhook_deliveries: int = 0
    webhook_duplicates: int = 0
    drain_seconds: float | None = None
    retrying_left: int = 0
    payment_states: dict[str, int] = field(default_factory=dict)
    states_at_load_end: dict[str, int] = field(default_factory=dict)
    invariants: list[Invariant] = field(default_factory=list)

    @property
    def failed(self) -> list[Invariant]:
        return [i for i in self.invariants if not i.ok]

    def windows(self, sample: Sample) -> list[FaultRecord]:
        """The API-affecting fault windows (grace included) a request overlapped."""
        return [
            f
            for f in self.faults
            if f.affects_api and sample.start <= f.end + GRACE_SECONDS and sample.end >= f.start
        ]

    def inside(self, sample: Sample) -> bool:
        """Whether a request overlapped an API-affecting fault window."""
        return bool(self.windows(sample))

    def outage_answer(self, sample: Sample) -> bool:
        """Whether a failed request failed the way an outage must show: 503 with
        SERVICE_UNAVAILABLE and Retry-After, or no connection at all. A connection the server
        closed without answering counts as none only from the API process being restarted
        (HTTP keep-alive races its shutdown); anywhere else it is a dropped request."""
        if sample.status == 503 and sample.code == "SERVICE_UNAVAILABLE":
            return sample.retry_after
        if sample.code == "CONNECTION_REFUSED":
            return True
        if sample.status is None and sample.code in CLOSED_WITHOUT_ANSWER:
            return any(
                f.kind == "api_restart" and f.target == f"api{sample.api + 1}"
                for f in self.windows(sample)
            )
        return False

    def errors(self, *, inside: bool) -> Counter[str]:
        """Errors by 'status code' label, inside or outside the fault windows."""
        return Counter(s.label for s in self.samples if not s.ok and self.inside(s) is inside)

    def errors_by_fault(self) -> Counter[str]:
        """Errors inside windows, by the faults they overlapped and their label."""
        return Counter(
            f"{'+'.join(sorted({f.kind for f in self.windows(s)}))}: {s.label}"
            + ("" if self.outage_answer(s) else " (not an outage answer)")
            for s in self.samples
            if not s.ok and self.inside(s)
        )

    def format(self) -> str:
        """The figures, as the soak prints them."""
        lines: list[str] = []
        total = len(self.samples)
        rate = total / self.load_seconds if self.load_seconds else 0.0
        outside = [s for s in self.samples if not self.inside(s)]
        inside = [s for s in self.samples if self.inside(s)]
        lines.append(
            f"load: {total:,} requests in {self.load_seconds:.0f} s ({rate:.1f}/s), "
            f"{self.shed} shed at the in-flight cap of {MAX_IN_FLIGHT}"
        )
        by_op = Counter(s.op for s in self.samples)
        lines.append("  by operation: " + ", ".join(f"{k} {v}" for k, v in sorted(by_op.items())))
        conflicts = sum(1 for s in self.samples if s.code == "VERSION_CONFLICT")
        lines.append(f"  version conflicts (expected, optimistic locking): {conflicts}")
        for label, group, inside_flag in (("outside", outside, False), ("inside", inside, True)):
            errors = self.errors(inside=inside_flag)
            share = sum(errors.values()) / len(group) if group else 0.0
            detail = ", ".join(f"{k}: {v}" for k, v in errors.most_common()) or "none"
            lines.append(
                f"API errors {label} fault windows: {sum(errors.values())} of {len(group)} "
                f"({share:.2%}) - {detail}"
            )
        for fault_label, n in sorted(self.errors_by_fault().items()):
            lines.append(f"  {fault_label}: {n}")
        ok = [s.end - s.start for s in self.samples if s.ok]
        ok_out = [s.end - s.start for s in outside if s.ok]
        lines.append(
            f"latency (ok requests): {_percentiles(ok)}; outside windows: {_percentiles(ok_out)}"
        )
        lines.append("faults (t = seconds since load start):")
        t0 = self.samples[0].start if self.samples else 0.0
        for r in self.resumes:
            f = r.fault
            heartbeat = (
                _secs(r.heartbeat) if r.heartbeat_seen else "n/a (no worker heartbeat in Redis)"
            )
            lines.append(
                f"  {f.kind:17s} {f.target:9s} t={f.start - t0:6.1f} down {f.end - f.start:5.1f} s;"
                f" resumed: processing {_secs(r.processing)}, /readyz {_secs(r.ready)},"
                f" heartbeat {heartbeat}" + (f" ({f.detail})" if f.detail else "")
            )
        for e in self.exits:
            lines.append(f"  UNEXPECTED EXIT {e.name} code {e.code} at t={e.at - t0:.1f}")
        lines.append(
            f"payments: sandbox generated {self.generated_failed:,} failed charges, portal "
            f"ingested {self.ingested_failed:,}"
        )
        lines.append(
            f"charges: sandbox made {self.sandbox_charges:,} retry charges under {self.keys:,} "
            f"keys ({self.replays:,} idempotent replays); portal recorded "
            f"{self.portal_attempts:,} attempts"
        )
        lines.append(f"sandbox charges by kind and status: {self.sandbox_counts}")
        lines.append(f"payment states at load end: {self.states_at_load_end}")
        lines.append(f"payment states after the drain (merchants paused): {self.payment_states}")
        lines.append(
            f"webhooks received: {self.webhook_deliveries:,} deliveries "
            f"({self.webhook_duplicates:,} repeated)"
        )
        drained = _secs(self.drain_seconds) if self.drain_seconds is not None else "not drained"
        lines.append(f"drain: {drained}; payments left RETRYING: {self.retrying_left}")
        lines.append(
            "memory (MiB; RSS, PostgreSQL as PSS summed over its processes), "
            "10 s into the load -> load end:"
        )
        for name in self.rss_start:
            start, end = self.rss_start[name] / 1024, self.rss_end.get(name, 0) / 1024
            lines.append(f"  {name:24s} {start:7.1f} -> {end:7.1f}")
        lines.append("invariants:")
        for inv in self.invariants:
            lines.append(f"  [{'ok' if inv.ok else 'FAIL'}] {inv.name}: {inv.detail}")
        return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.0f} ms, p99 {cuts[98] * 1000:.0f} ms"


# --- set-up ---------------------------------------------------------------------------------


async def set_up_tenants(stack: Stack, config: SoakConfig, receiver_url: str) -> Tenants:
    """Merchants with connections to sandbox accounts, webhook endpoints, and API keys of every
    role, written as an operator's tools would (the services, as the system principal)."""
    db = Database.from_url(normalize_database_url(stack.postgres.url))
    box = CredentialBox(stack.secret_key)
    principal = system_principal("soak")
    now = stack.time.now()
    made: list[tuple[Tenant, dict[str, Any]]] = []
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            for index, kind in enumerate(config.processors):
                name = f"Soak {kind.value}"
                merchant = await create_merchant(uow, name=name, principal=principal, now=now)
                account_id = f"soak_{kind.value}_{index}"
                api_key = f"key_{uuid.uuid4().hex}"
                credentials = {"api_key": api_key}
                if kind is Processor.BRAINTREE:
                    credentials = {"public_key": account_id, "private_key": api_key}
                hmac_key = uuid.uuid4().hex * 2
                if kind is Processor.ADYEN:
                    credentials["hmac_key_hex"] = hmac_key
                connection = await create_connection(
                    uow,
                    principal=principal,
                    merchant_id=merchant.id,
                    kind=kind,
                    base_url=f"{stack.sandbox_url}/{kind.value}",
                    credentials=credentials,
                    box=box,
                    account_ref=account_id,
                    now=now,
                )
                await create_webhook_endpoint(
                    uow,
                    principal=principal,
                    merchant_id=merchant.id,
                    url=receiver_url,
                    box=box,
                    now=now,
                )
                _, token = await create_api_key(
                    uow, name=f"{name} key", role=Role.MERCHANT, merchant_ids=[merchant.id], now=now
                )
                body: dict[str, Any] = {
                    "processor": kind.value,
                    "account_id": account_id,
                    "merchant_seed": config.seed + index,
                    "api_key": api_key,
                    "history_days": config.history_days,
                    "customers": config.customers,
                }
                if kind is Processor.ADYEN:
                    # Pushed to the first API process, as a load balancer would route them.
                    body["webhook_url"] = f"{stack.api_url(0)}/webhooks/adyen/{connection.id}"
                    body["hmac_key_hex"] = hmac_key
                tenant = Tenant(
                    name,
                    kind,
                    merchant.id,
                    encode_id("Merchant", merchant.id),
                    connection.id,
                    account_id,
                    token,
                )
                made.append((tenant, body))
            ids = [t.merchant_id for t, _ in made]
            _, partner = await create_api_key(
                uow, name="soak partner", role=Role.PARTNER, merchant_ids=ids[:2], now=now
            )
            _, support = await create_api_key(
                uow, name="soak support", role=Role.SUPPORT, merchant_ids=[], now=now
            )
            await uow.commit()
    finally:
        await db.dispose()
    # Accounts only once the connections are committed: Adyen starts pushing at once.
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=60, trust_env=False) as admin:
        for _, body in made:
            (await admin.post("/_sandbox/accounts", json=body)).raise_for_status()
    tenants = [t for t, _ in made]
    return Tenants(tenants, partner, [t.merchant_gid for t in tenants[:2]], support)


async def set_sandbox_clock(stack: Stack, *, frozen: bool = False) -> None:
    """Give the sandbox the portal's simulated time (or stop it there, for the drain)."""
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=30, trust_env=False) as admin:
        body = {"start": stack.time.now().isoformat(), "speed": 0 if frozen else stack.time.speed}
        (await admin.post("/_sandbox/clock", json=body)).raise_for_status()


class WebhookReceiver:
    """The merchants' webhook endpoint: acknowledges and counts deliveries by delivery id."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.app = Starlette(routes=[Route("/hook", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        await request.body()
        self.seen[request.headers.get(DELIVERY_HEADER, "")] += 1
        return PlainTextResponse("ok")


# --- load -----------------------------------------------------------------------------------

PAYMENTS = """query Payments($m: ID!) { merchant(id: $m) { payments(first: 20) { edges { node {
  id state processor failedAt nextRetryAt attemptCount amount { amountMinor currency }
  decline { category retryable advice } card { brand last4 } } }
  pageInfo { hasNextPage endCursor } } } }"""
DETAIL = """query Payment($id: ID!) { node(id: $id) { ... on Payment { state
  amount { amountMinor currency } failedAt recoveredAt recoveredBy
  attempts { number attemptedAt outcome actor } timeline { at fromState toState event } } } }"""
STATS = """query Stats($m: ID!, $from: DateTime!, $to: DateTime!) { merchant(id: $m) {
  recoveryStats(from: $from, to: $to, granularity: DAY) { currencies { currency
  summary { failedCount recoveredCount recoveredAmount inRecoveryAmount } } } } }"""
VIEWER = "query Viewer { viewer { role name } }"
POLICY = "query Policy($m: ID!) { merchant(id: $m) { retryPolicy { version maxAttempts } } }"
UPDATE = """mutation Update($input: UpdateRetryPolicyInput!) { updateRetryPolicy(input: $input) {
  retryPolicy { version maxAttempts } errors { code message } } }"""


def classify(response: httpx.Response) -> tuple[str, Any]:
    """The outcome code of a GraphQL answer (OK, a payload error code, or the top-level error's
    code) and its data."""
    try:
        body = response.json()
    except ValueError:
        return "NON_JSON", None
    if not isinstance(body, dict):
        return "NON_JSON", None
    errors = body.get("errors")
    if errors:
        extensions = errors[0].get("extensions") or {}
        return str(extensions.get("code") or "UNCODED"), body.get("data")
    if response.status_code != 200:
        return "UNCODED", None
    data = body.get("data") or {}
    payload = data.get("updateRetryPolicy")
    if isinstance(payload, dict) and payload.get("errors"):
        return str(payload["errors"][0].get("code")), data
    return "OK", data


class Load:
    """A steady mixed GraphQL load over every API process, from every kind of key."""

    def __init__(self, stack: Stack, tenants: Tenants, rate: float, seed: int) -> None:
        self.stack = stack
        self.tenants = tenants
        self.rate = rate
        self.rng = random.Random(seed)
        self.samples: list[Sample] = []
        self.shed = 0
        self.payment_ids: dict[str, list[str]] = {t.merchant_gid: [] for t in tenants.merchants}
        self._apis = itertools.cycle(range(len(stack.apis)))

    def _caller(self) -> tuple[str, str]:
        """A key and a merchant it may see: merchant 50%, partner 20%, support 30%."""
        draw = self.rng.random()
        if draw < 0.5:
            tenant = self.rng.choice(self.tenants.merchants)
            return tenant.token, tenant.merchant_gid
        if draw < 0.7:
            return self.tenants.partner_token, self.rng.choice(self.tenants.partner_merchants)
        return self.tenants.support_token, self.rng.choice(self.tenants.merchants).merchant_gid

    async def _post(
        self, http: httpx.AsyncClient, op: str, token: str, query: str, variables: dict[str, Any]
    ) -> tuple[str, Any]:
        api = next(self._apis)
        start = time.monotonic()
        status: int | None = None
        retry_after = False
        data: Any = None
        try:
            response = await http.post(
                f"{self.stack.api_url(api)}/graphql",
                json={"query": query, "variables": variables},
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/graphql-response+json",
                },
            )
            status = response.status_code
            retry_after = "retry-after" in response.headers
            code, data = classify(response)
        except httpx.ConnectError:
            code = "CONNECTION_REFUSED"
        except httpx.TimeoutException:
            code = "TIMEOUT"
        except httpx.TransportError as exc:
            code = type(exc).__name__
        self.samples.append(Sample(op, api, start, time.monotonic(), status, code, retry_after))
        return code, data

    async def one(self, http: httpx.AsyncClient) -> None:
        """One operation, drawn by weight: payments page, detail, stats, viewer, policy edit."""
        token, merchant = self._caller()
        draw = self.rng.random()
        if draw < 0.30:
            code, data = await self._post(http, "payments", token, PAYMENTS, {"m": merchant})
            if code == "OK" and data and data.get("merchant"):
                ids = [e["node"]["id"] for e in data["merchant"]["payments"]["edges"]]
                known = self.payment_ids[merchant]
                known.extend(i for i in ids if i not in known)
                del known[:-500]
        elif draw < 0.55:
            known = self.payment_ids[merchant]
            if known:
                await self._post(http, "detail", token, DETAIL, {"id": self.rng.choice(known)})
            else:
                await self._post(http, "viewer", token, VIEWER, {})
        elif draw < 0.70:
            now = self.stack.time.now()
            day = now.replace(hour=0, minute=0, second=0, microsecond=0)
            variables = {
                "m": merchant,
                "from": (day - timedelta(days=30)).isoformat(),
                "to": (day + timedelta(days=2)).isoformat(),
            }
            await self._post(http, "stats", token, STATS, variables)
        elif draw < 0.92:
            await self._post(http, "viewer", token, VIEWER, {})
        else:
            await self._edit_policy(http)

    async def _edit_policy(self, http: httpx.AsyncClient) -> None:
        """Read the policy's version, then change it with expectedVersion (merchant or support)."""
        tenant = self.rng.choice(self.tenants.merchants)
        token = tenant.token if self.rng.random() < 0.5 else self.tenants.support_token
        code, data = await self._post(http, "policy", token, POLICY, {"m": tenant.merchant_gid})
        if code != "OK" or not data or not data.get("merchant"):
            return
        policy = data["merchant"]["retryPolicy"]
        change = {
            "merchantId": tenant.merchant_gid,
            "expectedVersion": policy["version"],
            "maxAttempts": 5 if policy["maxAttempts"] != 5 else 6,
            "reason": "soak: steady configuration changes",
        }
        await self._post(http, "update", token, UPDATE, {"input": change})

    async def run(self, seconds: float) -> None:
        """Issue requests at `rate` per second for `seconds`; never more than the in-flight cap."""
        interval = 1.0 / self.rate
        limits = httpx.Limits(
            max_connections=MAX_IN_FLIGHT * 2, max_keepalive_connections=MAX_IN_FLIGHT
        )
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False
        ) as http:
            start = time.monotonic()
            for tick in range(int(seconds * self.rate)):
                delay = start + tick * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= MAX_IN_FLIGHT:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self.one(http))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT * 3)


# --- monitor, supervisor, faults -------------------------------------------------------------


class Monitor:
    """Every half second: payment transitions so far, worker heartbeats in Redis, /readyz."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.samples: list[MonitorSample] = []
        self.heartbeat_keys: set[str] = set()

    async def _transitions(self, conn: asyncpg.Connection | None) -> tuple[int | None, Any]:
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(self.stack.postgres.url, timeout=2)
            value = await conn.fetchval("SELECT count(*) FROM payment_transition", timeout=2)
            return int(value), conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if conn is not None:
                conn.terminate()
            return None, None

    async def _heartbeats(self, redis: Redis) -> dict[str, str] | None:
        try:
            found: dict[str, str] = {}
            async for raw in redis.scan_iter(match="*heartbeat*", count=1000):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                kind = await redis.type(key)
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if kind == "string":
                    found[key] = repr(await redis.get(key))
                elif kind == "hash":
                    found[key] = repr(sorted((await redis.hgetall(key)).items()))  # type: ignore[misc]
                else:
                    found[key] = f"{kind} ttl={await redis.pttl(key)}"
            self.heartbeat_keys.update(found)
            return found
        except Exception:
            # Redis down: no reading at this instant.
            return None

    async def _ready(self, http: httpx.AsyncClient, index: int) -> tuple[int | None, Any]:
        try:
            response = await http.get(f"{self.stack.api_url(index)}/readyz")
            body = response.json()
            return response.status_code, body if isinstance(body, dict) else None
        except (httpx.HTTPError, ValueError):
            return None, None

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until `stop` is set."""
        conn: Any = None
        redis = Redis.from_url(self.stack.redis.url, socket_timeout=2, socket_connect_timeout=2)
        async with httpx.AsyncClient(timeout=3, trust_env=False) as http:
            try:
                while not stop.is_set():
                    at = time.monotonic()
                    transitions, conn = await self._transitions(conn)
                    heartbeats = await self._heartbeats(redis)
                    ready = await asyncio.gather(
                        *(self._ready(http, i) for i in range(len(self.stack.apis)))
                    )
                    self.samples.append(
                        MonitorSample(
                            at,
                            transitions,
                            heartbeats,
                            [r[0] for r in ready],
                            [r[1] for r in ready],
                        )
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
            finally:
                if conn is not None:
                    conn.terminate()
                await redis.aclose()

    def resume(self, fault: FaultRecord) -> Resume:
        """Seconds from the fault's end until processing, readiness and a heartbeat were back."""
        before = [s for s in self.samples if s.at <= fault.end and s.transitions is not None]
        after = [s for s in self.samples if s.at > fault.end]
        baseline = before[-1].transitions if before else None
        processing = next(
            (
                s.at - fault.end
                for s in after
                if s.transitions is not None and baseline is not None and s.transitions > baseline
            ),
            None,
        )
        ready = next(
            (s.at - fault.end for s in after if s.ready and all(r == 200 for r in s.ready)), None
        )
        beats_before = next(
            (s.heartbeats for s in reversed(self.samples) if s.at <= fault.end and s.heartbeats),
            {},
        )
        heartbeat = next(
            (
                s.at - fault.end
                for s in after
                if s.heartbeats and any(beats_before.get(k) != v for k, v in s.heartbeats.items())
            ),
            None,
        )
        return Resume(fault, processing, ready, heartbeat, bool(self.heartbeat_keys))


class Supervisor:
    """Restarts a portal process that died on its own, as systemd or Kubernetes would, and
    records the death: the portal's processes must never exit on a dependency outage."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.exits: list[ExitRecord] = []
        # Held while a fault stops and starts a process itself.
        self.lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self.lock:
                for service in self.stack.services():
                    code = service.unexpected_exit()
                    if code is None:
                        continue
                    self.exits.append(
                        ExitRecord(service.name, code, time.monotonic(), service.tail())
                    )
                    await asyncio.sleep(SUPERVISOR_DELAY)
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(service.start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


class Faults:
    """The faults the schedule names, each one recorded as a window."""

    def __init__(self, stack: Stack, tenants: Tenants, config: SoakConfig, supervisor: Supervisor):
        self.stack = stack
        self.tenants = tenants
        self.config = config
        self.supervisor = supervisor
        self.records: list[FaultRecord] = []
        self._counts: Counter[str] = Counter()

    async def inject(self, kind: str) -> None:
        """Run one fault to its end (the service is back, or the window closed)."""
        self._counts[kind] += 1
        n = self._counts[kind]
        actions: dict[str, Callable[[int], Awaitable[FaultRecord]]] = {
            "postgres_restart": self._postgres,
            "redis_restart": self._redis,
            "worker_kill": self._worker_kill,
            "api_restart": self._api_restart,
            "processor_429": self._processor_429,
            "processor_5xx": self._processor_5xx,
        }
        record = await actions[kind](n)
        self.records.append(record)
        self.config.progress(
            f"fault {record.kind} ({record.target}) over in {record.end - record.start:.1f} s"
        )

    async def _postgres(self, n: int) -> FaultRecord:
        record = FaultRecord("postgres_restart", "postgres", time.monotonic())
        await asyncio.to_thread(self.stack.postgres.stop, "fast")
        await asyncio.sleep(self.config.outage_seconds)
        await asyncio.to_thread(self.stack.postgres.start)
        record.end = time.monotonic()
        return record

    async def _redis(self, n: int) -> FaultRecord:
        record = FaultRecord("redis_restart", "redis", time.monotonic())
        await asyncio.to_thread(self.stack.redis.kill)
        await asyncio.sleep(self.config.outage_seconds)
        await asyncio.to_thread(self.stack.redis.start)
        record.end = time.monotonic()
        return record

    async def _restart(self, service: Service, sig: signal.Signals, kind: str) -> FaultRecord:
        async with self.supervisor.lock:
            record = FaultRecord(kind, service.name, time.monotonic())
            service.signal(sig)
            code = await asyncio.to_thread(service.wait_exit)
            record.detail = f"exit code {code}"
            await asyncio.sleep(SUPERVISOR_DELAY)
            await asyncio.to_thread(service.start)
            record.end = time.monotonic()
            return record

    async def _worker_kill(self, n: int) -> FaultRecord:
        worker = self.stack.workers[(n - 1) % len(self.stack.workers)]
        return await self._restart(worker, signal.SIGKILL, "worker_kill")

    async def _api_restart(self, n: int) -> FaultRecord:
        # The first API receives the Adyen webhooks: its restart is felt by ingestion too.
        api = self.stack.apis[(n - 1) % len(self.stack.apis)]
        return await self._restart(api, signal.SIGTERM, "api_restart")

    async def _processor(self, kind: str, settings: dict[str, Any]) -> FaultRecord:
        record = FaultRecord(kind, "sandbox", time.monotonic())
        async with httpx.AsyncClient(
            base_url=self.stack.sandbox_url, timeout=30, trust_env=False
        ) as admin:
            for tenant in self.tenants.merchants:
                path = f"/_sandbox/accounts/{tenant.account_id}/faults"
                (await admin.post(path, json=settings)).raise_for_status()
            await asyncio.sleep(self.config.processor_window_seconds)
            for tenant in self.tenants.merchants:
                path = f"/_sandbox/accounts/{tenant.account_id}/faults"
                (await admin.post(path, json={})).raise_for_status()
        record.end = time.monotonic()
        return record

    async def _processor_429(self, n: int) -> FaultRecord:
        # A counter far larger than the window's requests: every read and charge is refused.
        return await self._processor("processor_429", {"rate_limit": 1_000_000, "writes": True})

    async def _processor_5xx(self, n: int) -> FaultRecord:
        return await self._processor("processor_5xx", {"server_error": 1_000_000, "writes": True})


async def _schedule(faults: Faults, config: SoakConfig, started: float, seconds: float) -> None:
    for fraction, kind in sorted(config.faults):
        delay = started + fraction * seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await faults.inject(kind)
        except Exception as exc:
            # A fault that could not be injected is reported, and the run goes on.
            faults.records.append(
                FaultRecord(kind, "harness", time.monotonic(), time.monotonic(), f"failed: {exc!r}")
            )


# --- drain and invariants --------------------------------------------------------------------


@dataclass
class Ledgers:
    """What the sandbox did and what the portal recorded, read at one moment."""

    failed_ids: dict[uuid.UUID, list[str]]
    counts: dict[str, dict[str, int]]
    retries: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    keyless: int
    portal_ids: dict[uuid.UUID, set[str]]
    portal_attempts: list[str]
    retrying: int
    states: dict[str, int]

    def missing(self) -> list[str]:
        """Failed charges of the sandbox that the portal has not ingested."""
        return [
            charge
            for merchant, ids in self.failed_ids.items()
            for charge in ids
            if charge not in self.portal_ids.get(merchant, set())
        ]

    def settled(self) -> bool:
        """Ingestion caught up, nothing in flight, and every charge recorded once."""
        return (
            not self.missing()
            and self.retrying == 0
            and sorted(r["id"] for r in self.retries) == sorted(self.portal_attempts)
        )


async def read_ledgers(stack: Stack, tenants: Tenants) -> Ledgers:
    """Both sides' books: the sandbox's admin API and the portal's database."""
    failed: dict[uuid.UUID, list[str]] = {}
    counts: dict[str, dict[str, int]] = {}
    retries: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    keyless = 0
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=60, trust_env=False) as admin:
        for t in tenants.merchants:
            base = f"/_sandbox/accounts/{t.account_id}"
            history = (await admin.get(f"{base}/history")).json()
            failed[t.merchant_id] = history["failed"]
            for kind, by_status in history["counts"].items():
                into = counts.setdefault(kind, {})
                for status, n in by_status.items():
                    into[status] = into.get(status, 0) + n
            retries += (await admin.get(f"{base}/charges")).json()["data"]
            ledger = (await admin.get(f"{base}/idempotency")).json()
            keys += ledger["keys"]
            keyless += ledger["keyless"]
    conn = await asyncpg.connect(stack.postgres.url, timeout=10)
    try:
        portal_ids: dict[uuid.UUID, set[str]] = {}
        rows = await conn.fetch(
            """SELECT merchant_id, processor_payment_id AS id FROM payment
               UNION ALL
               SELECT merchant_id, processor_attempt_id FROM payment_attempt
               WHERE processor_attempt_id IS NOT NULL"""
        )
        for row in rows:
            portal_ids.setdefault(row["merchant_id"], set()).add(row["id"])
        attempts = [
            r["processor_attempt_id"]
            for r in await conn.fetch(
                "SELECT processor_attempt_id FROM payment_attempt "
                "WHERE actor = 'portal' AND processor_attempt_id IS NOT NULL"
            )
        ]
        states = {
            str(r["state"]): int(r["n"])
            for r in await conn.fetch("SELECT state, count(*) AS n FROM payment GROUP BY state")
        }
    finally:
        await conn.close()
    return Ledgers(
        failed,
        counts,
        retries,
        keys,
        keyless,
        portal_ids,
        attempts,
        states.get("RETRYING", 0),
        states,
    )


async def drain(stack: Stack, tenants: Tenants, seconds: float) -> tuple[Ledgers, float | None]:
    """Stop the world's clock and the portal's new retries, then wait (bounded) until ingestion
    has caught up and every attempt in flight has finished. Returns the books and how long it
    took (None when it did not settle in time)."""
    await set_sandbox_clock(stack, frozen=True)
    db = Database.from_url(normalize_database_url(stack.postgres.url))
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            for t in tenants.merchants:
                await set_recovery_status(
                    uow,
                    principal=system_principal("soak"),
                    merchant_id=t.merchant_id,
                    status=MerchantStatus.PAUSED,
                    reason="soak drain: no new retries while the books are compared",
                    now=stack.time.now(),
                )
            await uow.commit()
    finally:
        await db.dispose()
    start = time.monotonic()
    pushed = 0.0
    ledgers = await read_ledgers(stack, tenants)
    while time.monotonic() - start < seconds:
        if ledgers.settled():
            # Twice in a row, so an attempt between two reads cannot fool the comparison.
            await asyncio.sleep(2)
            again = await read_ledgers(stack, tenants)
            if again.settled():
                return again, time.monotonic() - start
            ledgers = again
            continue
        if ledgers.missing() and time.monotonic() - pushed > 5:
            # Adyen re-sends refused batches with backoff up to 30 s: push what is due now.
            pushed = time.monotonic()
            async with httpx.AsyncClient(
                base_url=stack.sandbox_url, timeout=60, trust_env=False
            ) as admin:
                for t in tenants.merchants:
                    if t.processor is Processor.ADYEN:
                        await admin.post(f"/_sandbox/accounts/{t.account_id}/push")
        await asyncio.sleep(2)
        ledgers = await read_ledgers(stack, tenants)
    return ledgers, None


def _roots(retries: list[dict[str, Any]]) -> Counter[str]:
    """Successful retries per original charge (a retry may name an earlier retry)."""
    parent = {r["id"]: r["retry_of"] for r in retries}
    wins: Counter[str] = Counter()
    for r in retries:
        if r["outcome"] != "succeeded":
            continue
        root = r["retry_of"]
        for _ in range(len(parent) + 1):
            if root not in parent:
                break
            root = parent[root]
        wins[root] += 1
    return wins


def check(report: SoakReport, ledgers: Ledgers) -> list[Invariant]:
    """The invariants, each with the figures behind its verdict."""
    out: list[Invariant] = []
    doubled = [k for k in ledgers.keys if k["charges"] > 1]
    twice_paid = {root: n for root, n in _roots(ledgers.retries).items() if n > 1}
    out.append(
        Invariant(
            "no double charge",
            not doubled and not twice_paid and ledgers.keyless == 0,
            f"{len(ledgers.keys)} keys, {len(doubled)} charged more than once "
            f"{[k['key'] for k in doubled[:5]]}; {ledgers.keyless} charges without a key; "
            f"{len(twice_paid)} original charges paid by more than one retry "
            f"{list(twice_paid)[:5]}",
        )
    )
    sandbox = Counter(r["id"] for r in ledgers.retries)
    portal = Counter(ledgers.portal_attempts)
    only_sandbox = sorted((sandbox - portal).elements())
    only_portal = sorted((portal - sandbox).elements())
    out.append(
        Invariant(
            "sandbox charges == portal attempts",
            not only_sandbox and not only_portal,
            f"sandbox {sum(sandbox.values())}, portal {sum(portal.values())}; charged but not "
            f"recorded {len(only_sandbox)} {only_sandbox[:5]}; recorded but not charged "
            f"{len(only_portal)} {only_portal[:5]}",
        )
    )
    missing = ledgers.missing()
    generated = sum(len(v) for v in ledgers.failed_ids.values())
    out.append(
        Invariant(
            "generated == ingested (after drain)",
            not missing,
            f"{generated} failed charges generated, {generated - len(missing)} ingested; "
            f"missing {missing[:5]}",
        )
    )
    outside = report.errors(inside=False)
    out.append(
        Invariant(
            "no API error outside fault windows",
            not outside,
            ", ".join(f"{k}: {v}" for k, v in outside.most_common()) or "none",
        )
    )
    inside = [s for s in report.samples if not s.ok and report.inside(s)]
    wrong = Counter(s.label for s in inside if not report.outage_answer(s))
    out.append(
        Invariant(
            "inside fault windows only 503 SERVICE_UNAVAILABLE (Retry-After) or no connection",
            not wrong,
            ", ".join(f"{k}: {v}" for k, v in wrong.most_common())
            or f"all {len(inside)} errors were outage answers",
        )
    )
    out.append(
        Invariant(
            "no process exited on its own",
            not report.exits,
            "; ".join(
                f"{e.name} exited {e.code} ({e.tail.splitlines()[-1][:200] if e.tail else ''})"
                for e in report.exits
            )
            or "none",
        )
    )
    slow = [
        f"{r.fault.kind}/{r.fault.target}: {_secs(r.processing)}"
        for r in report.resumes
        if r.processing is None or r.processing > RESUME_BOUND_SECONDS
    ]
    injected = [f for f in report.faults if f.target != "harness"]
    broken = [f"{f.kind}: {f.detail}" for f in report.faults if f.target == "harness"]
    out.append(
        Invariant(
            f"processing resumed within {RESUME_BOUND_SECONDS:.0f} s after every fault",
            not slow and not broken,
            f"{len(injected)} faults injected; "
            + ("; ".join(slow + broken) if slow or broken else "all resumed"),
        )
    )
    out.append(
        Invariant(
            "drained: nothing in flight, books settled",
            report.drain_seconds is not None,
            f"{_secs(report.drain_seconds)}; RETRYING left: {ledgers.retrying}",
        )
    )
    return out


# --- the run ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _background(
    *jobs: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(job(stop)) for job in jobs]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()


async def run_soak(config: SoakConfig) -> SoakReport:
    """Start the stack, load it while the faults happen, drain, check; always stops everything."""
    report = SoakReport(config)
    say = config.progress
    with stack_folder(config.keep) as folder:
        stack = Stack(folder, speed=config.speed)
        receiver = WebhookReceiver()
        try:
            say(f"stack in {folder}: PostgreSQL :{stack.postgres.port}, Redis :{stack.redis.port}")
            await asyncio.to_thread(stack.start_infrastructure)
            await asyncio.to_thread(stack.migrate)
            await asyncio.to_thread(stack.sandbox.start)
            await set_sandbox_clock(stack)
            async with serving(receiver.app) as receiver_base:
                tenants = await set_up_tenants(stack, config, f"{receiver_base}/hook")
                for service in [*stack.apis, *stack.workers]:
                    await asyncio.to_thread(service.start)
                say(
                    f"{len(stack.apis)} API and {len(stack.workers)} worker processes up; "
                    f"simulated time x{config.speed:g} from {stack.time.now():%Y-%m-%d %H:%M}"
                )
                await _run_phases(stack, tenants, config, report)
                report.webhook_deliveries = sum(receiver.seen.values())
                report.webhook_duplicates = sum(n - 1 for n in receiver.seen.values())
        finally:
            await asyncio.to_thread(stack.shutdown)
    return report


async def _run_phases(
    stack: Stack, tenants: Tenants, config: SoakConfig, report: SoakReport
) -> None:
    seconds = config.minutes * 60
    load = Load(stack, tenants, config.rate, config.seed)
    monitor = Monitor(stack)
    supervisor = Supervisor(stack)
    faults = Faults(stack, tenants, config, supervisor)
    async with _background(monitor.run, supervisor.run):
        started = time.monotonic()
        config.progress(f"load {config.rate:g}/s for {seconds:.0f} s, {len(config.faults)} faults")
        await asyncio.gather(
            load.run(seconds),
            _schedule(faults, config, started, seconds),
            _measure_memory(stack, report, min(10.0, seconds / 6)),
        )
        report.load_seconds = time.monotonic() - started
        report.rss_end = stack.rss()
        report.states_at_load_end = (await read_ledgers(stack, tenants)).states
        config.progress(f"load done ({len(load.samples):,} requests); draining")
        ledgers, report.drain_seconds = await drain(stack, tenants, config.drain_seconds)
    report.samples = load.samples
    report.shed = load.shed
    report.faults = faults.records
    report.exits = supervisor.exits
    report.resumes = [monitor.resume(f) for f in faults.records if f.target != "harness"]
    report.generated_failed = sum(len(v) for v in ledgers.failed_ids.values())
    report.ingested_failed = report.generated_failed - len(ledgers.missing())
    report.sandbox_charges = len(ledgers.retries)
    report.portal_attempts = len(ledgers.portal_attempts)
    report.sandbox_counts = ledgers.counts
    report.keys = len(ledgers.keys)
    report.replays = sum(k["replays"] for k in ledgers.keys)
    report.retrying_left = ledgers.retrying
    report.payment_states = ledgers.states
    report.invariants = check(report, ledgers)


async def _measure_memory(stack: Stack, report: SoakReport, after: float) -> None:
    # Not at spawn time: a process is still importing then, and its figure would mean nothing.
    await asyncio.sleep(after)
    report.rss_start = stack.rss()


def default_faults() -> tuple[tuple[float, str], ...]:
    """The soak's schedule: every fault kind, the worker kill twice, spread over the run."""
    return (
        (0.08, "processor_429"),
        (0.18, "worker_kill"),
        (0.28, "postgres_restart"),
        (0.40, "api_restart"),
        (0.52, "processor_5xx"),
        (0.62, "worker_kill"),
        (0.74, "redis_restart"),
    )
