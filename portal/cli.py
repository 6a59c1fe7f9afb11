"""The `portal` command: serve, migrate, merchants, keys, demo data and the demo."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
import uvicorn
from alembic import command
from alembic.config import Config

from app.clock import SystemClock
from app.db import Database
from app.embedded import Services, resolve_services
from app.enums import Role
from app.errors import PortalError
from app.services.api_key import create_api_key
from app.services.merchant import create_merchant
from app.services.seed import seed_payments
from app.settings import Settings, get_settings
from app.tenancy import SYSTEM_SCOPE, system_principal
from portal.asgi import create_app
from portal.logging import configure_logging
from resolvers.ids import decode_id, encode_id
from schema.root import build_schema, export_sdl

T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "schema.graphql"
logger = logging.getLogger("portal")

cli = typer.Typer(help="The recovery portal.", no_args_is_help=True, add_completion=False)
merchant_cli = typer.Typer(help="Merchants.", no_args_is_help=True)
apikey_cli = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(merchant_cli, name="merchant")
cli.add_typer(apikey_cli, name="apikey")


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_database(database_url: str) -> None:
    """Run every migration up to head (blocking; call in a thread from async code)."""
    command.upgrade(alembic_config(database_url), "head")


async def _services(settings: Settings) -> Services:
    services = await resolve_services(settings)
    typer.echo(f"portal using {services.describe()}", err=True)
    return services


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
) -> None:
    """Serve the GraphQL API."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
    )


@merchant_cli.command("create")
def merchant_create(name: Annotated[str, typer.Option(help="The merchant's name.")]) -> None:
    """Create a merchant; prints its global id."""

    async def work(_settings: Settings, services: Services) -> str:
        db = Database.from_url(services.database_url)
        try:
            async with db.uow(SYSTEM_SCOPE) as uow:
                merchant = await create_merchant(
                    uow, name=name, principal=system_principal("cli"), now=SystemClock().now()
                )
                await uow.commit()
            return encode_id("Merchant", merchant.id)
        finally:
            await db.dispose()

    typer.echo(_run(work))


@apikey_cli.command("create")
def apikey_create(
    role: Annotated[Role, typer.Option(help="merchant, partner or support.")],
    merchant: Annotated[
        list[str] | None, typer.Option(help="Merchant global id (repeat for partners).")
    ] = None,
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "cli",
) -> None:
    """Create an API key; the token is printed once, as the last line."""

    async def work(_settings: Settings, services: Services) -> str:
        ids = [decode_id(m, expected="Merchant")[1] for m in merchant or []]
        db = Database.from_url(services.database_url)
        try:
            async with db.uow(SYSTEM_SCOPE) as uow:
                _, token = await create_api_key(
                    uow, name=name, role=role, merchant_ids=ids, now=SystemClock().now()
                )
                await uow.commit()
            return token
        finally:
            await db.dispose()

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
        db = Database.from_url(services.database_url)
        try:
            async with db.uow(SYSTEM_SCOPE) as uow:
                n = await seed_payments(
                    uow,
                    merchant_id=merchant_id,
                    count=payments,
                    now=SystemClock().now(),
                    seed=seed_value,
                )
                await uow.commit()
            return n
        finally:
            await db.dispose()

    typer.echo(f"seeded {_run(work)} payments")


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    payments: Annotated[int, typer.Option(help="Payments per demo merchant.")] = 300,
) -> None:
    """Start everything on this machine with demo data and serve until Ctrl-C."""
    settings = get_settings()
    configure_logging(settings.log_level, json=False)

    async def main() -> None:
        services = await _services(settings)
        try:
            await asyncio.to_thread(upgrade_database, services.database_url)
            db = Database.from_url(services.database_url)
            now = SystemClock().now()
            lines: list[str] = []
            async with db.uow(SYSTEM_SCOPE) as uow:
                principal = system_principal("demo")
                for i, name in enumerate(("Acme Streaming (demo)", "Globex Fitness (demo)")):
                    merchant = await create_merchant(uow, name=name, principal=principal, now=now)
                    await seed_payments(
                        uow, merchant_id=merchant.id, count=payments, now=now, seed=i
                    )
                    _, token = await create_api_key(
                        uow,
                        name=f"demo merchant {i + 1}",
                        role=Role.MERCHANT,
                        merchant_ids=[merchant.id],
                        now=now,
                    )
                    lines.append(f"Merchant API key ({name}): {token}")
                _, support = await create_api_key(
                    uow, name="demo support", role=Role.SUPPORT, merchant_ids=[], now=now
                )
                await uow.commit()
            await db.dispose()
            typer.echo(f"GraphQL: http://{settings.host}:{port}/graphql")
            for line in lines:
                typer.echo(line)
            typer.echo(f"Support API key: {support}")
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(
                        settings.model_copy(
                            update={
                                "database_url": services.database_url,
                                "redis_url": services.redis_url,
                            }
                        )
                    ),
                    host=settings.host,
                    port=port,
                    log_config=None,
                )
            )
            await server.serve()
        finally:
            services.close()

    asyncio.run(main())


@cli.command("export-schema")
def export_schema(
    out: Annotated[Path, typer.Option(help="Where to write the SDL.")] = SCHEMA_FILE,
) -> None:
    """Write the GraphQL schema as sorted SDL (committed; a test fails when it drifts)."""
    out.write_text(export_sdl(build_schema(get_settings())))
    typer.echo(f"wrote {out}")


def main() -> None:
    cli()
