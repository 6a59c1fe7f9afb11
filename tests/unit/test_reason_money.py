"""Amounts in decision reasons read as money, in each currency's own minor unit."""

import pytest

from jobs.model import money


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (2666, "EUR", "26.66 EUR"),
        (5, "USD", "0.05 USD"),
        (980, "JPY", "980 JPY"),
        (1234, "BHD", "1.234 BHD"),
        (0, "GBP", "0.00 GBP"),
    ],
)
def test_money_in_major_units(minor: int, currency: str, shown: str) -> None:
    assert money(minor, currency) == shown
