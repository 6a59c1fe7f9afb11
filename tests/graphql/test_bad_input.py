"""Generated bad input never produces an unexpected (masked, 500-class) error."""

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import PAYMENTS_PAGE, UPDATE_RETRY_POLICY, codes, run

junk = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=junk, after=junk, states=junk, failed_after=junk)
async def test_payments_arguments(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    first: Any,
    after: Any,
    states: Any,
    failed_after: Any,
) -> None:
    merchant = await make_merchant(db, "Fuzz", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    variables = {
        "id": encode_id("Merchant", merchant.id),
        "first": first,
        "after": after,
        "filter": {"states": states, "failedAfter": failed_after},
    }
    result = await run(db, settings, clock, PAYMENTS_PAGE, token=token, variables=variables)
    assert "INTERNAL_SERVER_ERROR" not in codes(result)
    assert result.errors is None or all(codes(result))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_attempts=junk,
    window=junk,
    days=junk,
    timezone=junk,
    quiet=junk,
    version=junk,
)
async def test_policy_update_arguments(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    max_attempts: Any,
    window: Any,
    days: Any,
    timezone: Any,
    quiet: Any,
    version: Any,
) -> None:
    merchant = await make_merchant(db, "Fuzz policy", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    variables = {
        "input": {
            "merchantId": encode_id("Merchant", merchant.id),
            "expectedVersion": version,
            "reason": "fuzz",
            "maxAttempts": max_attempts,
            "windowDays": window,
            "fixedScheduleDays": days,
            "timezone": timezone,
            "quietHours": {"startHour": quiet, "endHour": 3},
        }
    }
    result = await run(db, settings, clock, UPDATE_RETRY_POLICY, token=token, variables=variables)
    assert "INTERNAL_SERVER_ERROR" not in codes(result)
    if result.data is not None:
        payload = result.data["updateRetryPolicy"]
        assert (payload["retryPolicy"] is None) == bool(payload["errors"])


async def test_long_literals_that_are_not_integers_are_validation_errors(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Long literals", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    for literal in ('""', '"x"', '" "', f'"{2**63}"', str(2**63)):
        query = f"""query($id: ID!) {{ merchant(id: $id) {{
          payments(filter: {{currencies: ["EUR"], amountMax: {literal}}}) {{ edges {{ cursor }} }}
        }} }}"""
        result = await run(
            db,
            settings,
            clock,
            query,
            token=token,
            variables={"id": encode_id("Merchant", merchant.id)},
        )
        assert codes(result) == ["GRAPHQL_VALIDATION_FAILED"], literal
