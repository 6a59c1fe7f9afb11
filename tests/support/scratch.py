"""A migrated database of a test module's own, for tests that commit and race transactions."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.db import Database
from app.embedded import Services, create_scratch_database, drop_database
from portal.migrate import upgrade_database


@asynccontextmanager
async def scratch_database(
    services: Services, prefix: str, *, pool_size: int = 4
) -> AsyncIterator[Database]:
    """A new database named after `prefix`, migrated to head; dropped when done."""
    url = await create_scratch_database(services, prefix)
    await asyncio.to_thread(upgrade_database, url)
    database = Database.from_url(url, pool_size=pool_size)
    try:
        yield database
    finally:
        await database.dispose()
        await drop_database(services, url)
