"""Customers' time zones from their country and region (docs/domain.md §5), and which zone a
decision's local times are read in."""

import zoneinfo

import pytest

from app.retry.rules import local_zone, zone_or_fallback
from app.timezones import Place, country_zones, place_of, zone_for


@pytest.mark.parametrize(
    ("country", "zone"),
    [
        ("GB", "Europe/London"),
        ("FR", "Europe/Paris"),
        ("JP", "Asia/Tokyo"),
        ("IN", "Asia/Kolkata"),
        # Two zones with one clock (Büsingen keeps Zurich's, which is Berlin's): one zone.
        ("DE", "Europe/Berlin"),
        # Named as zone.tab names it for the country, not for the country it shares a row with.
        ("NL", "Europe/Amsterdam"),
        ("LU", "Europe/Luxembourg"),
        ("de", "Europe/Berlin"),
    ],
)
def test_a_country_with_one_clock_has_one_zone_without_a_region(country: str, zone: str) -> None:
    assert zone_for(country, None) == zone
    assert zone_for(country, "anything at all") == zone


@pytest.mark.parametrize("country", ["US", "CA", "AU", "BR", "RU", "ES", "MX", "CN"])
def test_a_country_with_several_clocks_has_no_zone_without_a_region(country: str) -> None:
    assert len(country_zones(country)) > 1
    assert zone_for(country, None) is None
    assert zone_for(country, "not a region of it") is None


@pytest.mark.parametrize(
    ("country", "region", "zone"),
    [
        ("US", "NY", "America/New_York"),
        ("US", "ny", "America/New_York"),
        ("US", "US-IL", "America/Chicago"),
        ("US", "California", "America/Los_Angeles"),
        ("US", "new-york", "America/New_York"),
        ("US", "AZ", "America/Phoenix"),
        ("US", "HI", "Pacific/Honolulu"),
        ("CA", "BC", "America/Vancouver"),
        ("CA", "Ontario", "America/Toronto"),
        ("AU", "NSW", "Australia/Sydney"),
        ("AU", "Western Australia", "Australia/Perth"),
        ("BR", "São Paulo", "America/Sao_Paulo"),
        ("BR", "sao paulo", "America/Sao_Paulo"),
        ("ES", "Canary Islands", "Atlantic/Canary"),
    ],
)
def test_a_region_picks_the_zone_of_a_country_with_several(
    country: str, region: str, zone: str
) -> None:
    assert zone_for(country, region) == zone


def test_a_region_of_another_country_is_not_used() -> None:
    # Ontario is Canada's; read as a US region it matches nothing.
    assert zone_for("US", "Ontario") is None
    # A code that is a region elsewhere ("NSW") is not one of Brazil's.
    assert zone_for("BR", "NSW") is None


def test_unknown_countries_have_no_zone() -> None:
    assert country_zones("XX") == ()
    assert zone_for("XX", None) is None


def test_every_zone_named_for_a_country_loads() -> None:
    for country in ("US", "GB", "DE", "NL", "AU", "BR", "CA", "FR"):
        for zone in country_zones(country):
            zoneinfo.ZoneInfo(zone)


def test_billing_address_first_then_issuer_country() -> None:
    assert place_of("US", "CA", "GB") == Place("US", "CA", from_billing=True)
    assert place_of(None, "CA", "GB") == Place("GB", None, from_billing=False)
    assert place_of(None, None, None) is None
    assert Place("US", "CA", from_billing=True).timezone == "America/Los_Angeles"
    # The issuer's country carries no region: a country of several clocks gets no zone.
    assert Place("US", None, from_billing=False).timezone is None


def test_local_zone_says_which_zone_applied_and_why() -> None:
    customer = local_zone("America/Chicago", "Europe/Paris")
    assert customer.zone.key == "America/Chicago"
    assert customer.describe() == "local time: America/Chicago (the customer's time zone)"
    policy = local_zone(None, "Europe/Paris")
    assert policy.describe() == (
        "local time: Europe/Paris (the policy's time zone: the customer has none)"
    )
    bad = local_zone("Mars/Olympus", "Europe/Paris")
    assert bad.zone.key == "Europe/Paris"
    assert "the customer's 'Mars/Olympus' is not a time zone" in bad.describe()
    fallback = local_zone(None, "Nowhere/Else")
    assert fallback.describe() == (
        "local time: UTC (the fallback: the customer has none and the policy's "
        "'Nowhere/Else' is not one)"
    )
    assert zone_or_fallback("../etc/passwd", "").key == "UTC"
