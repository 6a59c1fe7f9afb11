"""previewRetryPolicy's forecast over N scheduled payments of a model-strategy merchant.

Sets up a scratch database: one merchant on the model strategy with the small trained champion,
N failed charges of varied declines, brands, amounts and currencies, decided (untimed). Then
times what the mutation does after its checks: the payments' contexts read before and after a
change (`preview_contexts`, rolled back) and the champion's forecast of both schedules
(`forecast`, CPU only), and prints how many model calls the forecast made.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# tests/support is the project's harness, not an installed package: import it from the root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from retry_engine import _scratch_database  # noqa: E402

from app.db import Database  # noqa: E402
from app.enums import ModelStatus, RetryStrategy, Role  # noqa: E402
from app.services.policy_preview import preview_contexts  # noqa: E402
from app.services.retry.engine import decide_pending  # noqa: E402
from app.services.retry_policy import PolicyChanges  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tenancy import SYSTEM_SCOPE, Principal, Scope  # noqa: E402
from jobs.model import load_current, serving_scheduler  # noqa: E402
from jobs.policy_preview import forecast  # noqa: E402
from ml.artifact import TimingModel  # noqa: E402
from tests.support.factories import make_merchant, set_strategy  # noqa: E402
from tests.support.model_rows import make_model  # noqa: E402
from tests.support.retry import ingest, make_connection, varied_charges  # noqa: E402

# A Monday 10:00 UTC: outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)


class Counted:
    """A model whose calls are counted (predictions and contributions)."""

    def __init__(self, inner: TimingModel) -> None:
        self.inner = inner
        self.calls = 0
        self.rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, x: Any) -> Any:
        self.calls += 1
        self.rows += len(x)
        return self.inner.predict(x)

    def contributions(self, x: Any) -> Any:
        self.calls += 1
        self.rows += len(x)
        return self.inner.contributions(x)


async def _run(args: argparse.Namespace) -> None:
    url, drop = await _scratch_database(Settings(environment="test"))
    db = Database.from_url(url)
    try:
        merchant = await make_merchant(db, "Preview bench", now=T0)
        await set_strategy(db, merchant.id, RetryStrategy.MODEL)
        connection = await make_connection(db, merchant, T0)
        charges = varied_charges(
            "ch_preview",
            args.payments,
            created=T0,
            customers=args.payments,
            fingerprints=args.payments,
            amount=500,
            step=37,
            currencies=("usd", "eur"),
        )
        await ingest(db, connection, charges, T0)
        await make_model(db, now=T0, status=ModelStatus.CHAMPION)
        scheduler = await serving_scheduler(db)
        async with db.uow(SYSTEM_SCOPE) as uow:
            await decide_pending(uow, now=T0, limit=args.payments, scheduler=scheduler)
            await uow.commit()
        champion = await load_current(db, ModelStatus.CHAMPION)
        assert champion is not None
        assert champion.model is not None
        principal = Principal(key_id=None, name="bench", role=Role.SUPPORT, scope=Scope(None))

        start = time.perf_counter()
        async with db.uow(SYSTEM_SCOPE) as uow:
            preview = await preview_contexts(
                uow,
                principal=principal,
                merchant_id=merchant.id,
                changes=PolicyChanges(max_attempts=2, fixed_schedule_days=[1, 3]),
                now=T0,
                limit=args.payments,
            )
        read = time.perf_counter() - start
        counted = Counted(champion.model)
        counted_champion = type(champion)(champion.id, counted)  # type: ignore[arg-type]
        start = time.perf_counter()
        result = forecast(preview, champion=counted_champion, now=T0)
        took = time.perf_counter() - start
        retries = sum(len(f.current.times) + len(f.proposed.times) for f in result.payments)
        print(
            f"{len(preview.before)} scheduled payments: contexts read in {read:.2f} s, "
            f"forecast in {took:.2f} s ({counted.calls} model calls over {counted.rows:,} rows); "
            f"{result.rescheduled} rescheduled, {retries} retries in the listed sample"
        )
    finally:
        await db.dispose()
        await drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=100)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
