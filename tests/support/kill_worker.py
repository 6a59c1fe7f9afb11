"""A worker process that runs one attempt and dies by SIGKILL once the processor has charged."""

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from app.clock import FixedClock
from app.db import Database
from app.models.ingestion import ProcessorConnection
from app.processors.base import (
    BillingRefs,
    BillingState,
    CancelResult,
    ChargeResult,
    ListPage,
    ProcessorAdapter,
    RawItem,
)
from app.workflows.retry_attempt import default_adapters, execute_attempt
from tests.support.retry import BOX


class DieAfterCharge:
    """The real adapter, except that the process is killed when the charge call returns."""

    def __init__(self, inner: ProcessorAdapter) -> None:
        self._inner = inner

    async def list_page(self, cursor: Mapping[str, Any]) -> ListPage:
        return await self._inner.list_page(cursor)

    async def fetch(self, processor_payment_id: str) -> RawItem:
        return await self._inner.fetch(processor_payment_id)

    async def billing_state(self, refs: BillingRefs) -> BillingState:
        return await self._inner.billing_state(refs)

    async def cancel_subscription(self, refs: BillingRefs, *, idempotency_key: str) -> CancelResult:
        return await self._inner.cancel_subscription(refs, idempotency_key=idempotency_key)

    async def charge(self, **kwargs: Any) -> ChargeResult:
        await self._inner.charge(**kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


async def main(database_url: str, payment_id: str, number: int, now: str) -> None:
    db = Database.from_url(database_url, pool_size=2)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        real = default_adapters(http, BOX)

        def adapters(connection: ProcessorConnection) -> ProcessorAdapter:
            return DieAfterCharge(real(connection))

        await execute_attempt(
            db,
            payment_id=uuid.UUID(payment_id),
            attempt_number=number,
            adapters=adapters,
            clock=FixedClock(datetime.fromisoformat(now)),
        )
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
