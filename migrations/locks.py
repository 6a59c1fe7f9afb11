"""A short `lock_timeout` around a migration's locking statements.

An `ALTER TABLE` waits for its lock behind any long transaction, and every later query of the
table queues behind the waiting ALTER. A short lock timeout makes the migration fail fast
instead (it is safe to run again). Revisions run one after another in one transaction, so the
timeout in force before is saved and given back afterwards.

The saving and restoring are plain SQL (the earlier value is kept in a custom setting of the
same scope), so the same statements are emitted when a migration is rendered as a script with
`alembic upgrade --sql`, where nothing can be read back from the database.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op

_SAVED = "portal.saved_lock_timeout"


@contextmanager
def short_lock_timeout(timeout: str, *, in_transaction: bool = True) -> Iterator[None]:
    """Run the body with `lock_timeout` set to `timeout`, then restore the earlier value.

    `in_transaction=False` is for statements run in an autocommit block, where a transaction-
    local setting would end with the statement: the session's value is set and restored.
    """
    is_local = "true" if in_transaction else "false"
    op.execute(f"SELECT set_config('{_SAVED}', current_setting('lock_timeout'), {is_local})")
    op.execute(f"SET {'LOCAL ' if in_transaction else ''}lock_timeout = '{timeout}'")
    yield
    op.execute(f"SELECT set_config('lock_timeout', current_setting('{_SAVED}'), {is_local})")
