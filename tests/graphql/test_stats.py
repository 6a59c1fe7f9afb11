"""Recovery statistics through GraphQL against a fixture whose every figure is worked by hand."""

import itertools
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import FixedClock
from app.db import Database
from app.enums import (
    Actor,
    Advice,
    CardFunding,
    DeclineCategory,
    PaymentState,
    Processor,
    RetryStrategy,
    Role,
)
from app.models.customer import CardCredential, Customer
from app.models.merchant import Merchant
from app.models.payment import Payment
from app.models.stats import TTR_BUCKETS
from app.retry.schedule import in_control_group
from app.services.stats.figures import (
    Arm,
    Breakdown,
    RecoveryFigures,
    RecoveryStats,
    Uplift,
)
from app.services.stats.query import Granularity, Selection, StatsQuery, stats_query
from app.services.stats.recompute import recompute, rollup_differences
from app.services.stats.rollups import load_stats
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.factories import make_key, make_merchant
from tests.support.graphql import codes, run, run_data
from tests.support.statements import count_statements, without_savepoints

FROM = "2026-10-01T00:00:00+00:00"
TO = "2026-10-03T00:00:00+00:00"
H = 3600


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Spec:
    """One payment of the fixture."""

    currency: str
    amount: int
    failed_at: str
    category: DeclineCategory
    retryable: bool
    processor: Processor
    funding: CardFunding | None
    state: PaymentState
    actor: Actor | None = None
    recovered_after: int | None = None  # seconds
    attempts: int = 1
    strategy: RetryStrategy | None = None
    payment_id: uuid.UUID | None = None


IF, DNH, EXP, LOST = (
    DeclineCategory.INSUFFICIENT_FUNDS,
    DeclineCategory.DO_NOT_HONOR,
    DeclineCategory.CARD_EXPIRED,
    DeclineCategory.LOST_STOLEN,
)
S, A = Processor.STRIPE, Processor.ADYEN
R = PaymentState.RECOVERED

# Merchant A. Europe/Paris is UTC+2 on these days: P2 fails 23:30 on Oct 1 there, P3 00:30 on
# Oct 2, although both fail on Oct 1 in UTC.
FIXTURE_A = [
    # P1..P5 in EUR
    Spec("EUR", 1000, "2026-10-01T10:00", IF, True, S, CardFunding.CREDIT, R, Actor.PORTAL,
         2 * H, attempts=3),
    Spec("EUR", 2000, "2026-10-01T21:30", DNH, True, S, CardFunding.DEBIT, R, Actor.PROCESSOR,
         30 * H, attempts=2),
    Spec("EUR", 3000, "2026-10-01T22:30", EXP, False, A, CardFunding.CREDIT, R, Actor.CUSTOMER,
         120 * H),
    Spec("EUR", 4000, "2026-10-02T08:00", IF, True, A, None, PaymentState.SCHEDULED, attempts=2),
    Spec("EUR", 5000, "2026-10-02T12:00", LOST, False, S, CardFunding.PREPAID,
         PaymentState.NOT_RETRYABLE),
    # P6, P7 in USD
    Spec("USD", 700, "2026-10-01T05:00", IF, True, S, CardFunding.DEBIT, R, Actor.BILLING_SYSTEM,
         1 * H, attempts=2),
    Spec("USD", 300, "2026-10-02T23:00", IF, True, S, CardFunding.CREDIT,
         PaymentState.EXHAUSTED, attempts=5),
    # Outside [from, to): the day before, and exactly `to`.
    Spec("EUR", 9999, "2026-09-30T21:00", IF, True, S, CardFunding.CREDIT, R, Actor.PORTAL, H),
    Spec("EUR", 8888, "2026-10-03T00:00", IF, True, S, CardFunding.CREDIT,
         PaymentState.SCHEDULED),
]  # fmt: skip
FIXTURE_B = [
    Spec("EUR", 10_000, "2026-10-01T10:00", IF, True, S, CardFunding.CREDIT, R, Actor.PORTAL,
         3 * H, attempts=2),
]  # fmt: skip
FIXTURE_C = [
    Spec("JPY", 500, "2026-10-01T10:00", IF, True, S, CardFunding.CREDIT, PaymentState.PENDING),
]


async def add_payments(db: Database, merchant: Merchant, specs: list[Spec]) -> list[Payment]:
    """Payments as the retry engine and ingestion leave them, inserted one statement each."""
    made: list[Payment] = []
    async with db.uow(SYSTEM_SCOPE) as uow:
        customer = Customer(merchant_id=merchant.id, external_ref=uuid.uuid4().hex, created_at=NOW)
        uow.session.add(customer)
        await uow.session.flush()
        for i, spec in enumerate(specs):
            card_id = None
            if spec.funding is not None:
                card = CardCredential(
                    merchant_id=merchant.id,
                    customer_id=customer.id,
                    brand="visa",
                    funding=spec.funding,
                    last4="4242",
                    exp_month=1,
                    exp_year=2030,
                    fingerprint=f"fp-{uuid.uuid4().hex}-{i}",
                    created_at=NOW,
                )
                uow.session.add(card)
                await uow.session.flush()
                card_id = card.id
            failed_at = at(spec.failed_at)
            payment = Payment(
                id=spec.payment_id or uuid.uuid4(),
                merchant_id=merchant.id,
                processor=spec.processor,
                processor_payment_id=uuid.uuid4().hex,
                amount_minor=spec.amount,
                currency=spec.currency,
                customer_id=customer.id,
                card_id=card_id,
                first_failed_at=failed_at,
                decline_category=spec.category,
                decline_retryable=spec.retryable,
                decline_advice=Advice.RETRY if spec.retryable else Advice.NEVER,
                state=spec.state,
                recovered_at=None
                if spec.recovered_after is None
                else failed_at + timedelta(seconds=spec.recovered_after),
                recovered_by=spec.actor,
                attempt_count=spec.attempts,
                decision_strategy=spec.strategy,
                created_at=NOW,
                updated_at=NOW,
            )
            uow.session.add(payment)
            await uow.session.flush()
            made.append(payment)
        await uow.commit()
    return made


NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

FIGURES = """failedCount failedAmount eligibleCount eligibleAmount recoveredCount recoveredAmount
  recoveredByActor { actor count amount } recoveryRateByCount recoveryRateByAmount
  eligibleRecoveryRateByCount eligibleRecoveryRateByAmount attemptsPerRecovery
  medianTimeToRecoverSeconds p90TimeToRecoverSeconds inRecoveryCount inRecoveryAmount"""
STATS = f"""from to granularity timezone currencies {{ currency summary {{ {FIGURES} }}
  series {{ start figures {{ failedCount failedAmount recoveredCount }} }}
  byDeclineCategory {{ category figures {{ failedCount failedAmount eligibleCount
    recoveredCount eligibleRecoveryRateByCount }} }}
  byProcessor {{ processor figures {{ failedCount failedAmount recoveredAmount }} }}
  byCardFunding {{ funding figures {{ failedCount failedAmount }} }}
  uplift {{ difference lower upper confidenceLevel treatment {{ eligibleCount recoveredCount
    recoveryRate }} control {{ eligibleCount recoveredCount recoveryRate }} }} }}"""
MERCHANT_STATS = f"""query($id: ID!, $from: DateTime!, $to: DateTime!, $g: Granularity!,
  $tz: String) {{ merchant(id: $id) {{ recoveryStats(from: $from, to: $to, granularity: $g,
  timezone: $tz) {{ {STATS} }} }} }}"""
VIEWER_STATS = f"""query($from: DateTime!, $to: DateTime!, $g: Granularity!, $tz: String) {{
  viewer {{ recoveryStats(from: $from, to: $to, granularity: $g, timezone: $tz) {{ {STATS} }}
  }} }}"""


@dataclass
class World:
    db: Database
    settings: Settings
    clock: FixedClock
    merchants: dict[str, Merchant]
    tokens: dict[str, str]


@pytest.fixture
async def world(db: Database, settings: Settings, clock: FixedClock) -> World:
    merchants = {n: await make_merchant(db, f"Stats {n}", now=NOW) for n in "ABC"}
    for name, specs in (("A", FIXTURE_A), ("B", FIXTURE_B), ("C", FIXTURE_C)):
        await add_payments(db, merchants[name], specs)
    tokens = {
        "merchant": await make_key(db, Role.MERCHANT, [merchants["A"]], now=NOW),
        "partner": await make_key(db, Role.PARTNER, [merchants["A"], merchants["B"]], now=NOW),
        "support": await make_key(db, Role.SUPPORT, [], now=NOW),
    }
    return World(db, settings, clock, merchants, tokens)


async def _ok(w: World, role: str, query: str, **variables: Any) -> dict[str, Any]:
    return await run_data(w.db, w.settings, w.clock, query, w.tokens[role], **variables)


async def _merchant_stats(w: World, name: str, g: str = "DAY", tz: str | None = "Europe/Paris"):  # type: ignore[no-untyped-def]
    data = await _ok(
        w,
        "merchant",
        MERCHANT_STATS,
        id=encode_id("Merchant", w.merchants[name].id),
        **{"from": FROM, "to": TO, "g": g, "tz": tz},
    )
    return data["merchant"]["recoveryStats"]


def _by(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {i[key]: i["figures"] for i in items}


async def test_every_figure_by_hand(world: World) -> None:
    stats = await _merchant_stats(world, "A")
    assert stats["from"] == FROM
    assert stats["to"] == TO
    assert stats["timezone"] == "Europe/Paris"
    assert [c["currency"] for c in stats["currencies"]] == ["EUR", "USD"]
    eur, usd = stats["currencies"]
    assert eur["summary"] == {
        # P1..P5; P8 (before from) and P9 (at to) are outside.
        "failedCount": 5,
        "failedAmount": 15_000,
        # P3 and P5 were never retryable.
        "eligibleCount": 3,
        "eligibleAmount": 7000,
        "recoveredCount": 3,
        "recoveredAmount": 6000,
        "recoveredByActor": [
            {"actor": "PORTAL", "count": 1, "amount": 1000},
            {"actor": "PROCESSOR", "count": 1, "amount": 2000},
            {"actor": "BILLING_SYSTEM", "count": 0, "amount": 0},
            {"actor": "CUSTOMER", "count": 1, "amount": 3000},
        ],
        "recoveryRateByCount": 3 / 5,
        "recoveryRateByAmount": 6000 / 15_000,
        # Of the eligible P1, P2, P4: P1 and P2 recovered (P3's customer recovery is not).
        "eligibleRecoveryRateByCount": 2 / 3,
        "eligibleRecoveryRateByAmount": 3000 / 7000,
        # Retries: P1 2, P2 1, P3 0.
        "attemptsPerRecovery": 1.0,
        # Times 2 h, 30 h, 120 h fall in buckets [2 h, 4 h), [24 h, 36 h), [120 h, 144 h).
        # Median: rank 1.5 is half-way into [24 h, 36 h) -> 30 h.
        "medianTimeToRecoverSeconds": 30 * H,
        # p90: rank 2.7 is 70% into [120 h, 144 h) -> 136.8 h.
        "p90TimeToRecoverSeconds": 492_480,
        "inRecoveryCount": 1,
        "inRecoveryAmount": 4000,
    }
    assert usd["summary"]["failedCount"] == 2
    assert usd["summary"]["failedAmount"] == 1000
    assert usd["summary"]["recoveredByActor"][2] == {
        "actor": "BILLING_SYSTEM",
        "count": 1,
        "amount": 700,
    }
    assert usd["summary"]["recoveryRateByAmount"] == 0.7
    # One recovery after 1 h, in [1 h, 2 h): median 1.5 h, p90 1.9 h.
    assert usd["summary"]["medianTimeToRecoverSeconds"] == 5400
    assert usd["summary"]["p90TimeToRecoverSeconds"] == 6840
    assert usd["summary"]["inRecoveryCount"] == 0

    # Days in Paris: Oct 1 holds P1 and P2; P3 (00:30 local) starts Oct 2's point.
    assert eur["series"] == [
        {
            "start": "2026-10-01T00:00:00+02:00",
            "figures": {"failedCount": 2, "failedAmount": 3000, "recoveredCount": 2},
        },
        {
            "start": "2026-10-02T00:00:00+02:00",
            "figures": {"failedCount": 3, "failedAmount": 12_000, "recoveredCount": 1},
        },
        {
            "start": "2026-10-03T00:00:00+02:00",
            "figures": {"failedCount": 0, "failedAmount": 0, "recoveredCount": 0},
        },
    ]
    # P7 fails 23:00 UTC on Oct 2, 01:00 on Oct 3 in Paris.
    assert [p["figures"]["failedCount"] for p in usd["series"]] == [1, 0, 1]

    categories = _by(eur["byDeclineCategory"], "category")
    assert list(categories) == ["CARD_EXPIRED", "DO_NOT_HONOR", "INSUFFICIENT_FUNDS", "LOST_STOLEN"]
    assert categories["CARD_EXPIRED"] == {
        "failedCount": 1,
        "failedAmount": 3000,
        "eligibleCount": 0,
        "recoveredCount": 1,
        "eligibleRecoveryRateByCount": None,
    }
    assert categories["INSUFFICIENT_FUNDS"] == {
        "failedCount": 2,
        "failedAmount": 5000,
        "eligibleCount": 2,
        "recoveredCount": 1,
        "eligibleRecoveryRateByCount": 0.5,
    }
    assert _by(eur["byProcessor"], "processor") == {
        "ADYEN": {"failedCount": 2, "failedAmount": 7000, "recoveredAmount": 3000},
        "STRIPE": {"failedCount": 3, "failedAmount": 8000, "recoveredAmount": 3000},
    }
    assert _by(eur["byCardFunding"], "funding") == {
        "CREDIT": {"failedCount": 2, "failedAmount": 4000},
        "DEBIT": {"failedCount": 1, "failedAmount": 2000},
        "PREPAID": {"failedCount": 1, "failedAmount": 5000},
        "UNKNOWN": {"failedCount": 1, "failedAmount": 4000},  # P4 has no card
    }
    assert eur["uplift"] is None  # far fewer than 30 per group
    assert usd["uplift"] is None


async def test_series_in_utc_by_default(world: World) -> None:
    stats = await _merchant_stats(world, "A", tz=None)
    assert stats["timezone"] == "UTC"
    eur = stats["currencies"][0]
    assert [(p["start"], p["figures"]["failedCount"]) for p in eur["series"]] == [
        ("2026-10-01T00:00:00+00:00", 3),
        ("2026-10-02T00:00:00+00:00", 2),
    ]


async def test_weeks_and_months_follow_the_timezone(world: World) -> None:
    week = await _merchant_stats(world, "A", g="WEEK", tz="Asia/Tokyo")
    # Thursday Oct 1 belongs to the week from Monday Sep 28 (Tokyo).
    assert [p["start"] for p in week["currencies"][0]["series"]] == ["2026-09-28T00:00:00+09:00"]
    month = await _merchant_stats(world, "A", g="MONTH", tz="America/Los_Angeles")
    # 00:00 UTC on Oct 1 is still September in Los Angeles.
    starts = [p["start"] for p in month["currencies"][0]["series"]]
    assert starts == ["2026-09-01T00:00:00-07:00", "2026-10-01T00:00:00-07:00"]
    assert [p["figures"]["failedCount"] for p in month["currencies"][0]["series"]] == [0, 5]


async def test_viewer_adds_up_the_merchants_a_key_may_see(world: World) -> None:
    variables = {"from": FROM, "to": TO, "g": "DAY", "tz": None}
    partner = await _ok(world, "partner", VIEWER_STATS, **variables)
    currencies = partner["viewer"]["recoveryStats"]["currencies"]
    assert [c["currency"] for c in currencies] == ["EUR", "USD"]  # never C's JPY
    assert currencies[0]["summary"]["failedAmount"] == 15_000 + 10_000
    assert currencies[0]["summary"]["recoveredByActor"][0]["amount"] == 1000 + 10_000
    support = await _ok(world, "support", VIEWER_STATS, **variables)
    found = {c["currency"] for c in support["viewer"]["recoveryStats"]["currencies"]}
    assert {"EUR", "USD", "JPY"} <= found


@pytest.mark.parametrize(
    ("variables", "code", "field"),
    [
        ({"from": TO, "to": FROM}, "INVALID_TIME_RANGE", "to"),
        ({"from": FROM, "to": FROM}, "INVALID_TIME_RANGE", "to"),
        ({"from": "2026-10-01T00:00:00", "to": TO}, "INVALID_TIME_RANGE", "from"),
        ({"from": "1990-01-01T00:00:00Z", "to": TO}, "INVALID_TIME_RANGE", "to"),
        ({"tz": "Mars/Olympus_Mons"}, "INVALID_TIMEZONE", "timezone"),
        ({"tz": "../../etc/passwd"}, "INVALID_TIMEZONE", "timezone"),
        ({"tz": ""}, "INVALID_TIMEZONE", "timezone"),
    ],
)
async def test_bad_ranges_and_timezones_are_typed_errors(
    world: World, variables: dict[str, Any], code: str, field: str
) -> None:
    merged = {"from": FROM, "to": TO, "g": "DAY", "tz": "UTC", **variables}
    for query, extra in (
        (MERCHANT_STATS, {"id": encode_id("Merchant", world.merchants["A"].id)}),
        (VIEWER_STATS, {}),
    ):
        result = await run(
            world.db,
            world.settings,
            world.clock,
            query,
            token=world.tokens["merchant"],
            variables={**merged, **extra},
        )
        assert codes(result) == [code]
        assert result.errors is not None
        assert (result.errors[0].extensions or {}).get("field") == field


async def test_months_span_is_bounded_but_long_month_ranges_pass(world: World) -> None:
    stats = await _merchant_stats(world, "A", g="MONTH")
    assert stats["granularity"] == "MONTH"
    query = stats_query(at("2000-01-01T00:00"), at("2060-01-01T00:00"), Granularity.MONTH, None)
    assert query.timezone == "UTC"


# Partial months at both edges; whole months (September and October, in every zone) between
# partial ones; October in Paris exactly (local midnights, so whole months and no edge days).
RANGES = (
    ("2026-09-15T00:00", "2026-10-20T00:00"),
    ("2026-08-25T00:00", "2026-11-05T00:00"),
    ("2026-09-30T22:00", "2026-10-31T23:00"),
)


async def test_served_figures_equal_recomputation(world: World) -> None:
    ids = [m.id for m in world.merchants.values()]
    async with world.db.session(SYSTEM_SCOPE) as session:
        assert await rollup_differences(session) == []
        for tz, (start, end) in itertools.product(
            ("UTC", "Europe/Paris", "Asia/Kolkata", "Pacific/Chatham"), RANGES
        ):
            for g in Granularity:
                query = stats_query(at(start), at(end), g, tz)
                for per_merchant in (False, True):
                    served = await load_stats(
                        session, query, merchant_ids=ids, per_merchant=per_merchant
                    )
                    assert served == await recompute(
                        session, query, merchant_ids=ids, per_merchant=per_merchant
                    )


def _restricted(stats: RecoveryStats, query: StatsQuery) -> RecoveryStats:
    """Statistics computed for everything, cut to what `query.selection` reads."""
    chosen = query.selection

    def figures(f: RecoveryFigures, kind: str) -> RecoveryFigures:
        if kind in chosen.histograms:
            return f
        return replace(f, ttr_histogram=(0,) * TTR_BUCKETS)

    def breakdowns(found: tuple[Breakdown, ...], kind: str) -> tuple[Breakdown, ...]:
        if kind not in chosen.kinds:
            return ()
        return tuple(replace(b, figures=figures(b.figures, kind)) for b in found)

    currencies = tuple(
        replace(
            c,
            summary=figures(c.summary, "total"),
            series=tuple(replace(p, figures=figures(p.figures, "series")) for p in c.series)
            if "series" in chosen.kinds
            else (),
            by_decline_category=breakdowns(c.by_decline_category, "decline_category"),
            by_processor=breakdowns(c.by_processor, "processor"),
            by_card_funding=breakdowns(c.by_card_funding, "funding"),
            uplift=c.uplift if "arm" in chosen.kinds else None,
        )
        for c in stats.currencies
    )
    return RecoveryStats(query, currencies)


@pytest.mark.parametrize(
    "chosen",
    [
        Selection(frozenset({"total"}), frozenset()),
        Selection(frozenset({"total", "series", "processor"}), frozenset({"total"})),
        Selection(frozenset({"total", "decline_category", "arm"}), frozenset({"decline_category"})),
        Selection(frozenset({"total", "series", "funding"}), frozenset({"series", "funding"})),
        Selection(
            frozenset({"total", "decline_category", "processor", "funding"}),
            frozenset({"total", "processor"}),
        ),
    ],
)
async def test_a_partial_selection_serves_the_same_figures(world: World, chosen: Selection) -> None:
    """What a query leaves out is neither summed nor built; what it reads is unchanged."""
    ids = [m.id for m in world.merchants.values()]
    async with world.db.session(SYSTEM_SCOPE) as session:
        for tz, (start, end) in itertools.product(("UTC", "Europe/Paris"), RANGES[:2]):
            for g in (Granularity.DAY, Granularity.MONTH):
                full = stats_query(at(start), at(end), g, tz)
                query = replace(full, selection=chosen)
                for per_merchant in (False, True):
                    served = await load_stats(
                        session, query, merchant_ids=ids, per_merchant=per_merchant
                    )
                    expected = await recompute(
                        session, full, merchant_ids=ids, per_merchant=per_merchant
                    )
                    assert served == {k: _restricted(v, query) for k, v in expected.items()}


PARTIAL_STATS = """query($id: ID!, $from: DateTime!, $to: DateTime!, $tz: String) {
  merchant(id: $id) { recoveryStats(from: $from, to: $to, granularity: DAY, timezone: $tz) {
    currencies { currency ...Summary byProcessor { processor figures { ...Rates } } } } } }
fragment Summary on CurrencyRecoveryStats { summary { failedCount ...Rates } }
fragment Rates on RecoveryFigures { recoveredAmount medianTimeToRecoverSeconds }"""


async def test_the_graphql_selection_reads_what_the_query_selects(world: World) -> None:
    """Fields behind fragments count as selected; the answer is the full query's, cut down."""
    merchant = encode_id("Merchant", world.merchants["A"].id)
    variables = {"id": merchant, "from": FROM, "to": TO, "tz": "Europe/Paris"}
    partial = await _ok(world, "merchant", PARTIAL_STATS, **variables)
    full = await _merchant_stats(world, "A")
    expected = [
        {
            "currency": c["currency"],
            "summary": {
                "failedCount": c["summary"]["failedCount"],
                "recoveredAmount": c["summary"]["recoveredAmount"],
                "medianTimeToRecoverSeconds": c["summary"]["medianTimeToRecoverSeconds"],
            },
            "byProcessor": [
                {
                    "processor": p["processor"],
                    "figures": {"recoveredAmount": p["figures"]["recoveredAmount"]},
                }
                for p in c["byProcessor"]
            ],
        }
        for c in full["currencies"]
    ]
    found = partial["merchant"]["recoveryStats"]["currencies"]
    assert found
    for c in found:
        for p in c["byProcessor"]:
            p["figures"] = {"recoveredAmount": p["figures"]["recoveredAmount"]}
    assert found == expected
    assert any(c["summary"]["medianTimeToRecoverSeconds"] is not None for c in found)


def _ids(merchant: Merchant, count: int, *, control: bool) -> list[uuid.UUID]:
    found: list[uuid.UUID] = []
    while len(found) < count:
        candidate = uuid.uuid4()
        if in_control_group(str(merchant.id), str(candidate)) == control:
            found.append(candidate)
    return found


async def test_uplift_of_the_model_over_the_control_group(world: World) -> None:
    merchant = world.merchants["A"]
    day = "2026-10-02T03:00"
    specs: list[Spec] = []
    treated = _ids(merchant, 40, control=False)
    for i, pid in enumerate(treated):
        recovered = i < 20
        specs.append(
            Spec("GBP", 100, day, IF, True, S, CardFunding.CREDIT,
                 R if recovered else PaymentState.EXHAUSTED, Actor.PORTAL if recovered else None,
                 H if recovered else None, strategy=RetryStrategy.MODEL, payment_id=pid)
        )  # fmt: skip
    for i, pid in enumerate(_ids(merchant, 32, control=True)):
        recovered = i < 8
        specs.append(
            Spec("GBP", 100, day, IF, True, S, CardFunding.CREDIT,
                 R if recovered else PaymentState.EXHAUSTED, Actor.CUSTOMER if recovered else None,
                 H if recovered else None, strategy=RetryStrategy.FIXED_SCHEDULE, payment_id=pid)
        )  # fmt: skip
    # Never retryable: outside both groups' denominators.
    specs += [
        Spec("GBP", 100, day, EXP, False, S, CardFunding.CREDIT, PaymentState.NOT_RETRYABLE)
        for _ in range(5)
    ]
    await add_payments(world.db, merchant, specs)
    stats = await _merchant_stats(world, "A")
    gbp = next(c for c in stats["currencies"] if c["currency"] == "GBP")
    uplift = gbp["uplift"]
    assert uplift["treatment"] == {"eligibleCount": 40, "recoveredCount": 20, "recoveryRate": 0.5}
    assert uplift["control"] == {"eligibleCount": 32, "recoveredCount": 8, "recoveryRate": 0.25}
    assert uplift["difference"] == pytest.approx(0.25)
    # Newcombe's hybrid score interval, worked from the two Wilson intervals
    # (0.35200, 0.64800) and (0.13252, 0.42107).
    assert uplift["lower"] == pytest.approx(0.023795, abs=1e-6)
    assert uplift["upper"] == pytest.approx(0.438960, abs=1e-6)
    assert uplift["confidenceLevel"] == 0.95

    # A merchant that never ran the model has no treatment group: no uplift.
    other = world.merchants["B"]
    await add_payments(
        world.db,
        other,
        [
            Spec("GBP", 100, day, IF, True, S, None, PaymentState.EXHAUSTED, payment_id=pid)
            for pid in _ids(other, 40, control=False) + _ids(other, 40, control=True)
        ],
    )
    data = await _ok(
        world,
        "partner",
        MERCHANT_STATS,
        id=encode_id("Merchant", other.id),
        **{"from": FROM, "to": TO, "g": "DAY", "tz": None},
    )
    currencies = data["merchant"]["recoveryStats"]["currencies"]
    assert next(c for c in currencies if c["currency"] == "GBP")["uplift"] is None


def test_newcombe_interval_matches_the_published_example() -> None:
    """Newcombe (1998), Statistics in Medicine 17, table II: 56/70 vs 48/80."""
    uplift = Uplift.of(Arm(70, 56), Arm(80, 48))
    assert uplift is not None
    assert uplift.difference == pytest.approx(0.2)
    assert uplift.lower == pytest.approx(0.0524, abs=5e-5)
    assert uplift.upper == pytest.approx(0.3339, abs=5e-5)
    assert Uplift.of(Arm(29, 10), Arm(100, 10)) is None


async def test_statement_count_is_constant(
    connection: AsyncConnection, world: World, settings: Settings
) -> None:
    """One statistics statement per request, however many merchants, currencies or points."""
    viewer = {"from": FROM, "to": TO, "g": "DAY", "tz": None}
    many = """query($from: DateTime!, $to: DateTime!) { merchants(first: 50) { edges { node {
      recoveryStats(from: $from, to: $to) { currencies { currency summary { failedCount } } }
    } } } }"""
    # Authenticate once so later requests are read-only.
    await _ok(world, "support", "{ viewer { role } }")
    counts: dict[str, int] = {}
    for label, query, variables in (
        ("viewer day", VIEWER_STATS, viewer),
        ("viewer month", VIEWER_STATS, {**viewer, "g": "MONTH", "to": "2027-10-01T00:00:00Z"}),
        ("merchants", many, {"from": FROM, "to": TO}),
    ):
        with count_statements(connection) as statements:
            await _ok(world, "support", query, **variables)
        counts[label] = len(without_savepoints(statements))
    more = [await make_merchant(world.db, f"Stats extra {i}", now=NOW) for i in range(4)]
    for merchant in more:
        await add_payments(world.db, merchant, FIXTURE_A[:2])
    with count_statements(connection) as statements:
        data = await _ok(world, "support", many, **{"from": FROM, "to": TO})
    assert len(data["merchants"]["edges"]) >= 7
    # The support key's lookup, then one statistics statement (the page adds its merchants).
    assert counts["viewer day"] == counts["viewer month"] == 2
    assert len(without_savepoints(statements)) == counts["merchants"] == 3
