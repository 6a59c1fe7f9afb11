"""previewRetryPolicy: the payments a change would re-decide and the champion's forecast,
refused as updateRetryPolicy refuses, and nothing written."""

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import ModelStatus, PaymentState, RetryStrategy, Role
from app.models.audit import AuditLog
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.retry_policy import RetryPolicy
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant, set_strategy
from tests.support.graphql import codes, run
from tests.support.model_rows import make_model
from tests.support.retry import decide, ingest, make_connection, stripe_charge

# A Monday 10:00 UTC: outside the default quiet hours.
T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)

PREVIEW = """mutation($id: ID!, $input: RetryPolicyChangesInput!) {
  previewRetryPolicy(merchantId: $id, input: $input) {
    preview { basedOnVersion proposed { version maxAttempts } changes { field old new }
      redecidedPayments scoredPayments rescheduledPayments modelId
      currencies { currency payments amount currentExpectedRecoveries
        proposedExpectedRecoveries expectedRecoveriesChange currentExpectedRecoveredAmount
        proposedExpectedRecoveredAmount expectedRecoveredAmountChange }
      payments { paymentId currency amount
        current { retryTimes successProbabilities recoveryProbability }
        proposed { retryTimes successProbabilities recoveryProbability } } }
    errors { code field message } } }"""


async def _scheduled(db: Database) -> tuple[Merchant, list[Payment]]:
    """Four payments on the fixed schedule, scheduled: three in EUR, one in USD."""
    merchant = await make_merchant(db, f"Preview {uuid.uuid4().hex[:6]}", now=T0)
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, T0)
    charges = []
    for i, (amount, currency) in enumerate(
        [(2900, "eur"), (4900, "eur"), (990, "eur"), (1500, "usd")]
    ):
        charge = stripe_charge(
            f"ch_preview_{i}",
            created=T0,
            customer=f"cus_{i}",
            fingerprint=f"fp_{i}",
            amount=amount,
        )
        charge["currency"] = currency
        charges.append(charge)
    payments = await ingest(db, connection, charges, T0)
    await decide(db, T0)
    return merchant, payments


async def _preview(
    db: Database, settings: Settings, token: str, merchant_id: uuid.UUID, **input: Any
) -> Any:
    result = await run(
        db,
        settings,
        FixedClock(T0),
        PREVIEW,
        token=token,
        variables={"id": encode_id("Merchant", merchant_id), "input": input},
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data["previewRetryPolicy"]


async def _written(db: Database, merchant_id: uuid.UUID) -> tuple[list[int], int, list[Any]]:
    async with db.session(SYSTEM_SCOPE) as s:
        versions = (
            await s.execute(
                select(RetryPolicy.version).where(col(RetryPolicy.merchant_id) == merchant_id)
            )
        ).scalars()
        entries = (
            await s.execute(
                select(AuditLog).where(
                    col(AuditLog.merchant_id) == merchant_id,
                    col(AuditLog.action) == "retry_policy.update",
                )
            )
        ).scalars()
        payments = (
            await s.execute(
                select(Payment.state, Payment.next_retry_at, Payment.policy_version)
                .where(col(Payment.merchant_id) == merchant_id)
                .order_by(col(Payment.id))
            )
        ).all()
        return sorted(versions), len(list(entries)), [tuple(p) for p in payments]


async def test_preview_forecasts_fewer_retries_and_writes_nothing(
    db: Database, settings: Settings
) -> None:
    merchant, _ = await _scheduled(db)
    await make_model(db, now=T0, status=ModelStatus.CHAMPION)
    token = await make_key(db, Role.MERCHANT, [merchant], now=T0)
    before = await _written(db, merchant.id)
    assert all(p[0] == PaymentState.SCHEDULED for p in before[2])

    payload = await _preview(
        db, settings, token, merchant.id, maxAttempts=2, fixedScheduleDays=[1, 3]
    )
    assert payload["errors"] == []
    preview = payload["preview"]
    assert preview["basedOnVersion"] == 1
    assert preview["proposed"] == {"version": 2, "maxAttempts": 2}
    assert preview["changes"] == [
        {"field": "maxAttempts", "old": 4, "new": 2},
        {"field": "fixedScheduleDays", "old": [1, 3, 5, 7], "new": [1, 3]},
    ]
    assert preview["redecidedPayments"] == 4
    assert preview["scoredPayments"] == 4
    assert preview["modelId"] is not None
    # The fixed schedule's first two days stay; the last two go.
    assert preview["rescheduledPayments"] == 4
    assert len(preview["payments"]) == 4
    for forecast in preview["payments"]:
        current, proposed = forecast["current"], forecast["proposed"]
        assert len(current["retryTimes"]) == 4
        assert proposed["retryTimes"] == current["retryTimes"][:2]
        assert proposed["successProbabilities"] == current["successProbabilities"][:2]
        for schedule in (current, proposed):
            p = schedule["successProbabilities"]
            assert all(0.0 < x < 1.0 for x in p)
            assert math.isclose(
                schedule["recoveryProbability"], 1 - math.prod(1 - x for x in p), rel_tol=1e-9
            )
        assert proposed["recoveryProbability"] < current["recoveryProbability"]

    by_currency = {c["currency"]: c for c in preview["currencies"]}
    assert sorted(by_currency) == ["EUR", "USD"]
    eur = by_currency["EUR"]
    assert eur["payments"] == 3
    assert eur["amount"] == 2900 + 4900 + 990
    items = [f for f in preview["payments"] if f["currency"] == "EUR"]
    assert math.isclose(
        eur["currentExpectedRecoveries"],
        sum(f["current"]["recoveryProbability"] for f in items),
        rel_tol=1e-9,
    )
    assert eur["currentExpectedRecoveredAmount"] == round(
        sum(f["amount"] * f["current"]["recoveryProbability"] for f in items)
    )
    assert eur["expectedRecoveriesChange"] < 0
    assert eur["expectedRecoveredAmountChange"] == (
        eur["proposedExpectedRecoveredAmount"] - eur["currentExpectedRecoveredAmount"]
    )
    assert 0 < eur["proposedExpectedRecoveredAmount"] < eur["currentExpectedRecoveredAmount"]
    assert eur["currentExpectedRecoveredAmount"] < eur["amount"]
    # Nothing was written: no version, no audit entry, no schedule changed.
    assert await _written(db, merchant.id) == before


async def test_preview_refuses_as_update_does(db: Database, settings: Settings) -> None:
    merchant, _ = await _scheduled(db)
    other = await make_merchant(db, "Other", now=T0)
    token = await make_key(db, Role.MERCHANT, [merchant], now=T0)
    payload = await _preview(db, settings, token, merchant.id, windowDays=99)
    assert payload["preview"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID", "windowDays")]
    payload = await _preview(db, settings, token, merchant.id)
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID", "input")]
    payload = await _preview(db, settings, token, merchant.id, maxAttempts=None)
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID", "maxAttempts")]
    payload = await _preview(db, settings, token, other.id, maxAttempts=3)
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("NOT_FOUND", "merchantId")]
    partner = await make_key(db, Role.PARTNER, [merchant], now=T0)
    result = await run(
        db,
        settings,
        FixedClock(T0),
        PREVIEW,
        token=partner,
        variables={"id": encode_id("Merchant", merchant.id), "input": {"maxAttempts": 3}},
    )
    assert codes(result) == ["FORBIDDEN"]


async def test_preview_without_a_champion_counts_only(db: Database, settings: Settings) -> None:
    merchant, _ = await _scheduled(db)
    support = await make_key(db, Role.SUPPORT, [], now=T0)
    payload = await _preview(db, settings, support, merchant.id, strategy="DECLINE_AWARE")
    preview = payload["preview"]
    assert preview["redecidedPayments"] == 4
    assert preview["modelId"] is None
    assert preview["rescheduledPayments"] is None
    assert preview["currencies"] == []
    assert preview["payments"] == []
