"""GraphQL: models (support only), promoteModel through the gate, Payment.decision.explanation."""

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import ModelStatus, PaymentState, RetryStrategy, Role
from app.models.model_version import ModelVersion
from app.services.model_registry import ROLE_ACTING, ROLE_SHADOW, DecisionRecord, record_decisions
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import encode_id
from tests.support.audit import audit_entries
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import codes, count_payment_pages, run
from tests.support.model_rows import make_model, make_shadowed, settle, verdict

MODELS = "{ models { id status trainedAt featureList metrics { overall { auc logLoss ece rows } "
MODELS += "byCategory { category } bestIteration } gate { promote reason championId } } }"
PROMOTE = """mutation($id: ID!, $reason: String!) { promoteModel(id: $id, reason: $reason) {
  model { id status promotedBy reason } errors { code message field } } }"""


def gid(row: ModelVersion) -> str:
    return encode_id("Model", row.id)


async def _status(db: Database, model_id: uuid.UUID) -> ModelStatus:
    async with db.session(SYSTEM_SCOPE) as s:
        row = (
            await s.execute(select(ModelVersion).where(col(ModelVersion.id) == model_id))
        ).scalar_one()
    return row.status


async def test_support_lists_models_with_metrics(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    row = await make_model(db, now=now, gate=verdict(True, None))
    token = await make_key(db, Role.SUPPORT, [], now=now)
    result = await run(db, settings, clock, MODELS, token=token)
    assert result.errors is None, result.errors
    assert result.data is not None
    [model] = result.data["models"]
    assert model["id"] == gid(row)
    assert model["status"] == "CHALLENGER"
    assert model["featureList"] == "attempt_success/v1"
    overall = model["metrics"]["overall"]
    assert 0.5 < overall["auc"] <= 1.0
    assert overall["rows"] > 0
    assert model["metrics"]["byCategory"]
    assert model["gate"] == {
        "promote": True,
        "reason": "log loss better by 0.0100",
        "championId": None,
    }


async def test_models_are_forbidden_to_merchant_and_partner_keys(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    await make_model(db, now=now)
    merchant = await make_merchant(db, "M", now=now)
    for role in (Role.MERCHANT, Role.PARTNER):
        token = await make_key(db, role, [merchant], now=now)
        result = await run(db, settings, clock, MODELS, token=token)
        assert codes(result) == ["FORBIDDEN"]


async def test_promotion_retires_the_champion_and_is_audited(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    champion = await make_model(db, now=now, status=ModelStatus.CHAMPION)
    challenger = await make_model(db, now=now, gate=verdict(True, champion.id))
    token = await make_key(db, Role.SUPPORT, [], now=now)
    result = await run(
        db,
        settings,
        clock,
        PROMOTE,
        token=token,
        variables={"id": gid(challenger), "reason": "wins"},
    )
    assert result.errors is None, result.errors
    assert result.data == {
        "promoteModel": {
            "model": {
                "id": gid(challenger),
                "status": "CHAMPION",
                "promotedBy": "api_key:test",
                "reason": "wins",
            },
            "errors": [],
        }
    }
    assert await _status(db, champion.id) is ModelStatus.RETIRED
    [entry] = await audit_entries(db, action="model.promote")
    assert (entry.merchant_id, entry.entity_id, entry.reason) == (None, str(challenger.id), "wins")
    assert entry.before == {"status": "challenger", "champion_id": str(champion.id)}


async def test_promotion_refusals_are_typed_errors(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    champion = await make_model(db, now=now, status=ModelStatus.CHAMPION)
    loser = await make_model(db, now=now, gate=verdict(False, champion.id))
    stale = await make_model(db, now=now, gate=verdict(True, uuid.uuid4()))
    ungated = await make_model(db, now=now)
    token = await make_key(db, Role.SUPPORT, [], now=now)

    async def promote(model_id: str, reason: str = "try") -> dict[str, object]:
        result = await run(
            db, settings, clock, PROMOTE, token=token, variables={"id": model_id, "reason": reason}
        )
        assert result.errors is None, result.errors
        assert result.data is not None
        payload = result.data["promoteModel"]
        assert payload["model"] is None
        [error] = payload["errors"]
        return dict(error)

    error = await promote(gid(loser))
    assert (error["code"], error["field"]) == ("GATE_FAILED", "id")
    assert "did not beat the champion" in str(error["message"])
    error = await promote(gid(stale))
    assert error["code"] == "GATE_FAILED"
    assert "another champion" in str(error["message"])
    error = await promote(gid(ungated))
    assert error["code"] == "GATE_FAILED"
    error = await promote(gid(champion))
    assert error["code"] == "INVALID_STATE"
    error = await promote(encode_id("Model", uuid.uuid4()))
    assert (error["code"], error["field"]) == ("NOT_FOUND", "id")
    error = await promote("not-an-id")
    assert error["code"] == "NOT_FOUND"
    error = await promote(gid(loser), reason="  ")
    assert error["code"] == "INVALID"
    assert await _status(db, champion.id) is ModelStatus.CHAMPION


async def test_promote_is_forbidden_to_merchant_keys(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    challenger = await make_model(db, now=now, gate=verdict(True, None))
    merchant = await make_merchant(db, "M", now=now)
    token = await make_key(db, Role.MERCHANT, [merchant], now=now)
    result = await run(
        db, settings, clock, PROMOTE, token=token, variables={"id": gid(challenger), "reason": "x"}
    )
    assert codes(result) == ["FORBIDDEN"]
    assert await _status(db, challenger.id) is ModelStatus.CHALLENGER


EXPLAIN = """query($id: ID!) { node(id: $id) { ... on Payment {
  decision { strategy reason explanation } } } }"""


async def test_decision_explanation_in_plain_words(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    merchant = await make_merchant(db, "M", now=now)
    [payment, fixed] = await make_payments(db, merchant, 2, now=now)
    model = await make_model(db, now=now, status=ModelStatus.CHAMPION)
    texts = ["the time since the decline raises the chance of success", "the amount lowers it"]
    async with db.uow(SYSTEM_SCOPE) as uow:
        for p, strategy in ((payment, RetryStrategy.MODEL), (fixed, RetryStrategy.FIXED_SCHEDULE)):
            row = await uow.session.get(type(p), p.id)
            assert row is not None
            row.decision_at = now
            row.decision_reason = "model: 31% chance at this time"
            row.decision_strategy = strategy
        records = [
            DecisionRecord(
                merchant_id=merchant.id,
                payment_id=p.id,
                model_version_id=model.id,
                role=role,
                source="model",
                decided_at=at,
                chosen_at=now,
                probability=0.31,
                expected_recovered_minor=1500,
                reason="model",
                explanation=[{"feature": "x", "text": t, "log_odds": 0.1} for t in words],
            )
            for p, role, at, words in (
                (payment, ROLE_ACTING, now, texts),
                # Another instant and the shadow's view: neither explains the current decision.
                (payment, ROLE_ACTING, now.replace(year=2020), ["stale"]),
                (payment, ROLE_SHADOW, now, ["shadow"]),
                (fixed, ROLE_SHADOW, now, ["shadow"]),
            )
        ]
        await record_decisions(uow, records)
        await uow.commit()
    token = await make_key(db, Role.MERCHANT, [merchant], now=now)
    result = await run(
        db,
        settings,
        clock,
        EXPLAIN,
        token=token,
        variables={"id": encode_id("Payment", payment.id)},
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    assert result.data["node"]["decision"]["explanation"] == texts
    assert result.data["node"]["decision"]["strategy"] == "MODEL"
    result = await run(
        db, settings, clock, EXPLAIN, token=token, variables={"id": encode_id("Payment", fixed.id)}
    )
    assert result.data is not None
    assert result.data["node"]["decision"]["explanation"] == []
    # Another merchant's key sees neither the payment nor its decision rows.
    other = await make_merchant(db, "Other", now=now)
    other_token = await make_key(db, Role.MERCHANT, [other], now=now)
    result = await run(
        db,
        settings,
        clock,
        EXPLAIN,
        token=other_token,
        variables={"id": encode_id("Payment", payment.id)},
    )
    assert result.data == {"node": None}


EXPLAIN_PAGE = """query($id: ID!, $first: Int!) { merchant(id: $id) { payments(first: $first) {
  edges { node { decision { explanation } } } } } }"""


async def test_explanations_of_a_page_cost_one_statement(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    merchant = await make_merchant(db, "Explained", now=now)
    payments = await make_payments(db, merchant, 50, now=now)
    model = await make_model(db, now=now, status=ModelStatus.CHAMPION)
    async with db.uow(SYSTEM_SCOPE) as uow:
        for p in payments:
            row = await uow.session.get(type(p), p.id)
            assert row is not None
            row.decision_at = now
            row.decision_reason = "model"
            row.decision_strategy = RetryStrategy.MODEL
        await record_decisions(
            uow,
            [
                DecisionRecord(
                    merchant_id=merchant.id,
                    payment_id=p.id,
                    model_version_id=model.id,
                    role=ROLE_ACTING,
                    source="model",
                    decided_at=now,
                    chosen_at=now,
                    probability=0.2,
                    expected_recovered_minor=100,
                    reason="model",
                    explanation=[{"feature": "x", "text": "words", "log_odds": 0.1}],
                )
                for p in payments
            ],
        )
        await uow.commit()
    token = await make_key(db, Role.MERCHANT, [merchant], now=now)
    pages = await count_payment_pages(
        connection, db, settings, clock, EXPLAIN_PAGE, merchant_id=merchant.id, token=token
    )
    counts = {}
    for first, page in pages.items():
        explanations = [e["node"]["decision"]["explanation"] for e in page.edges]
        assert explanations == [["words"]] * first
        counts[first] = page.statements
    assert len(counts[1]) == len(counts[50])


COMPARE = """query($champion: ID, $tolerance: Int!) { models { id status
  comparison(championId: $champion, toleranceMinutes: $tolerance) {
    championId toleranceMinutes shadowDecisions pairedDecisions agreeingDecisions
    identicalDecisions agreementRate notWorse
    predicted { decisions payments shadowMean championMean difference lower upper
                confidenceLevel }
    realized { difference lower upper
      agreement { payments settledPayments recoveredPayments recoveryRate
                  currencies { currency payments settledPayments recoveredPayments
                               settledAmount recoveredAmount } }
      disagreement { payments settledPayments recoveredPayments recoveryRate
                     currencies { currency settledAmount recoveredAmount } } } } } }"""


async def test_support_sees_a_shadow_compared_with_the_champion(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    champion, shadow, payments = await make_shadowed(
        db, payments=40, shadow_p=0.30, champion_p=0.20, now=now
    )
    for payment in payments[:10]:
        await settle(db, payment, PaymentState.RECOVERED)
    for payment in payments[10:15]:
        await settle(db, payment, PaymentState.EXHAUSTED, currency="USD")
    token = await make_key(db, Role.SUPPORT, [], now=now)
    result = await run(
        db, settings, clock, COMPARE, token=token, variables={"champion": None, "tolerance": 60}
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    by_id = {m["id"]: m["comparison"] for m in result.data["models"]}
    # The champion has no shadow decisions of its own.
    assert by_id[gid(champion)]["pairedDecisions"] == 0
    assert by_id[gid(champion)]["predicted"] is None
    found = by_id[gid(shadow)]
    assert found["championId"] == gid(champion)
    assert (found["shadowDecisions"], found["pairedDecisions"]) == (40, 40)
    assert (found["agreeingDecisions"], found["identicalDecisions"]) == (20, 20)
    assert found["agreementRate"] == 0.5
    predicted = found["predicted"]
    assert (predicted["decisions"], predicted["payments"]) == (40, 40)
    assert 0.09 < predicted["difference"] < 0.11
    assert predicted["lower"] < predicted["difference"] < predicted["upper"]
    assert predicted["confidenceLevel"] == 0.95
    assert found["notWorse"] is True
    realized = found["realized"]
    # The first half agreed: ten recovered (EUR), five exhausted (USD), five still scheduled.
    agreement = realized["agreement"]
    assert (agreement["payments"], agreement["settledPayments"]) == (20, 15)
    assert (agreement["recoveredPayments"], agreement["recoveryRate"]) == (10, 10 / 15)
    currencies = {c["currency"]: c for c in agreement["currencies"]}
    assert currencies["EUR"]["recoveredAmount"] == sum(p.amount_minor for p in payments[:10])
    assert currencies["USD"]["settledAmount"] == sum(p.amount_minor for p in payments[10:15])
    assert currencies["USD"]["recoveredAmount"] == 0
    assert realized["disagreement"]["settledPayments"] == 0
    assert realized["disagreement"]["recoveryRate"] is None
    assert realized["difference"] is None  # fewer than 30 settled payments a side
    # A tighter tolerance, against a champion named explicitly.
    result = await run(
        db,
        settings,
        clock,
        COMPARE,
        token=token,
        variables={"champion": gid(champion), "tolerance": 0},
    )
    assert result.data is not None
    found = {m["id"]: m["comparison"] for m in result.data["models"]}[gid(shadow)]
    assert (found["toleranceMinutes"], found["agreeingDecisions"]) == (0, 20)


async def test_comparison_refuses_bad_arguments_and_non_support_keys(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    await make_shadowed(db, payments=2, shadow_p=0.3, champion_p=0.2, now=now)
    token = await make_key(db, Role.SUPPORT, [], now=now)
    for variables, code in (
        ({"champion": None, "tolerance": 1441}, "INVALID_ARGUMENT"),
        ({"champion": None, "tolerance": -1}, "INVALID_ARGUMENT"),
        ({"champion": "not-an-id", "tolerance": 60}, "INVALID_ID"),
        ({"champion": encode_id("Model", uuid.uuid4()), "tolerance": 60}, "NOT_FOUND"),
    ):
        result = await run(db, settings, clock, COMPARE, token=token, variables=variables)
        assert set(codes(result)) == {code}, variables
    merchant = await make_merchant(db, "M", now=now)
    for role in (Role.MERCHANT, Role.PARTNER):
        other = await make_key(db, role, [merchant], now=now)
        result = await run(
            db, settings, clock, COMPARE, token=other, variables={"champion": None, "tolerance": 60}
        )
        assert codes(result) == ["FORBIDDEN"]


def _requiring(settings: Settings, paired: int, margin: float = 0.01) -> Settings:
    return settings.model_copy(
        update={"model_promotion_min_paired_decisions": paired, "model_promotion_margin": margin}
    )


async def _promote(
    db: Database, settings: Settings, clock: FixedClock, model: ModelVersion
) -> dict[str, Any]:
    token = await make_key(db, Role.SUPPORT, [], now=clock.now())
    result = await run(
        db,
        settings,
        clock,
        PROMOTE,
        token=token,
        variables={"id": gid(model), "reason": "compared"},
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    return dict(result.data["promoteModel"])


async def test_promotion_requiring_a_comparison_refuses_too_few_pairs_or_a_worse_shadow(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    champion, shadow, _ = await make_shadowed(
        db, payments=40, shadow_p=0.15, champion_p=0.25, now=now
    )
    payload = await _promote(db, _requiring(settings, 41), clock, shadow)
    [error] = payload["errors"]
    assert (error["code"], error["field"]) == ("GATE_FAILED", "id")
    assert "40 decisions paired with the champion's" in error["message"]
    assert "at least 41" in error["message"]
    payload = await _promote(db, _requiring(settings, 40), clock, shadow)
    [error] = payload["errors"]
    assert error["code"] == "GATE_FAILED"
    assert "worse than the champion's" in error["message"]
    assert "margin of -0.0100" in error["message"]
    # A challenger never scored alongside: no pairs at all.
    challenger = await make_model(db, now=now, gate=verdict(True, champion.id))
    [error] = (await _promote(db, _requiring(settings, 1), clock, challenger))["errors"]
    assert "0 decisions paired" in error["message"]
    assert "make it the shadow" in error["message"]
    assert await _status(db, champion.id) is ModelStatus.CHAMPION
    assert await audit_entries(db, action="model.promote") == []
    # Without the requirement, the gate alone decides.
    payload = await _promote(db, settings, clock, shadow)
    assert payload["errors"] == []


async def test_promotion_requiring_a_comparison_allows_a_shadow_not_worse(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    now = clock.now()
    # Two points below the champion on average, within a margin of five.
    champion, shadow, _ = await make_shadowed(
        db, payments=40, shadow_p=0.23, champion_p=0.25, now=now
    )
    payload = await _promote(db, _requiring(settings, 40, margin=0.05), clock, shadow)
    assert payload["errors"] == []
    assert payload["model"]["status"] == "CHAMPION"
    assert await _status(db, champion.id) is ModelStatus.RETIRED
    [entry] = await audit_entries(db, action="model.promote")
    assert entry.after is not None
    comparison = entry.after["comparison"]
    assert comparison["champion_id"] == str(champion.id)
    assert comparison["paired_decisions"] == 40
    assert -0.03 < comparison["predicted_difference"] < -0.01
    lower, upper = comparison["interval"]
    assert -0.05 <= lower < comparison["predicted_difference"] < upper


async def test_a_first_champion_needs_no_comparison(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    model = await make_model(db, now=clock.now(), gate=verdict(True, None))
    payload = await _promote(db, _requiring(settings, 1000), clock, model)
    assert payload["errors"] == []
    [entry] = await audit_entries(db, action="model.promote")
    assert entry.after is not None
    assert entry.after["comparison"] is None
