"""Alembic environment: async, on the portal's metadata and the portal's settings."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import ForeignKeyConstraint
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.embedded import resolve_services
from app.models.tables import metadata
from app.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


async def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    services = await resolve_services(get_settings())
    config.attributes["services"] = services
    return services.database_url


def _partitions(connection: Connection) -> frozenset[str]:
    """The tables that are partitions of another: the models declare only the partitioned
    table, whose partitions the migrations and the partition cron create."""
    rows = connection.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    )
    return frozenset(r[0] for r in rows)


def _run(connection: Connection) -> None:
    partitions: list[frozenset[str]] = []

    def include_object(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        # Read when autogenerate compares (`alembic check`), never while migrations run.
        if not reflected:
            return True
        if type_ == "table":
            return name not in _known(partitions)
        if type_ == "foreign_key_constraint" and isinstance(obj, ForeignKeyConstraint):
            # PostgreSQL's own copies of a foreign key to a partitioned table, one for each of
            # its partitions: the models declare the one to the partitioned table.
            return obj.referred_table.name not in _known(partitions)
        return True

    def _known(found: list[frozenset[str]]) -> frozenset[str]:
        if not found:
            found.append(_partitions(connection))
        return found[0]

    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(await _database_url())
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    """Render the migrations as a SQL script (`alembic upgrade --sql`), for review and for the
    migration linter; nothing is read from or written to a database."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or "postgresql://",
        dialect_name="postgresql",
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (given := config.attributes.get("connection")) is not None:
    # A caller's own connection (and transaction), e.g. from `AsyncConnection.run_sync`.
    _run(given)
else:
    asyncio.run(_run_online())
