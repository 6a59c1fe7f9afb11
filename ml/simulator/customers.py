"""Customers of the simulated world: cards, places, amounts and pay cycles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ml import taxonomy, timeutil
from ml.simulator.config import PAY_CYCLES, SimulatorConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I16 = npt.NDArray[np.int16]

_TZ_BY_COUNTRY: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "US": ((-300, -360, -420, -480), (0.47, 0.29, 0.07, 0.17)),
    "GB": ((0,), (1.0,)),
    "CA": ((-300, -480), (0.7, 0.3)),
    "DE": ((60,), (1.0,)),
    "FR": ((60,), (1.0,)),
    "AU": ((600,), (1.0,)),
    "BR": ((-180,), (1.0,)),
}
# Where a customer of each (country, UTC offset in minutes) is billed: a state or province in
# that offset, as a billing address names it (ISO 3166-2 subdivision codes).
_REGION_BY_ZONE: dict[tuple[str, int], str] = {
    ("US", -300): "NY",
    ("US", -360): "IL",
    ("US", -420): "CO",
    ("US", -480): "CA",
    ("CA", -300): "ON",
    ("CA", -480): "BC",
    ("AU", 600): "NSW",
    ("BR", -180): "SP",
    ("GB", 0): "ENG",
    ("DE", 60): "BE",
    ("FR", 60): "IDF",
}
_CURRENCY_BY_COUNTRY = {
    "US": "USD",
    "GB": "GBP",
    "CA": "CAD",
    "DE": "EUR",
    "FR": "EUR",
    "AU": "AUD",
    "BR": "BRL",
}
_AMOUNT_SCALE = {"BRL": 5.0, "GBP": 0.8, "EUR": 0.9, "CAD": 1.35, "AUD": 1.5, "USD": 1.0}


def billing_region(country: str, tz_minutes: int) -> str | None:
    """The region (state, province) a customer's billing address names, if the simulated world
    has one for their country and offset."""
    return _REGION_BY_ZONE.get((country, tz_minutes))


def _choice(rng: np.random.Generator, shares: dict[str, float], n: int) -> npt.NDArray[np.str_]:
    keys = list(shares)
    p = np.array([shares[k] for k in keys], dtype=np.float64)
    return np.asarray(keys)[rng.choice(len(keys), size=n, p=p / p.sum())]


@dataclass(frozen=True)
class Customers:
    """Customer-level attributes: card, place, pay cycle, subscription amount."""

    funding: I16
    brand: I16
    country: I16
    currency: I16
    tz_minutes: I16
    amount_minor: I64
    cycle: npt.NDArray[np.int8]
    anchor_day: I64
    pay_dom: I64
    deposit_hour: F64
    jitter_days: F64
    coverage_mean: F64

    def __len__(self) -> int:
        return int(self.funding.shape[0])


def draw_customers(rng: np.random.Generator, n: int, config: SimulatorConfig) -> Customers:
    """Draw n customers with their cards, timezones and pay cycles."""
    pop = config.population
    u = rng.random(n)
    funding_names = np.where(
        u < pop.credit_share,
        "credit",
        np.where(u < pop.credit_share + pop.prepaid_share, "prepaid", "debit"),
    )
    brand_names = _choice(rng, pop.brand_shares, n)
    # Amex and Discover cards issued in the simulated markets are overwhelmingly credit.
    funding_names = np.where(np.isin(brand_names, ["amex", "discover"]), "credit", funding_names)
    country_names = _choice(rng, pop.country_shares, n)
    tz = np.zeros(n, dtype=np.int16)
    for country, (offsets, weights) in _TZ_BY_COUNTRY.items():
        m = country_names == country
        tz[m] = rng.choice(np.asarray(offsets), size=int(m.sum()), p=np.asarray(weights))
    currency_names = np.array([_CURRENCY_BY_COUNTRY.get(c, "USD") for c in country_names])
    scale = np.array([_AMOUNT_SCALE.get(c, 1.0) for c in currency_names])
    raw = pop.amount_median_minor * scale * np.exp(pop.amount_sigma * rng.standard_normal(n))
    # Subscription prices end in 99.
    amount = np.maximum(np.rint(raw / 100.0) * 100.0 - 1.0, 99.0).astype(np.int64)

    pc = config.pay_cycles
    cycle = np.array([PAY_CYCLES.index(c) for c in _choice(rng, pc.shares, n)], dtype=np.int8)
    weekday = _choice(rng, pc.weekday_shares, n).astype(np.int64)
    # Any day number with the right weekday serves as the phase anchor.
    base = np.int64(4) + rng.integers(0, 2, size=n) * 7
    anchor = base + (weekday - timeutil.weekday(base)) % 7
    pay_dom = _choice(rng, pc.monthly_day_shares, n).astype(np.int64)
    irregular = rng.random(n) < pc.irregular_share
    return Customers(
        funding=taxonomy.encode(list(funding_names), taxonomy.FUNDINGS),
        brand=taxonomy.encode(list(brand_names), taxonomy.BRANDS),
        country=taxonomy.encode(list(country_names), taxonomy.COUNTRIES),
        currency=taxonomy.encode(list(currency_names), taxonomy.CURRENCIES),
        tz_minutes=tz,
        amount_minor=amount,
        cycle=cycle,
        anchor_day=anchor,
        pay_dom=pay_dom,
        deposit_hour=rng.uniform(pc.deposit_hour_min, pc.deposit_hour_max, n),
        jitter_days=np.where(irregular, pc.irregular_jitter_days, 0.0),
        coverage_mean=rng.beta(config.outcome.funds_coverage_a, config.outcome.funds_coverage_b, n),
    )
