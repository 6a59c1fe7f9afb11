"""The policy preview's forecast advances every payment's schedules together, scoring each
step in one batch: each payment's schedules are the ones it gets forecast alone."""

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from app.db import Database
from app.enums import ModelStatus, RetryStrategy, Role
from app.services.policy_preview import preview_contexts
from app.services.retry.engine import decide_pending
from app.services.retry_policy import PolicyChanges
from app.tenancy import SYSTEM_SCOPE, Principal, Scope
from jobs.model import ModelCache, load_current, serving_scheduler
from jobs.policy_preview import forecast
from tests.support.factories import make_merchant, set_strategy
from tests.support.model_rows import make_model
from tests.support.retry import ingest, make_connection, varied_charges

# A Monday 10:00 UTC: outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
SUPPORT = Principal(key_id=None, name="test", role=Role.SUPPORT, scope=Scope(None))


async def test_each_payment_is_forecast_as_it_would_be_alone(db: Database) -> None:
    merchant = await make_merchant(db, f"Batch preview {uuid.uuid4().hex[:6]}", now=T0)
    await set_strategy(db, merchant.id, RetryStrategy.MODEL)
    connection = await make_connection(db, merchant, T0)
    charges = varied_charges(
        "ch_batch_preview",
        12,
        created=T0,
        customers=12,
        fingerprints=12,
        amount=700,
        step=311,
        currencies=("usd", "eur", "jpy"),
    )
    await ingest(db, connection, charges, T0)
    await make_model(db, now=T0, status=ModelStatus.CHAMPION)
    cache = ModelCache()
    scheduler = await serving_scheduler(db, cache)
    async with db.uow(SYSTEM_SCOPE) as uow:
        await decide_pending(uow, now=T0, scheduler=scheduler)
        await uow.commit()
    champion = await load_current(db, ModelStatus.CHAMPION, cache)
    assert champion is not None
    assert champion.model is not None
    async with db.uow(SYSTEM_SCOPE) as uow:
        preview = await preview_contexts(
            uow,
            principal=SUPPORT,
            merchant_id=merchant.id,
            changes=PolicyChanges(max_attempts=3, window_days=10, fixed_schedule_days=[1, 3, 5]),
            now=T0,
        )
    assert len(preview.before) > 6

    together = forecast(preview, champion=champion, now=T0)
    alone = []
    for before, after in zip(preview.before, preview.after, strict=True):
        one = replace(preview, before=[before], after=[after])
        alone += forecast(one, champion=champion, now=T0).payments
    by_id = {f.payment_id: f for f in alone}
    # The forecast lists its largest changes (up to its sample size): each as forecast alone.
    assert together.payments
    for listed in together.payments:
        assert listed == by_id[listed.payment_id]
    assert together.rescheduled == sum(1 for f in alone if f.current.times != f.proposed.times)
    # The model chose retries, and the change moved some of them.
    assert any(f.current.times for f in alone)
    assert together.rescheduled > 0
