"""Shadow against champion: pairs, agreement, the predicted difference, realized recovery."""

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from app.db import Database
from app.enums import ModelStatus, PaymentState, Role
from app.errors import Forbidden, InvalidArgument, NotFound
from app.models.model_version import ROLE_ACTING, ROLE_SHADOW
from app.models.payment import Payment
from app.services import model_comparison
from app.services.model_comparison import DEFAULT_TOLERANCE, Comparison, compare
from app.services.model_registry import DecisionRecord
from app.services.stats.figures import Z_95
from app.tenancy import SYSTEM_SCOPE, Principal, Scope, system_principal
from tests.support.factories import make_merchant, make_payments
from tests.support.model_rows import Choice, decision, make_model, pair, settle, stop, store

T0 = datetime(2026, 10, 5, 10, 0, tzinfo=UTC)
SUPPORT = system_principal("test")


async def _compare(
    db: Database,
    shadow: uuid.UUID,
    *,
    champion_id: uuid.UUID | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> Comparison | None:
    async with db.session(SYSTEM_SCOPE) as session:
        return await compare(
            session,
            principal=SUPPORT,
            shadow_id=shadow,
            champion_id=champion_id,
            tolerance=tolerance,
        )


async def test_pairs_agreement_predicted_and_realized_figures(db: Database) -> None:
    merchant = await make_merchant(db, "Compared", now=T0)
    p1, p2, p3, p4, p5, p6, p7, p8 = await make_payments(db, merchant, 8, now=T0)
    champion = (await make_model(db, now=T0, status=ModelStatus.CHAMPION)).id
    shadow = (await make_model(db, now=T0, status=ModelStatus.SHADOW)).id
    other = (await make_model(db, now=T0, status=ModelStatus.RETIRED)).id
    t1, t2 = T0, T0 + timedelta(days=1)

    def both(payment: Payment, at: datetime, s: Choice, c: Choice) -> list[DecisionRecord]:
        return pair(
            payment, shadow=shadow, champion=champion, at=at, shadow_choice=s, champion_choice=c
        )

    records = [
        # p1: the same time, then 30 minutes apart (within the hour's tolerance).
        *both(p1, t1, Choice(120, 0.30), Choice(120, 0.25)),
        *both(p1, t2, Choice(210, 0.20), Choice(180, 0.22)),
        # p2: a retry against the champion's stop; p3: both stop.
        *both(p2, t1, Choice(300, 0.40), stop(0.02)),
        *both(p3, t1, stop(), stop()),
        # p4: three hours apart.
        *both(p4, t1, Choice(60, 0.10), Choice(240, 0.30)),
        # p7: the shadow's own fallback time, the champion's model time: the same instant, no
        # known chance for the shadow.
        *both(p7, t1, Choice(1440, None, "fallback"), Choice(1440, 0.10)),
        # Unpaired: a stop forced by the rules (no chance to weigh, no choice made); the
        # champion fell back to the rules; another champion acted.
        *both(p8, t1, stop(None), stop(None)),
        decision(p5, champion, ROLE_ACTING, t1, Choice(60, None, "fallback")),
        decision(p5, shadow, ROLE_SHADOW, t1, Choice(60, 0.5)),
        decision(p6, other, ROLE_ACTING, t1, Choice(60, 0.5)),
        decision(p6, shadow, ROLE_SHADOW, t1, Choice(60, 0.5)),
        # Another model's shadow decision at a paired point is not this shadow's.
        decision(p1, other, ROLE_SHADOW, t1, Choice(999, 0.9)),
    ]
    await store(db, records)
    await settle(db, p1, PaymentState.RECOVERED)
    await settle(db, p2, PaymentState.EXHAUSTED)
    await settle(db, p3, PaymentState.RECOVERED, currency="USD")
    await settle(db, p4, PaymentState.SCHEDULED, currency="USD")
    await settle(db, p7, PaymentState.EXHAUSTED)

    found = await _compare(db, shadow)
    assert found is not None
    assert (found.champion_id, found.tolerance) == (champion, timedelta(hours=1))
    assert found.shadow_decisions == 9
    assert found.paired_decisions == 6
    assert found.agreeing_decisions == 4  # p1 twice, p3, p7
    assert found.identical_decisions == 3  # p1 at t1, p3, p7
    assert found.agreement_rate == pytest.approx(4 / 6)
    predicted = found.predicted
    assert predicted is not None
    assert (predicted.decisions, predicted.payments) == (5, 4)
    assert predicted.difference == pytest.approx((0.05 - 0.02 + 0.40 + 0.0 - 0.20) / 5)
    assert predicted.shadow_mean == pytest.approx((0.30 + 0.20 + 0.40 + 0.0 + 0.10) / 5)
    assert predicted.champion_mean == pytest.approx((0.25 + 0.22 + 0.0 + 0.0 + 0.30) / 5)
    # Four payments: too few for an interval, so no verdict either.
    assert (predicted.lower, predicted.upper, predicted.not_worse(0.01)) == (None, None, None)

    agree = {c.currency: c for c in found.agreement.currencies}
    disagree = {c.currency: c for c in found.disagreement.currencies}
    eur = agree["EUR"]  # p1 recovered, p7 exhausted
    assert (eur.payments, eur.settled_payments, eur.recovered_payments) == (2, 2, 1)
    assert (eur.settled_amount, eur.recovered_amount) == (
        p1.amount_minor + p7.amount_minor,
        p1.amount_minor,
    )
    usd = agree["USD"]  # p3 recovered
    assert (usd.payments, usd.settled_payments, usd.recovered_amount) == (1, 1, p3.amount_minor)
    assert (disagree["EUR"].settled_payments, disagree["EUR"].recovered_payments) == (1, 0)
    # p4 is still scheduled: counted, not settled.
    assert (disagree["USD"].payments, disagree["USD"].settled_payments) == (1, 0)
    assert disagree["USD"].settled_amount == 0
    assert found.agreement.recovery_rate == pytest.approx(2 / 3)
    assert found.disagreement.recovery_rate == 0.0
    assert found.realized_difference is None  # fewer than 30 settled payments a side

    # No tolerance: p1's second point no longer agrees, so p1 moves to the disagreement side.
    exact = await _compare(db, shadow, tolerance=timedelta(0))
    assert exact is not None
    assert (exact.agreeing_decisions, exact.identical_decisions) == (3, 3)
    assert {c.currency for c in exact.disagreement.currencies} == {"EUR", "USD"}
    assert exact.disagreement.payments == 3

    # Against the other model as champion, only p6's decision pairs.
    versus_other = await _compare(db, shadow, champion_id=other)
    assert versus_other is not None
    assert (versus_other.paired_decisions, versus_other.agreeing_decisions) == (1, 1)


async def test_interval_is_clustered_by_payment(db: Database) -> None:
    merchant = await make_merchant(db, "Clustered", now=T0)
    payments = await make_payments(db, merchant, 40, now=T0)
    champion = (await make_model(db, now=T0, status=ModelStatus.CHAMPION)).id
    shadow = (await make_model(db, now=T0, status=ModelStatus.SHADOW)).id
    rng = np.random.default_rng(7)
    diffs: list[list[float]] = []
    records = []
    for i, payment in enumerate(payments):
        mine = []
        for j in range(1 + i % 3):  # one to three decision points per payment
            s, c = float(rng.uniform(0.05, 0.6)), float(rng.uniform(0.05, 0.6))
            mine.append(s - c)
            records += pair(
                payment,
                shadow=shadow,
                champion=champion,
                at=T0 + timedelta(days=j),
                shadow_choice=Choice(60 * (j + 1), s),
                champion_choice=Choice(60 * (j + 1), c),
            )
        diffs.append(mine)
    await store(db, records)
    found = await _compare(db, shadow)
    assert found is not None
    assert found.predicted is not None
    flat = [d for mine in diffs for d in mine]
    n, g = len(flat), len(diffs)
    mean = sum(flat) / n
    ss = sum((sum(mine) - len(mine) * mean) ** 2 for mine in diffs)
    se = math.sqrt(g / (g - 1) * ss) / n
    predicted = found.predicted
    assert (predicted.decisions, predicted.payments) == (n, g)
    assert predicted.difference == pytest.approx(mean)
    assert predicted.lower == pytest.approx(mean - Z_95 * se)
    assert predicted.upper == pytest.approx(mean + Z_95 * se)
    assert found.agreement_rate == 1.0
    # The criterion: not worse when the lower bound clears minus the margin.
    assert predicted.lower is not None
    assert predicted.not_worse(-predicted.lower + 1e-9) is True
    assert predicted.not_worse(-predicted.lower - 1e-9) is False


async def test_only_the_newest_window_of_shadow_decisions_is_read(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    merchant = await make_merchant(db, "Windowed", now=T0)
    [payment] = await make_payments(db, merchant, 1, now=T0)
    champion = (await make_model(db, now=T0, status=ModelStatus.CHAMPION)).id
    shadow = (await make_model(db, now=T0, status=ModelStatus.SHADOW)).id
    # Five decision points: the two oldest disagree, the three newest agree.
    records = []
    for day in range(5):
        c = Choice(60, 0.2)
        s = Choice(60 if day >= 2 else 600, 0.2)
        records += pair(
            payment,
            shadow=shadow,
            champion=champion,
            at=T0 + timedelta(days=day),
            shadow_choice=s,
            champion_choice=c,
        )
    await store(db, records)
    monkeypatch.setattr(model_comparison, "WINDOW", 3)
    found = await _compare(db, shadow)
    assert found is not None
    assert (found.shadow_decisions, found.paired_decisions, found.agreeing_decisions) == (3, 3, 3)


async def test_no_champion_no_comparison_and_bad_input_is_refused(db: Database) -> None:
    shadow = (await make_model(db, now=T0, status=ModelStatus.SHADOW)).id
    assert await _compare(db, shadow) is None
    with pytest.raises(NotFound):
        await _compare(db, shadow, champion_id=uuid.uuid4())
    champion = (await make_model(db, now=T0, status=ModelStatus.CHAMPION)).id
    found = await _compare(db, shadow)
    assert found is not None
    assert found.champion_id == champion
    assert (found.shadow_decisions, found.paired_decisions, found.predicted) == (0, 0, None)
    assert found.agreement_rate is None
    with pytest.raises(InvalidArgument, match="between 0 and 24 hours"):
        await _compare(db, shadow, tolerance=timedelta(hours=25))
    merchant = await make_merchant(db, "Not support", now=T0)
    key = Principal(
        key_id=uuid.uuid4(),
        name="m",
        role=Role.MERCHANT,
        scope=Scope(merchant_ids=frozenset({merchant.id})),
    )
    async with db.session(key.scope) as session:
        with pytest.raises(Forbidden):
            await compare(session, principal=key, shadow_id=shadow)


async def test_a_merchant_scope_sees_only_its_own_pairs(db: Database) -> None:
    """The session's tenancy filter reaches inside the comparison's statement."""
    champion = (await make_model(db, now=T0, status=ModelStatus.CHAMPION)).id
    shadow = (await make_model(db, now=T0, status=ModelStatus.SHADOW)).id
    merchants = [await make_merchant(db, f"Scoped {i}", now=T0) for i in range(2)]
    records = []
    for merchant, count in zip(merchants, (2, 3), strict=True):
        for payment in await make_payments(db, merchant, count, now=T0):
            records += pair(
                payment,
                shadow=shadow,
                champion=champion,
                at=T0,
                shadow_choice=Choice(60, 0.2),
                champion_choice=Choice(60, 0.1),
            )
    await store(db, records)
    scope = Scope(merchant_ids=frozenset({merchants[0].id}))
    async with db.session(scope) as session:
        found = await model_comparison.comparisons(
            session, [shadow], champion_id=None, tolerance=timedelta(hours=1)
        )
    assert found[shadow].paired_decisions == 2
    everyone = await _compare(db, shadow)
    assert everyone is not None
    assert everyone.paired_decisions == 5


async def test_the_comparison_turns_jit_off_for_its_transaction(db: Database) -> None:
    champion = (await make_model(db, now=T0, status=ModelStatus.CHAMPION)).id
    async with db.session(SYSTEM_SCOPE) as session:
        await session.execute(text("SET LOCAL jit = on"))
        await compare(session, principal=SUPPORT, shadow_id=champion)
        assert (await session.execute(text("SHOW jit"))).scalar_one() == "off"
