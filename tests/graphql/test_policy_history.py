"""retryPolicy.history: every version newest first, who, when, why, and what changed."""

from datetime import timedelta
from typing import Any

from app.clock import FixedClock
from app.db import Database
from app.enums import Role
from app.settings import Settings
from resolvers.ids import encode_id
from tests.support.factories import key_id, make_key, make_merchant
from tests.support.graphql import UPDATE_RETRY_POLICY, run, run_data

HISTORY = """query($id: ID!, $first: Int, $after: String) { merchant(id: $id) { retryPolicy {
  history(first: $first, after: $after) {
    edges { node { version createdAt actor apiKeyId reason changes { field old new }
      policy { version maxAttempts } } }
    pageInfo { hasNextPage endCursor } totalCount } } } }"""


async def test_history_lists_versions_with_their_changes(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "History", now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now(), name="dashboard")
    changes: list[dict[str, Any]] = [
        {"maxAttempts": 6, "quietHours": {"startHour": 23, "endHour": 6}},
        {"strategy": "FIXED_SCHEDULE", "excludedDeclineCategories": ["CARD_EXPIRED"]},
        {"quietHours": None},
    ]
    for version, fields in enumerate(changes, start=1):
        clock.set(clock.now() + timedelta(minutes=1))
        variables = {
            "input": {
                "merchantId": encode_id("Merchant", merchant.id),
                "expectedVersion": version,
                "reason": f"change {version}",
                **fields,
            }
        }
        result = await run(
            db, settings, clock, UPDATE_RETRY_POLICY, token=token, variables=variables
        )
        assert result.errors is None
        assert result.data is not None
        assert result.data["updateRetryPolicy"]["errors"] == []

    mid = encode_id("Merchant", merchant.id)
    data = await run_data(db, settings, clock, HISTORY, token, id=mid, first=2)
    history = data["merchant"]["retryPolicy"]["history"]
    nodes = [e["node"] for e in history["edges"]]
    assert [n["version"] for n in nodes] == [4, 3]
    assert history["pageInfo"]["hasNextPage"] is True
    assert history["totalCount"] == 4
    key = encode_id("ApiKey", await key_id(db, token))
    assert nodes[0]["actor"] == "api_key:dashboard"
    assert nodes[0]["apiKeyId"] == key
    assert nodes[0]["reason"] == "change 3"
    assert nodes[0]["changes"] == [
        {"field": "quietHours", "old": {"startHour": 23, "endHour": 6}, "new": None}
    ]
    assert nodes[1]["changes"] == [
        {"field": "excludedDeclineCategories", "old": [], "new": ["CARD_EXPIRED"]},
        {"field": "strategy", "old": "MODEL", "new": "FIXED_SCHEDULE"},
    ]
    assert nodes[1]["policy"] == {"version": 3, "maxAttempts": 6}

    after = history["pageInfo"]["endCursor"]
    data = await run_data(db, settings, clock, HISTORY, token, id=mid, first=2, after=after)
    history = data["merchant"]["retryPolicy"]["history"]
    nodes = [e["node"] for e in history["edges"]]
    assert [n["version"] for n in nodes] == [2, 1]
    assert history["pageInfo"]["hasNextPage"] is False
    assert nodes[0]["changes"] == [
        {"field": "maxAttempts", "old": 4, "new": 6},
        {
            "field": "quietHours",
            "old": {"startHour": 22, "endHour": 7},
            "new": {"startHour": 23, "endHour": 6},
        },
    ]
    # The first version: made by the portal, no key, nothing it changed.
    assert nodes[1]["changes"] == []
    assert nodes[1]["apiKeyId"] is None
    assert nodes[1]["reason"] == "default policy"


async def test_history_cursor_of_another_merchant_gives_nothing_of_it(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    """A cursor names a version row; one of another merchant's rows matches no version here."""
    mine = await make_merchant(db, "Mine", now=clock.now())
    other = await make_merchant(db, "Other", now=clock.now())
    support = await make_key(db, Role.SUPPORT, [], now=clock.now())
    data = await run_data(
        db, settings, clock, HISTORY, support, id=encode_id("Merchant", other.id), first=1
    )
    cursor = data["merchant"]["retryPolicy"]["history"]["pageInfo"]["endCursor"]
    data = await run_data(
        db, settings, clock, HISTORY, support, id=encode_id("Merchant", mine.id), after=cursor
    )
    assert data["merchant"]["retryPolicy"]["history"]["edges"] == []
