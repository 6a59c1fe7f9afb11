"""Per-request dataloaders of the retry engine's read models: timelines, ledgers and end
actions."""

import uuid
from datetime import datetime

from strawberry.dataloader import DataLoader

from app.db import Database
from app.models.end_action import EndActionRun
from app.models.retry import PaymentTransition
from app.retry.rules import LedgerView
from app.services.retry.views import (
    end_actions_by_payment_ids,
    ledger_views,
    transitions_by_payment_ids,
)
from app.tenancy import Scope
from resolvers.batch import by_id, many_by_id

LedgerKey = tuple[uuid.UUID, datetime]


class RetryLoaders:
    """Timelines by payment, and ledgers by (payment, as-of time), each batch one session
    whose statements run outside a transaction (no BEGIN and ROLLBACK round trips)."""

    def __init__(self, db: Database, scope: Scope) -> None:
        async def ledgers(keys: list[LedgerKey]) -> list[LedgerView | None]:
            # One request reads one clock; a batch is computed as of its latest time.
            now = max(k[1] for k in keys)
            # A view for display: its statements need no transaction of their own.
            async with db.read(scope) as session:
                found = await ledger_views(session, [k[0] for k in keys], now=now)
            return [found.get(k[0]) for k in keys]

        self.transitions_by_payment_id: DataLoader[uuid.UUID, list[PaymentTransition]] = many_by_id(
            db, scope, transitions_by_payment_ids
        )
        self.ledger_by_payment_id: DataLoader[LedgerKey, LedgerView | None] = DataLoader(
            load_fn=ledgers
        )
        self.end_action_by_payment_id: DataLoader[uuid.UUID, EndActionRun | None] = by_id(
            db, scope, end_actions_by_payment_ids
        )
