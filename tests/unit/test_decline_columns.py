"""A decline is stored under the same column names on a payment and on each of its attempts."""

from datetime import UTC, datetime

import pytest
from sqlmodel import SQLModel

from app.bulk import table_of
from app.declines import Decline
from app.enums import Advice, DeclineCategory
from app.models.payment import DeclineColumns, Payment, PaymentAttempt, decline_columns

NOT_BEFORE = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("model", [Payment, PaymentAttempt])
def test_every_decline_column_is_a_column_of_both_tables(model: type[SQLModel]) -> None:
    assert set(DeclineColumns.__annotations__) <= set(table_of(model).columns.keys())


def test_a_decline_maps_to_its_columns() -> None:
    decline = Decline(
        DeclineCategory.INSUFFICIENT_FUNDS, True, Advice.RETRY_LATER, NOT_BEFORE, "51", "05", "24"
    )
    assert decline_columns(decline) == {
        "decline_category": DeclineCategory.INSUFFICIENT_FUNDS,
        "decline_retryable": True,
        "decline_advice": Advice.RETRY_LATER,
        "decline_raw_code": "51",
        "decline_network_code": "05",
        "decline_network_advice_code": "24",
    }


@pytest.mark.parametrize(("raw_code", "stored"), [(None, None), ("", None), ("x" * 70, "x" * 64)])
def test_the_raw_code_is_stored_within_its_column_or_not_at_all(
    raw_code: str | None, stored: str | None
) -> None:
    decline = Decline(DeclineCategory.OTHER, False, Advice.NEVER, None, raw_code, None, None)
    assert decline_columns(decline)["decline_raw_code"] == stored
