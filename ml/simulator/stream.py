"""Per-merchant stream of subscription charges (successes and first failures) for the sandbox."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ml import taxonomy, timeutil
from ml.simulator.config import CAUSES, SimulatorConfig, load_config
from ml.simulator.customers import Customers, billing_region, draw_customers
from ml.simulator.world import (
    DEFAULT_START,
    FUNDS,
    NEW_CARD,
    SimFailure,
    _period_days,
    draw_failures,
    last_deposit,
)

_EPOCH_MONTH = np.datetime64("2000-01", "M")
_FUNDS_OVERSAMPLE = 2.0
_BIN_PREFIX = {"visa": "4", "mastercard": "53", "amex": "37", "discover": "6011"}


@dataclass(frozen=True)
class StreamCard:
    """Card details as a processor reports them (processor-neutral spelling)."""

    brand: str
    funding: str
    country: str | None
    last4: str
    bin: str
    exp_month: int
    exp_year: int
    fingerprint: str


@dataclass(frozen=True)
class StreamCharge:
    """One subscription charge: a success, or a first failure with its observed decline."""

    charge_id: str
    customer_id: str
    amount_minor: int
    currency: str
    card: StreamCard
    status: str
    decline_category: str | None
    network_code: str | None
    advice_code: str | None
    created: datetime
    # Simulator-side handle the sandbox keeps to answer retries; never part of a processor payload.
    failure: SimFailure | None
    # Where the customer lives: the country and region (state, province) of their billing
    # address; None outside the simulated markets.
    billing_country: str | None = None
    billing_region: str | None = None


@dataclass(frozen=True)
class _Merchant:
    seed: int
    customers: Customers
    anchor_dom: np.ndarray
    billing_hour: np.ndarray
    change_times: list[np.ndarray]
    updated: list[np.ndarray]
    # Each customer's billing address: (country, region), None outside the simulated markets.
    places: list[tuple[str | None, str | None]]


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _merchant(seed: int, config: SimulatorConfig) -> _Merchant:
    rng = np.random.default_rng([seed, 0])
    n = config.stream.customers_per_merchant
    customers = draw_customers(rng, n, config)
    anchor_dom = rng.integers(1, 29, size=n)
    billing_hour = np.mod(
        config.population.billing_hour_utc_mean
        + config.population.billing_hour_utc_sd * rng.standard_normal(n),
        24.0,
    )
    rate = -math.log(max(1e-9, 1.0 - config.cards.annual_change_rate))
    change_times: list[np.ndarray] = []
    updated: list[np.ndarray] = []
    horizon_years = 40.0
    for _ in range(n):
        k = int(rng.poisson(rate * horizon_years))
        times = np.sort(rng.uniform(0.0, horizon_years * 365.25, k)) * timeutil.DAY + (
            DEFAULT_START - 20 * 365.25 * timeutil.DAY
        )
        change_times.append(times)
        updated.append(rng.random(k) < config.cards.account_updater_coverage)
    places = [_place(customers, i) for i in range(n)]
    return _Merchant(seed, customers, anchor_dom, billing_hour, change_times, updated, places)


def _place(customers: Customers, i: int) -> tuple[str | None, str | None]:
    """Where customer `i` is billed: their country and, where the world has one, region."""
    named = taxonomy.COUNTRIES[int(customers.country[i])]
    if named == "other":
        return None, None
    return named, billing_region(named, int(customers.tz_minutes[i]))


def _card(m: _Merchant, i: int, version: int) -> StreamCard:
    c = m.customers
    brand = taxonomy.BRANDS[int(c.brand[i])]
    d = _digest(m.seed, i, version)
    digits = str(int(d[:12], 16)).zfill(12)
    prefix = _BIN_PREFIX[brand]
    changes = m.change_times[i]
    # A card is replaced when it expires or is lost: its expiry is the next change, if any.
    if version < changes.size:
        expires = float(changes[version])
    else:
        issued = float(changes[version - 1]) if version else DEFAULT_START
        expires = issued + 4 * 365.25 * timeutil.DAY
    exp = datetime.fromtimestamp(expires, tz=UTC)
    country = taxonomy.COUNTRIES[int(c.country[i])]
    return StreamCard(
        brand=brand,
        funding=taxonomy.FUNDINGS[int(c.funding[i])],
        country=None if country == "other" else country,
        last4=digits[-4:],
        bin=(prefix + digits)[:6],
        exp_month=exp.month,
        exp_year=exp.year,
        fingerprint=d[16:32],
    )


def _month_charges(m: _Merchant, month_index: int, config: SimulatorConfig) -> list[StreamCharge]:
    c = m.customers
    n = len(c)
    rng = np.random.default_rng([m.seed, 1, month_index])
    month_start = (_EPOCH_MONTH + np.timedelta64(month_index, "M")).astype("datetime64[D]")
    start_day = int(month_start.astype(np.int64))
    t = (start_day + m.anchor_dom - 1) * timeutil.DAY + m.billing_hour * timeutil.HOUR
    prev_t = t - 30.4 * timeutil.DAY
    # The card on file: changes the updater delivered are applied; the others bite once.
    version_now = np.array(
        [int(np.searchsorted(ct, x)) for ct, x in zip(m.change_times, t, strict=True)]
    )
    version_prev = np.array(
        [int(np.searchsorted(ct, x)) for ct, x in zip(m.change_times, prev_t, strict=True)]
    )
    stale = np.zeros(n, dtype=bool)
    for changed in np.flatnonzero(version_now > version_prev):
        window = m.updated[changed][version_prev[changed] : version_now[changed]]
        stale[changed] = not bool(np.all(window))
    fail_rate = config.stream.first_failure_rate
    keys = [k for k in CAUSES if k != "new_card_data"]
    # About half the low-balance draws are turned back into successes below (those close
    # after a payday), so they are drawn twice as often to keep the §5 cause mix.
    weight = np.array([_FUNDS_OVERSAMPLE if k == "funds" else 1.0 for k in keys])
    p_credit = np.array([config.causes.credit[k] for k in keys]) * weight
    p_debit = np.array([config.causes.debit[k] for k in keys]) * weight
    funds_share = float(p_credit[0] / p_credit.sum())
    kept = 1.0 - funds_share * (1.0 - 1.0 / _FUNDS_OVERSAMPLE)
    draw_rate = fail_rate * (1.0 - config.causes.credit["new_card_data"]) / kept
    fails = (rng.random(n) < draw_rate) | stale
    idx = np.flatnonzero(fails)
    cause = np.zeros(idx.size, dtype=np.int8)
    credit = c.funding[idx] == taxonomy.FUNDINGS.index("credit")
    u = rng.random(idx.size)
    for j, pos in enumerate(idx):
        if stale[pos]:
            cause[j] = NEW_CARD
            continue
        p = p_credit if credit[j] else p_debit
        pick = int(np.searchsorted(np.cumsum(p / p.sum()), u[j]))
        cause[j] = CAUSES.index(keys[min(pick, len(keys) - 1)])
    batch = draw_failures(
        rng,
        c,
        idx.astype(np.int64),
        idx.astype(np.int64) + m.seed * 1_000_000,
        t[idx],
        np.arange(idx.size, dtype=np.int64) + month_index * 1_000_000,
        config,
        resample_times=False,
        cause=cause,
    )
    # Low balances happen far from payday: a low-balance failure close after a payday is
    # turned back into a success, so failures cluster before paydays.
    funds = np.flatnonzero(batch.hidden.cause == FUNDS)
    keep = np.ones(idx.size, dtype=bool)
    if funds.size:
        sub = batch.hidden.take(funds)
        since = (t[idx][funds] - last_deposit(sub, c.tz_minutes[idx][funds], t[idx][funds])) / (
            timeutil.DAY
        )
        keep[funds] = rng.random(funds.size) < np.clip(since / _period_days(sub.cycle), 0.1, 1.0)
    failed_pos = {int(pos): j for j, pos in enumerate(idx) if keep[j]}
    out: list[StreamCharge] = []
    for i in range(n):
        version = int(version_now[i]) - int(stale[i] and i in failed_pos)
        k = failed_pos.get(i)
        obs = batch.observed
        out.append(
            StreamCharge(
                charge_id=f"ch_{m.seed}_{i}_{month_index}",
                customer_id=f"cus_{m.seed}_{i}",
                amount_minor=int(c.amount_minor[i]),
                currency=taxonomy.CURRENCIES[int(c.currency[i])],
                card=_card(m, i, max(version, 0)),
                status="failed" if k is not None else "succeeded",
                decline_category=None if k is None else taxonomy.CATEGORIES[int(obs.category[k])],
                network_code=None
                if k is None
                else taxonomy.NETWORK_CODES[int(obs.network_code[k])],
                advice_code=None
                if k is None or obs.advice_code[k] == 0
                else taxonomy.ADVICE_CODES[int(obs.advice_code[k])],
                created=datetime.fromtimestamp(float(t[i]), tz=UTC),
                failure=None if k is None else SimFailure(batch, k),
                billing_country=m.places[i][0],
                billing_region=m.places[i][1],
            )
        )
    return out


def stream_charges(
    merchant_seed: int,
    start: datetime,
    end: datetime,
    config: SimulatorConfig | None = None,
) -> Iterator[StreamCharge]:
    """Charges created in [start, end), in time order; the same seed always gives the same world."""
    config = config or load_config()
    m = _merchant(merchant_seed, config)
    first = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "M")
    last = np.datetime64(end.astimezone(UTC).replace(tzinfo=None), "M")
    lo, hi = start.timestamp(), end.timestamp()
    month = int((first - _EPOCH_MONTH).astype(np.int64))
    stop = int((last - _EPOCH_MONTH).astype(np.int64))
    for month_index in range(month, stop + 1):
        charges = sorted(_month_charges(m, month_index, config), key=lambda ch: ch.created)
        for ch in charges:
            if lo <= ch.created.timestamp() < hi:
                yield ch


def card_change_rate(
    seed: int, config: SimulatorConfig | None = None, customers: int = 3000, progress: bool = False
) -> float:
    """Share of a merchant's customers whose card number or expiry changed within a year."""
    del progress  # Fast enough that a bar would only flicker.
    config = config or load_config()
    small = SimulatorConfig(
        population=config.population,
        causes=config.causes,
        codes=config.codes,
        pay_cycles=config.pay_cycles,
        outcome=config.outcome,
        cards=config.cards,
        stream=type(config.stream)(
            customers_per_merchant=customers, first_failure_rate=config.stream.first_failure_rate
        ),
    )
    m = _merchant(seed, small)
    year_start = DEFAULT_START
    year_end = year_start + 365.0 * timeutil.DAY
    changed = [bool(np.any((ct >= year_start) & (ct < year_end))) for ct in m.change_times]
    return float(np.mean(changed))
