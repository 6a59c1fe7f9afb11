"""The `portal` command: serve, migrate, merchants, keys, demo data and the demo."""

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import typer
import uvicorn
from pydantic import ValidationError

from app.clock import SystemClock
from app.crypto import CredentialBox
from app.db import Database, UnitOfWork
from app.embedded import Services, resolve_services
from app.enums import ApiKeyScope, Processor, Role
from app.errors import PortalError
from app.models.model_version import ModelVersion
from app.processors.base import DEFAULT_TIMEOUT
from app.processors.normalize.dispatch import normalize_payload, record_to_json
from app.processors.normalize.records import CanonicalRecord, NormalizeError
from app.services.api_key import create_api_key
from app.services.connection import create_connection
from app.services.ingestion import IngestStats
from app.services.merchant import create_merchant
from app.services.seed import seed_payments
from app.settings import Settings, get_settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from app.workflows.polling import PollResult, poll_connection
from app.workflows.replay import replay_connection
from jobs.supervisor import Supervisor
from jobs.worker import build_worker
from portal.asgi import create_app, server_options
from portal.demo import DemoOptions, run_demo
from portal.export_cli import export_cli
from portal.logging import configure_logging
from portal.migrate import upgrade_database as upgrade_database
from resolvers.ids import decode_id, encode_id
from schema.root import build_schema, export_sdl

T = TypeVar("T")
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "schema.graphql"
logger = logging.getLogger("portal")

cli = typer.Typer(help="The recovery portal.", no_args_is_help=True, add_completion=False)
merchant_cli = typer.Typer(help="Merchants.", no_args_is_help=True)
apikey_cli = typer.Typer(help="API keys.", no_args_is_help=True)
connection_cli = typer.Typer(help="Processor connections.", no_args_is_help=True)
cli.add_typer(merchant_cli, name="merchant")
cli.add_typer(apikey_cli, name="apikey")
cli.add_typer(connection_cli, name="connection")
model_cli = typer.Typer(help="Retry-timing models in the registry.", no_args_is_help=True)
cli.add_typer(model_cli, name="model")
cli.add_typer(export_cli, name="export")


async def _services(settings: Settings) -> Services:
    services = await resolve_services(settings)
    typer.echo(f"portal using {services.describe()}", err=True)
    return services


@contextlib.asynccontextmanager
async def system_uow(services: Services) -> AsyncIterator[UnitOfWork]:
    """One unit of work as the system, on its own short-lived engine; commits on success."""
    db = Database.from_url(services.database_url)
    try:
        async with db.uow(SYSTEM_SCOPE) as uow:
            yield uow
            await uow.commit()
    finally:
        await db.dispose()


def _run(work: Callable[[Settings, Services], Awaitable[T]]) -> T:
    """Resolve services, run `work`, stop embedded servers; domain errors exit 1 with a message."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)

    async def main() -> T:
        services = await _services(settings)
        try:
            return await work(settings, services)
        finally:
            services.close()

    try:
        return asyncio.run(main())
    except PortalError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


@cli.command()
def migrate() -> None:
    """Upgrade the database to the latest schema."""

    async def work(_settings: Settings, services: Services) -> None:
        await asyncio.to_thread(upgrade_database, services.database_url)

    _run(work)
    typer.echo("database at head")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="API processes sharing the port.")
    ] = 1,
) -> None:
    """Serve the GraphQL API (stateless: run as many processes or replicas as needed)."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    if workers == 1:
        uvicorn.run(
            create_app(settings),
            host=host or settings.host,
            port=port or settings.port,
            **server_options(settings),
        )
        return
    # Each process would otherwise resolve (and might start) its own embedded services.
    if not (settings.database_url and settings.redis_url):
        typer.echo(
            "error: --workers above 1 needs DATABASE_URL and REDIS_URL: the processes must "
            "share one database and one Redis",
            err=True,
        )
        raise typer.Exit(2)
    uvicorn.run(
        "portal.asgi:app_from_environment",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        **server_options(settings),
    )


@merchant_cli.command("create")
def merchant_create(name: Annotated[str, typer.Option(help="The merchant's name.")]) -> None:
    """Create a merchant; prints its global id."""

    async def work(_settings: Settings, services: Services) -> str:
        async with system_uow(services) as uow:
            merchant = await create_merchant(
                uow, name=name, principal=system_principal("cli"), now=SystemClock().now()
            )
        return encode_id("Merchant", merchant.id)

    typer.echo(_run(work))


def _aware_time(text: str, option: str) -> datetime:
    """A time given on the command line: ISO 8601 with its UTC offset (`Z` allowed)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint=option) from None
    if moment.tzinfo is None:
        raise typer.BadParameter("give the time's UTC offset, e.g. ...Z", param_hint=option)
    return moment


@apikey_cli.command("create")
def apikey_create(
    role: Annotated[Role, typer.Option(help="merchant, partner or support.")],
    merchant: Annotated[
        list[str] | None, typer.Option(help="Merchant global id (repeat for partners).")
    ] = None,
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "cli",
    scope: Annotated[
        list[ApiKeyScope] | None,
        typer.Option(help="read or write (repeat for both; default both). Every key reads."),
    ] = None,
    expires_at: Annotated[
        str | None,
        typer.Option(
            help="When the key stops working: ISO 8601 with its offset, e.g. 2027-01-31T00:00:00Z."
        ),
    ] = None,
) -> None:
    """Create an API key; the token is printed once, as the last line."""
    expiry = _aware_time(expires_at, "--expires-at") if expires_at is not None else None

    async def work(_settings: Settings, services: Services) -> str:
        ids = [decode_id(m, expected="Merchant")[1] for m in merchant or []]
        async with system_uow(services) as uow:
            _, token = await create_api_key(
                uow,
                name=name,
                role=role,
                merchant_ids=ids,
                now=SystemClock().now(),
                scopes=frozenset(scope) if scope else frozenset(ApiKeyScope),
                expires_at=expiry,
            )
        return token

    typer.echo(_run(work))


@cli.command()
def seed(
    merchant: Annotated[str, typer.Option(help="Merchant global id.")],
    payments: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many.")] = 200,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Add realistic demo payments to a merchant."""

    async def work(_settings: Settings, services: Services) -> int:
        _, merchant_id = decode_id(merchant, expected="Merchant")
        async with system_uow(services) as uow:
            return await seed_payments(
                uow,
                merchant_id=merchant_id,
                count=payments,
                now=SystemClock().now(),
                seed=seed_value,
            )

    typer.echo(f"seeded {_run(work)} payments")


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="Port of the API on 127.0.0.1.")] = 8000,
    speed: Annotated[
        float, typer.Option(min=1, help="Simulated seconds per real second (3600: a day in 24 s).")
    ] = 3600.0,
    merchants: Annotated[
        int, typer.Option(min=1, max=4, help="Demo merchants, one per processor.")
    ] = 4,
    customers: Annotated[
        int, typer.Option(min=50, max=50_000, help="Subscribers per merchant (failure volume).")
    ] = 1500,
    history_days: Annotated[
        int, typer.Option(min=1, max=60, help="Days of charge history before now.")
    ] = 14,
    training_failures: Annotated[
        int,
        typer.Option(
            min=2_000,
            max=200_000,
            help="Simulated failures the demo's timing model is trained on (fewer: sooner).",
        ),
    ] = 20_000,
) -> None:
    """The whole product on this machine: embedded services when none are configured, sandbox
    processors, the API, the worker and an accelerated clock. Prints the GraphQL URL and API
    keys, then runs until Ctrl-C."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    options = DemoOptions(
        port=port,
        speed=speed,
        merchants=merchants,
        customers=customers,
        history_days=history_days,
        training_failures=training_failures,
    )

    def announce(line: str) -> None:
        typer.echo(line)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(settings, options, announce))


@cli.command()
def normalize(
    processor: Annotated[Processor, typer.Argument(help="stripe, braintree, adyen or checkout.")],
    file: Annotated[Path, typer.Argument(help="A payload: JSON, or XML for Braintree.")],
) -> None:
    """Print one canonical JSON object per payment record in FILE, one per line."""
    try:
        results = normalize_payload(processor, file.read_bytes())
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from exc
    except NormalizeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    records = 0
    for result in results:
        if isinstance(result, CanonicalRecord):
            typer.echo(json.dumps(record_to_json(result)))
            records += 1
        else:
            typer.echo(f"dead letter: {result.reason}", err=True)
    if records == 0:
        typer.echo("error: no payment record could be normalized", err=True)
        raise typer.Exit(1)


def _credentials(pairs: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair.split('=')[0]!r}…")
        found[key] = value
    return found


@connection_cli.command("add")
def connection_add(
    merchant: Annotated[str, typer.Option(help="Merchant global id.")],
    kind: Annotated[Processor, typer.Option(help="The processor.")],
    base_url: Annotated[str, typer.Option(help="The processor API's base URL.")],
    credential: Annotated[
        list[str], typer.Option(help="KEY=VALUE (repeat), e.g. api_key=sk_test_…")
    ],
    account_ref: Annotated[
        str | None, typer.Option(help="Account id at the processor (Braintree, Adyen).")
    ] = None,
) -> None:
    """Connect a merchant to a processor account; prints the connection id."""
    secrets = _credentials(credential)

    async def work(settings: Settings, services: Services) -> str:
        _, merchant_id = decode_id(merchant, expected="Merchant")
        async with system_uow(services) as uow:
            connection = await create_connection(
                uow,
                principal=system_principal("cli"),
                merchant_id=merchant_id,
                kind=kind,
                base_url=base_url,
                credentials=secrets,
                account_ref=account_ref,
                box=CredentialBox(settings.secret_key.get_secret_value()),
                policy=settings.url_policy,
                now=SystemClock().now(),
            )
        return str(connection.id)

    typer.echo(_run(work))


@cli.command()
def poll(
    connection: Annotated[str, typer.Option(help="Connection id.")],
    max_pages: Annotated[int, typer.Option(min=1, help="Stop after this many pages.")] = 1000,
) -> None:
    """Poll one connection now, in the foreground, and print what was ingested."""

    async def work(settings: Settings, services: Services) -> PollResult:
        db = Database.from_url(services.database_url)
        try:
            async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT) as http:
                return await poll_connection(
                    db,
                    _uuid(connection),
                    client=http,
                    box=CredentialBox(settings.secret_key.get_secret_value()),
                    clock=SystemClock(),
                    max_pages=max_pages,
                )
        finally:
            await db.dispose()

    result = _run(work)
    typer.echo(json.dumps({"pages": result.pages, "more": result.more, **vars(result.stats)}))
    if result.error:
        typer.echo(f"error: {result.error}", err=True)
        raise typer.Exit(1)


@cli.command()
def replay(
    connection: Annotated[str, typer.Option(help="Connection id.")],
    since: Annotated[
        datetime | None, typer.Option(help="Only records received at or after (ISO-8601).")
    ] = None,
) -> None:
    """Re-normalize a connection's raw history with the current normalizer (idempotent)."""

    async def work(_settings: Settings, services: Services) -> IngestStats:
        db = Database.from_url(services.database_url)
        try:
            return await replay_connection(
                db, _uuid(connection), since=_aware(since), clock=SystemClock()
            )
        finally:
            await db.dispose()

    typer.echo(json.dumps(vars(_run(work))))


@cli.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Run queued jobs, then exit.")] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Jobs other than charges run at once (default: PORTAL_WORKER_CONCURRENCY).",
        ),
    ] = None,
    charge_concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Charges run at once (default: PORTAL_WORKER_CHARGE_CONCURRENCY).",
        ),
    ] = None,
) -> None:
    """Run the arq worker (polling, normalization, retries, webhooks). It waits out PostgreSQL
    and Redis outages, writes a heartbeat, and on SIGTERM or SIGINT lets running jobs finish
    (within PORTAL_WORKER_SHUTDOWN_GRACE_SECONDS) before it exits."""

    async def work(settings: Settings, services: Services) -> None:
        supervisor = Supervisor(
            build_worker(
                services.redis_url,
                {"settings": settings, "database_url": services.database_url},
                burst=burst,
                # Unless given, the settings' (the context's settings are these).
                concurrency=concurrency,
                charge_concurrency=charge_concurrency,
            ),
            settings,
        )
        supervisor.handle_signals()
        await supervisor.run()

    _run(work)


@cli.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8100,
) -> None:
    """Serve the sandbox processors (Stripe, Braintree, Adyen, Checkout.com) on loopback."""
    from sandbox.app import run as run_sandbox

    run_sandbox(host="127.0.0.1", port=port)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not a connection id: {value[:40]!r}") from exc


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@cli.command()
def simulate(
    report: Annotated[bool, typer.Option("--report", help="Print calibration vs targets.")] = False,
    failures: Annotated[int, typer.Option(min=1000, help="Simulated failures.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    simulator_config: Annotated[
        Path | None, typer.Option(help="Simulator parameter file (TOML or JSON).")
    ] = None,
) -> None:
    """The world simulator: calibration figures beside its targets (docs/domain.md §4)."""
    from ml.simulator.report import calibration_report, format_calibration

    result = calibration_report(
        n_failures=failures, seed=seed, config_path=simulator_config, progress=True
    )
    typer.echo(format_calibration(result) if report else json.dumps(result, default=str))


@cli.command()
def evaluate(
    failures: Annotated[int, typer.Option(min=1000, help="Simulated failures.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    simulator_config: Annotated[
        Path | None, typer.Option(help="Simulator parameter file (TOML or JSON).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where report.json and the PNG go.")] = Path(
        "out/evaluation"
    ),
) -> None:
    """Offline evaluation: the model against fixed schedules and the oracle on the same failures."""
    from ml.evaluate import format_table, run_evaluation

    result = run_evaluation(
        n_failures=failures, seed=seed, config_path=simulator_config, out_dir=out, progress=True
    )
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'report.json'}")


@cli.command()
def train(
    simulated: Annotated[
        int | None,
        typer.Option(min=1000, help="Train on N simulated failures instead of stored history."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (training and simulation).")] = 0,
    rounds: Annotated[int, typer.Option(min=1, help="Most boosting rounds.")] = 400,
    threads: Annotated[int, typer.Option(min=1, help="LightGBM threads.")] = 2,
) -> None:
    """Train a retry-timing model; store it as a challenger with the promotion gate's verdict."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from jobs.training import train_from_history, train_simulated
    from ml.train import TrainConfig

    config = TrainConfig(seed=seed, num_boost_round=rounds, num_threads=threads)
    steps = 7 if simulated else 5

    async def work(_settings: Settings, services: Services) -> dict[str, object]:
        db = Database.from_url(services.database_url)
        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task("training", total=steps)

                def progress(message: str) -> None:
                    # Called from the executor thread; rich's Progress takes its own lock.
                    bar.update(task, advance=1, description=message)

                now = SystemClock().now()
                if simulated:
                    outcome = await train_simulated(
                        db, simulated, now=now, config=config, progress=progress
                    )
                else:
                    outcome = await train_from_history(
                        db, now=now, config=config, progress=progress
                    )
                bar.update(task, completed=steps, description="stored")
        except ValueError as exc:
            raise PortalError(str(exc)) from exc
        finally:
            await db.dispose()
        metrics = outcome.metrics
        return {
            "model_id": encode_id("Model", uuid.UUID(outcome.model_id)),
            "status": "challenger",
            "auc": metrics.get("auc"),
            "log_loss": metrics.get("log_loss"),
            "ece": metrics.get("ece"),
            "rows": metrics.get("rows"),
            "gate": outcome.gate,
        }

    typer.echo(json.dumps(_run(work), default=str))


def _model_key(value: str) -> uuid.UUID:
    from resolvers.model import decode_model_id

    try:
        return uuid.UUID(value)
    except ValueError:
        return decode_model_id(value)


@model_cli.command("list")
def model_list() -> None:
    """Models newest first: id, status, source, test AUC and the gate's verdict (JSON lines)."""
    from app.services.model_registry import list_models

    async def work(_settings: Settings, services: Services) -> list[dict[str, object]]:
        db = Database.from_url(services.database_url)
        try:
            async with db.session(SYSTEM_SCOPE) as session:
                rows = await list_models(session, principal=system_principal("cli"))
        finally:
            await db.dispose()
        return [
            {
                "id": encode_id("Model", r.id),
                "status": str(r.status),
                "source": r.source,
                "trained_at": r.trained_at.isoformat(),
                "auc": r.metrics.get("auc"),
                "gate": None if r.gate is None else r.gate.get("reason"),
                "gate_passed": None if r.gate is None else r.gate.get("promote"),
            }
            for r in rows
        ]

    for line in _run(work):
        typer.echo(json.dumps(line))


@model_cli.command("gate")
def model_gate(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Run the promotion gate again against the current champion and record its verdict."""
    from jobs.training import regate_model

    async def work(_settings: Settings, services: Services) -> dict[str, object]:
        db = Database.from_url(services.database_url)
        try:
            verdict = await regate_model(db, _model_key(model_id), now=SystemClock().now())
        except ValueError as exc:
            raise PortalError(str(exc)) from exc
        finally:
            await db.dispose()
        return verdict.to_json()

    typer.echo(json.dumps(_run(work), default=str))


def _change_status(
    change: Callable[..., Awaitable[ModelVersion]], model_id: str, reason: str
) -> None:
    """Run an audited registry change as the CLI principal and print the model's new status."""

    async def work(_settings: Settings, services: Services) -> str:
        async with system_uow(services) as uow:
            row = await change(
                uow,
                principal=system_principal("cli"),
                model_id=_model_key(model_id),
                reason=reason,
                now=SystemClock().now(),
            )
        return str(row.status)

    typer.echo(_run(work))


@model_cli.command("shadow")
def model_shadow(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")],
) -> None:
    """Let a challenger score alongside the champion without acting (audited)."""
    from app.services.model_registry import set_shadow

    _change_status(set_shadow, model_id, reason)


@model_cli.command("promote")
def model_promote(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")],
) -> None:
    """Make a model the champion when its gate verdict holds against the current one and, when
    PORTAL_MODEL_PROMOTION_MIN_PAIRED_DECISIONS is set, its comparison with it does (audited)."""
    from app.services.model_registry import promote
    from resolvers.model import requirement

    _change_status(
        functools.partial(promote, requirement=requirement(get_settings())), model_id, reason
    )


@model_cli.command("compare")
def model_compare(
    shadow: Annotated[
        str | None, typer.Option(help="The model to compare (default: the current shadow).")
    ] = None,
    champion: Annotated[
        str | None, typer.Option(help="The champion to compare with (default: the current one).")
    ] = None,
    tolerance_minutes: Annotated[
        int, typer.Option(min=0, max=1440, help="Retry times at most this far apart agree.")
    ] = 60,
) -> None:
    """A shadow's decisions against the champion's at the same decision points, and the realized
    recovery of the payments where they agreed and where they did not."""
    from rich.console import Console

    from app.enums import ModelStatus
    from app.services.model_comparison import Comparison, compare
    from app.services.model_registry import current_id
    from portal.model_report import REALIZED_CAVEAT, comparison_heading, comparison_tables

    async def work(_settings: Settings, services: Services) -> Comparison:
        db = Database.from_url(services.database_url)
        try:
            async with db.session(SYSTEM_SCOPE) as session:
                shadow_id = _model_key(shadow) if shadow else None
                shadow_id = shadow_id or await current_id(session, ModelStatus.SHADOW)
                if shadow_id is None:
                    raise PortalError("no shadow model to compare: pass --shadow ID")
                found = await compare(
                    session,
                    principal=system_principal("cli"),
                    shadow_id=shadow_id,
                    champion_id=_model_key(champion) if champion else None,
                    tolerance=timedelta(minutes=tolerance_minutes),
                )
        finally:
            await db.dispose()
        if found is None:
            raise PortalError("no champion to compare with: pass --champion ID")
        return found

    comparison = _run(work)
    console = Console(width=120, highlight=False)
    console.print(comparison_heading(comparison), soft_wrap=True)
    for table in comparison_tables(comparison, margin=get_settings().model_promotion_margin):
        console.print(table)
    console.print(REALIZED_CAVEAT)


@cli.command("export-schema")
def export_schema(
    out: Annotated[Path, typer.Option(help="Where to write the SDL.")] = SCHEMA_FILE,
) -> None:
    """Write the GraphQL schema as sorted SDL (committed; a test fails when it drifts)."""
    out.write_text(export_sdl(build_schema(get_settings())))
    typer.echo(f"wrote {out}")


def main() -> None:
    try:
        get_settings()
    except ValidationError as exc:
        # A refused configuration is the operator's to fix: one line per problem, no traceback
        # (settings errors never echo their input, so no secret is printed).
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "settings"
            typer.echo(f"error: configuration: {where}: {problem['msg']}", err=True)
        raise SystemExit(2) from None
    cli()
