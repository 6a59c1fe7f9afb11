"""updateRetryPolicy: validation, optimistic concurrency, versions and the audit log."""

from typing import Any

import pytest
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.models.merchant import Merchant
from app.models.retry_policy import RetryPolicy
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.audit import audit_entries
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import UPDATE_RETRY_POLICY, codes, run


async def _setup(db: Database, clock: FixedClock) -> tuple[Merchant, str]:
    merchant = await make_merchant(db, "Policy", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="dashboard")
    return merchant, token


async def _update(
    db: Database,
    settings: Settings,
    clock: FixedClock,
    token: str,
    merchant: Merchant,
    **fields: Any,
) -> dict[str, Any]:
    variables = {
        "input": {
            "merchantId": encode_id("Merchant", merchant.id),
            "expectedVersion": 1,
            "reason": "test change",
            **fields,
        }
    }
    result = await run(db, settings, clock, UPDATE_RETRY_POLICY, token=token, variables=variables)
    assert result.errors is None, result.errors
    assert result.data is not None
    payload: dict[str, Any] = result.data["updateRetryPolicy"]
    return payload


async def _versions(db: Database, merchant: Merchant) -> list[int]:
    async with db.session(SYSTEM_SCOPE) as s:
        rows = await s.execute(
            select(RetryPolicy.version).where(col(RetryPolicy.merchant_id) == merchant.id)
        )
        return sorted(rows.scalars())


async def test_update_adds_a_version_and_an_audit_entry(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    payload = await _update(
        db,
        settings,
        clock,
        token,
        merchant,
        maxAttempts=6,
        windowDays=21,
        quietHours={"startHour": 23, "endHour": 6},
        timezone="Europe/Paris",
        excludedDeclineCategories=["CARD_EXPIRED"],
        strategy="MODEL",
        fixedScheduleDays=[1, 4, 9, 16],
        endAction="CANCEL_SUBSCRIPTION",
        controlGroupPercent=25,
    )
    assert payload["errors"] == []
    policy = payload["retryPolicy"]
    assert policy["version"] == 2
    assert policy["maxAttempts"] == 6
    assert policy["quietHours"] == {"startHour": 23, "endHour": 6}
    assert policy["excludedDeclineCategories"] == ["CARD_EXPIRED"]
    assert policy["strategy"] == "MODEL"
    assert policy["controlGroupPercent"] == 25
    assert policy["updatedBy"] == "api_key:dashboard"
    assert await _versions(db, merchant) == [1, 2]
    [entry] = await audit_entries(db, merchant_id=merchant.id, action="retry_policy.update")
    assert entry.reason == "test change"
    assert entry.before is not None
    assert entry.after is not None
    assert entry.before["max_attempts"] == 4
    assert entry.after["max_attempts"] == 6
    assert (entry.before["control_group_percent"], entry.after["control_group_percent"]) == (10, 25)
    assert entry.actor == "api_key:dashboard"


async def test_quiet_hours_null_clears_them(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    payload = await _update(db, settings, clock, token, merchant, quietHours=None)
    assert payload["retryPolicy"]["quietHours"] is None


async def test_version_conflict(db: Database, settings: Settings, clock: FixedClock) -> None:
    merchant, token = await _setup(db, clock)
    first = await _update(db, settings, clock, token, merchant, maxAttempts=5)
    assert first["errors"] == []
    stale = await _update(db, settings, clock, token, merchant, maxAttempts=7)
    assert stale["retryPolicy"] is None
    assert [e["code"] for e in stale["errors"]] == ["VERSION_CONFLICT"]
    assert await _versions(db, merchant) == [1, 2]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"maxAttempts": 16}, "maxAttempts"),
        ({"windowDays": 0}, "windowDays"),
        ({"windowDays": 61}, "windowDays"),
        ({"minHoursBetweenAttempts": 0}, "minHoursBetweenAttempts"),
        (
            {"maxAttempts": 15, "minHoursBetweenAttempts": 1, "fixedScheduleDays": [1]},
            "minHoursBetweenAttempts",
        ),
        ({"quietHours": {"startHour": 24, "endHour": 6}}, "quietHours"),
        ({"quietHours": {"startHour": 5, "endHour": 5}}, "quietHours"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"fixedScheduleDays": []}, "fixedScheduleDays"),
        ({"fixedScheduleDays": [3, 2]}, "fixedScheduleDays"),
        ({"fixedScheduleDays": [1, 30]}, "fixedScheduleDays"),
        ({"fixedScheduleDays": [1, 2, 3, 4, 5]}, "fixedScheduleDays"),
        ({"maxAttempts": None}, "maxAttempts"),
        ({"controlGroupPercent": 51}, "controlGroupPercent"),
        ({"controlGroupPercent": -1}, "controlGroupPercent"),
        ({"controlGroupPercent": None}, "controlGroupPercent"),
        ({"windowDays": 5}, "fixedScheduleDays"),
        ({}, "input"),
        ({"reason": "  "}, "reason"),
    ],
)
async def test_invalid_changes_are_refused_and_write_nothing(
    db: Database, settings: Settings, clock: FixedClock, fields: dict[str, Any], field: str
) -> None:
    merchant, token = await _setup(db, clock)
    payload = await _update(db, settings, clock, token, merchant, **fields)
    assert payload["retryPolicy"] is None
    assert payload["errors"]
    assert {e["code"] for e in payload["errors"]} == {"INVALID"}
    assert field in {e["field"] for e in payload["errors"]}
    assert await _versions(db, merchant) == [1]


async def test_wrong_argument_types_are_graphql_errors(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant, token = await _setup(db, clock)
    result = await run(
        db,
        settings,
        clock,
        UPDATE_RETRY_POLICY,
        token=token,
        variables={
            "input": {
                "merchantId": encode_id("Merchant", merchant.id),
                "expectedVersion": "one",
                "reason": "r",
            }
        },
    )
    assert result.data is None
    assert codes(result) == ["INVALID_ARGUMENT"]
