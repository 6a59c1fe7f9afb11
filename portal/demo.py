"""The live demo: sandbox processors, the API, an in-process worker and an accelerated clock."""

import asyncio
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import uvicorn
from arq.connections import ArqRedis

from app.clock import AcceleratedClock
from app.crypto import CredentialBox
from app.db import Database, UnitOfWork
from app.embedded import resolve_services
from app.enums import Processor, Role
from app.errors import PortalError
from app.models.ingestion import ProcessorConnection
from app.models.merchant import Merchant
from app.services.api_key import create_api_key
from app.services.connection import create_connection
from app.services.merchant import create_merchant
from app.services.model_registry import promote
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE, Principal, system_principal
from app.urls import UrlPolicy
from jobs.enqueue import enqueue_poll
from jobs.supervisor import Supervisor
from jobs.training import train_simulated
from jobs.worker import build_worker
from portal.asgi import Resources, create_app, queue_client, redis_client, server_options
from portal.migrate import upgrade_database
from sandbox.app import create_app as create_sandbox
from sandbox.common import connection_credentials
from sandbox.server import serving

DEMO_MERCHANTS: tuple[tuple[str, Processor], ...] = (
    ("Acme Streaming", Processor.STRIPE),
    ("Globex Fitness", Processor.BRAINTREE),
    ("Initech Cloud", Processor.CHECKOUT),
    ("Umbrella Learning", Processor.ADYEN),
)


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs."""

    port: int = 8000
    speed: float = 3600.0
    merchants: int = 4
    customers: int = 1500
    history_days: int = 14
    training_failures: int = 20_000


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: webhook receivers on this machine are allowed (whoever tries the
    demo points its webhooks at one) and GraphiQL is on, except in production, which refuses
    both."""
    if settings.environment == "production":
        return settings
    return settings.model_copy(update={"allow_loopback_urls": True, "graphiql": True})


async def run_demo(
    settings: Settings, options: DemoOptions, announce: Callable[[str], None]
) -> None:
    """Start everything on loopback and serve until cancelled (Ctrl-C)."""
    settings = demo_settings(settings)
    services = await resolve_services(settings)
    announce(f"portal using {services.describe()}")
    try:
        await asyncio.to_thread(upgrade_database, services.database_url)
        clock = AcceleratedClock(datetime.now(UTC), options.speed)
        db = Database.from_url(
            services.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        redis = redis_client(services.redis_url)
        arq = queue_client(services.redis_url, settings.queue_name)
        box = CredentialBox(settings.secret_key.get_secret_value())
        resources = Resources(db=db, redis=redis, arq=arq, clock=clock)
        # The demo runs its own worker: /readyz is not ready while that worker is not alive.
        app = create_app(
            settings.model_copy(update={"readyz_require_worker": True}), resources=resources
        )
        server = uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=options.port, **server_options(settings))
        )
        portal_url = f"http://{settings.host}:{options.port}"
        # Supervised like `portal worker`: a Redis or PostgreSQL restart pauses it, never ends
        # it, and anything else that ends its loop restarts it.
        supervisor = Supervisor(
            build_worker(
                services.redis_url,
                {"settings": settings, "db": db, "clock": clock, "box": box},
            ),
            settings,
        )
        async with serving(create_sandbox(clock.now)) as sandbox_url:
            lines, support_key = await _set_up_merchants(
                db, box, clock, sandbox_url, portal_url, options, arq, settings.url_policy
            )
            serve = asyncio.create_task(server.serve())
            work = asyncio.create_task(supervisor.run())
            # Training takes a while: the API serves at once, and until a champion is promoted
            # the merchants' model policies are scheduled by the decline-aware rules.
            training = asyncio.create_task(_train_demo_model(db, clock, options.training_failures))
            training.add_done_callback(lambda task: _announce_training(task, announce))
            # uvicorn offers a flag, not an event, for "listening".
            while not server.started and not serve.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            # The key rides in the fragment, which the browser keeps to itself.
            announce(f"Dashboard: {portal_url}/dashboard/#key={support_key}")
            announce(
                f"GraphQL: {portal_url}/graphql (GraphiQL in a browser: set the header "
                '{"Authorization": "Bearer <key>"} in its Headers tab; opened from the '
                "dashboard's GraphiQL link it is set already)"
            )
            announce(f"Sandbox processors: {sandbox_url} (simulated time x{options.speed:g})")
            for line in lines:
                announce(line)
            try:
                await serve
            finally:
                training.cancel()
                try:
                    await supervisor.stop()
                    await work  # raises only if a bug in the supervisor itself ended it
                finally:
                    await arq.aclose()
                    await redis.aclose()
                    await db.dispose()
    finally:
        services.close()


def _announce_training(task: "asyncio.Task[str]", announce: Callable[[str], None]) -> None:
    """Say how the demo's training ended (a cancelled one, at shutdown, says nothing)."""
    if task.cancelled():
        return
    error = task.exception()
    announce(f"Model training failed ({error!r})" if error else task.result())


async def _train_demo_model(db: Database, clock: AcceleratedClock, failures: int) -> str:
    """Train a timing model on simulated history and make it the champion, through the same
    gate as any other model; without it the demo's retries follow the decline-aware rules."""
    outcome = await train_simulated(db, failures, now=clock.now())
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            await promote(
                uow,
                principal=system_principal("demo"),
                model_id=uuid.UUID(outcome.model_id),
                reason="demo: trained on simulated history",
                now=clock.now(),
            )
            await uow.commit()
    except PortalError as exc:
        return f"Model not promoted ({exc.message}); retries follow the decline-aware rules"
    auc = outcome.metrics.get("auc")
    return f"Timing model trained on {failures:,} simulated failures (AUC {auc:.3f}), champion"


@dataclass(frozen=True)
class SandboxAccount:
    """An account of one sandbox processor, with the keys the portal connects to it with."""

    sandbox_url: str
    kind: Processor
    account_id: str
    api_key: str
    hmac_key: str


async def connect_sandbox_merchant(
    uow: UnitOfWork,
    account: SandboxAccount,
    *,
    name: str,
    principal: Principal,
    policy: UrlPolicy,
    box: CredentialBox,
    now: datetime,
) -> tuple[Merchant, ProcessorConnection]:
    """A new merchant named `name` with a connection to `account` (the demo's and the soak's)."""
    merchant = await create_merchant(uow, name=name, principal=principal, now=now)
    kind = account.kind.value
    connection = await create_connection(
        uow,
        principal=principal,
        merchant_id=merchant.id,
        kind=account.kind,
        base_url=f"{account.sandbox_url}/{kind}",
        policy=policy,
        credentials=connection_credentials(
            kind, account.account_id, account.api_key, account.hmac_key
        ),
        box=box,
        account_ref=account.account_id,
        now=now,
    )
    return merchant, connection


async def _set_up_merchants(
    db: Database,
    box: CredentialBox,
    clock: AcceleratedClock,
    sandbox_url: str,
    portal_url: str,
    options: DemoOptions,
    arq: ArqRedis,
    policy: UrlPolicy,
) -> tuple[list[str], str]:
    """The demo merchants with their sandbox accounts and keys: lines to print, and the
    support key."""
    now = clock.now()
    lines: list[str] = []
    principal = system_principal("demo")
    connection_ids = []
    async with (
        httpx.AsyncClient(base_url=sandbox_url, timeout=60) as admin,
        db.uow(SYSTEM_SCOPE) as uow,
    ):
        for index, (name, kind) in enumerate(DEMO_MERCHANTS[: options.merchants]):
            account_id = f"demo_{kind.value}_{secrets.token_hex(3)}"
            api_key = secrets.token_hex(12)
            hmac_key = secrets.token_hex(32)
            merchant, connection = await connect_sandbox_merchant(
                uow,
                SandboxAccount(sandbox_url, kind, account_id, api_key, hmac_key),
                name=name,
                principal=principal,
                policy=policy,
                box=box,
                now=now,
            )
            body: dict[str, object] = {
                "processor": kind.value,
                "account_id": account_id,
                "merchant_seed": 4242 + index,
                "api_key": api_key,
                "history_days": options.history_days,
                "customers": options.customers,
            }
            if kind is Processor.ADYEN:
                body["webhook_url"] = f"{portal_url}/webhooks/adyen/{connection.id}"
                body["hmac_key_hex"] = hmac_key
            (await admin.post("/_sandbox/accounts", json=body)).raise_for_status()
            _, token = await create_api_key(
                uow,
                name=f"{name} dashboard",
                role=Role.MERCHANT,
                merchant_ids=[merchant.id],
                now=now,
            )
            lines.append(f"Merchant API key ({name}, {kind.value}): {token}")
            connection_ids.append(connection.id)
        _, support = await create_api_key(
            uow, name="demo support", role=Role.SUPPORT, merchant_ids=[], now=now
        )
        await uow.commit()
    for connection_id in connection_ids:
        await enqueue_poll(arq, connection_id)
    lines.append(f"Support API key: {support}")
    return lines, support
