"""A customer's country and time zone from what processors send (docs/domain.md §5).

Countries map to time zones through the tz database's own table, `zone1970.tab` (from the
`tzdata` package, else the system's zoneinfo directory). A country whose zones all keep the
same clock is one zone, named as the database's `zone.tab` names it for that country (the
Netherlands' Europe/Amsterdam rather than the Europe/Brussels it shares a clock with). A country
whose zones differ needs the region (state, province) of the billing address: regions map to
zones through the countries-states-cities database (`countrystatecity-countries`), and a
region's zone is kept only when it keeps the clock of one of the country's zones in the tz
database. Without a usable region such a country gets no time zone: the merchant's policy zone
applies to that customer.
"""

import unicodedata
import zoneinfo
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from countrystatecity_countries import get_states_of_country

ZONE_TABLE = "zone1970.tab"
# One row per (country, zone), named for the country; kept by the tz database as an aid for
# choosing a zone, which is what naming a customer's zone is.
COUNTRY_ZONE_TABLE = "zone.tab"
# Two zones keep the same clock when their UTC offsets agree at every sample: weekly instants
# over two years from the start of the current year (each daylight-saving switch is seen).
_SAMPLE_WEEKS = 105


@dataclass(frozen=True, slots=True)
class Place:
    """Where a customer is, as one record tells it: the billing address's country and region,
    or, lacking an address, the card issuer's country (`from_billing` False)."""

    country: str
    region: str | None
    from_billing: bool

    @property
    def timezone(self) -> str | None:
        return zone_for(self.country, self.region)


def place_of(
    billing_country: str | None, billing_region: str | None, issuer_country: str | None
) -> Place | None:
    """The billing address first, the issuer's country as the fallback, else nothing."""
    if billing_country is not None:
        return Place(billing_country, billing_region, from_billing=True)
    if issuer_country is not None:
        return Place(issuer_country, None, from_billing=False)
    return None


@lru_cache(maxsize=4096)
def zone_for(country: str, region: str | None) -> str | None:
    """The time zone of a customer in `country` (ISO 3166-1 alpha-2), in `region` if known.

    One clock in the country: its zone. Several: the region's zone, when the region is known
    and its zone agrees with the tz database; otherwise None (the policy's zone applies).
    """
    code = country.upper()
    zones = country_zones(code)
    if not zones:
        return None
    clocks = _country_clocks(code)
    if len(clocks) == 1:
        return _named(code, zones[0])
    if region is None:
        return None
    zone = _region_zones(code).get(_key(region))
    if zone is None or _clock(zone) not in clocks:
        return None
    return zone


@cache
def _country_clocks(country: str) -> frozenset[tuple[timedelta | None, ...]]:
    return frozenset(_clock(zone) for zone in country_zones(country))


@cache
def country_zones(country: str) -> tuple[str, ...]:
    """The country's zones in `zone1970.tab`, those it is listed first for leading (a zone
    shared by several countries is listed under the one it is named for first)."""
    return tuple(_zone_table().get(country, ()))


def _named(country: str, zone: str) -> str:
    """The zone `zone.tab` lists for the country first with the same clock, else `zone`."""
    clock = _clock(zone)
    for name in _rows(COUNTRY_ZONE_TABLE).get(country, ()):
        if _clock(name) == clock:
            return name
    return zone


@cache
def _zone_table() -> Mapping[str, list[str]]:
    return _rows(ZONE_TABLE)


@cache
def _rows(table: str) -> Mapping[str, list[str]]:
    """A table's zones by country code, each country's own rows (those it is listed first in)
    before those it shares."""
    own: dict[str, list[str]] = defaultdict(list)
    shared: dict[str, list[str]] = defaultdict(list)
    for line in _table_text(table).splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        codes, zone = fields[0].split(","), fields[2]
        own[codes[0]].append(zone)
        for code in codes[1:]:
            shared[code].append(zone)
    return {code: own.get(code, []) + shared.get(code, []) for code in {*own, *shared}}


def _table_text(table: str) -> str:
    """A tz database table from the `tzdata` package (the version the project pins), else from
    the first system zoneinfo directory that has it."""
    try:
        return resources.files("tzdata").joinpath("zoneinfo", table).read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    for directory in zoneinfo.TZPATH:
        path = Path(directory) / table
        if path.is_file():
            return path.read_text("utf-8")
    raise RuntimeError(f"no {table}: install the tzdata package")


@cache
def _clock(zone: str) -> tuple[timedelta | None, ...]:
    """The zone's UTC offsets at the sample instants (empty when the zone cannot be loaded)."""
    try:
        info = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return ()
    start = datetime(datetime.now(UTC).year, 1, 1, tzinfo=UTC)
    return tuple(
        (start + timedelta(weeks=w)).astimezone(info).utcoffset() for w in range(_SAMPLE_WEEKS)
    )


@cache
def _region_zones(country: str) -> Mapping[str, str]:
    """A country's regions by each spelling a billing address may use (the code, the ISO
    3166-2 code, the name), to the region's zone."""
    found: dict[str, str] = {}
    for state in get_states_of_country(country):
        if not state.timezone:
            continue
        for spelling in (state.state_code, state.iso3166_2, state.name, state.native):
            if spelling:
                found.setdefault(_key(spelling), state.timezone)
    return found


def _key(text: str) -> str:
    """A region's spelling compared without case, accents or punctuation ("São Paulo" and
    "sao-paulo" are alike)."""
    plain = unicodedata.normalize("NFKD", text)
    letters = "".join(c for c in plain if c.isalnum() or c.isspace() or c == "-")
    words = letters.replace("-", " ").casefold().split()
    return " ".join(words)
