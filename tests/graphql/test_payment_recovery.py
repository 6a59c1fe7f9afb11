"""Payment.timeline, Payment.decision, Payment.ledger and the recovery mutations."""

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import FixedClock
from app.db import Database
from app.enums import EndAction, RetryStrategy, Role
from app.models.payment import Payment
from app.retry.events import DecisionMade
from app.services.retry.engine import run_event
from app.services.retry.ledger import load_contexts
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from resolvers.ids import decode_id, encode_id
from tests.support.factories import make_key, make_merchant, make_payments, set_strategy
from tests.support.graphql import count_payment_pages, run
from tests.support.retry import decide, ingest, make_connection, stripe_charge

PAGE = """query($id: ID!, $first: Int!) { merchant(id: $id) { payments(first: $first) {
  edges { node { id state nextRetryAt
    decision { chosenAt reason strategy }
    endAction { action status tries detail lastError nextAttemptAt createdAt completedAt }
    ledger { attemptsLast24h attemptsLast30d nextAllowedAt blockingRule }
    timeline { at fromState toState event reason actor } } } } } }"""

PAYMENT = """query($id: ID!) { node(id: $id) { ... on Payment { state nextRetryAt
  decision { chosenAt reason strategy }
  endAction { action status tries detail lastError nextAttemptAt createdAt completedAt }
  ledger { attemptsLast24h attemptsLast30d nextAllowedAt blockingRule }
  timeline { fromState toState event actor requestedBy } } } }"""

RETRY_NOW = """mutation($id: ID!, $reason: String!) {
  retryPaymentNow(paymentId: $id, reason: $reason) {
    payment { state nextRetryAt } explanation errors { code field message } } }"""

CANCEL = """mutation($id: ID!, $reason: String!) {
  cancelPaymentRecovery(paymentId: $id, reason: $reason) {
    payment { state nextRetryAt timeline { event actor requestedBy reason } }
    errors { code field } } }"""


async def _decided_payment(db: Database, clock: FixedClock) -> tuple[str, str]:
    merchant = await make_merchant(db, "Recovery view", now=clock.now())
    # The view shows a fixed-schedule decision; new merchants start on the model.
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, clock.now())
    [payment] = await ingest(
        db, connection, [stripe_charge("ch_view", created=clock.now())], clock.now()
    )
    await decide(db, clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    return token, encode_id("Payment", payment.id)


async def test_decision_ledger_and_timeline(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    token, pid = await _decided_payment(db, clock)
    result = await run(db, settings, clock, PAYMENT, token=token, variables={"id": pid})
    assert result.errors is None, result.errors
    assert result.data is not None
    node = result.data["node"]
    assert node["state"] == "SCHEDULED"
    assert node["decision"]["strategy"] == "FIXED_SCHEDULE"
    assert "day 1" in node["decision"]["reason"]
    assert node["decision"]["chosenAt"] == clock.now().isoformat()
    # The first failure is the one attempt on the card; min spacing holds the next retry.
    assert node["ledger"]["attemptsLast24h"] == 1
    assert node["ledger"]["attemptsLast30d"] == 1
    assert node["ledger"]["blockingRule"] == "min_spacing"
    assert node["ledger"]["nextAllowedAt"] == (clock.now() + timedelta(days=1)).isoformat()
    assert [(t["event"], t["toState"]) for t in node["timeline"]] == [
        ("failure_ingested", "PENDING"),
        ("decision_made", "SCHEDULED"),
    ]
    assert node["endAction"] is None  # recovery goes on


async def test_end_action_shows_how_carrying_it_out_went(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    token, pid = await _decided_payment(db, clock)
    _, payment_id = decode_id(pid, expected="Payment")
    async with db.session(SYSTEM_SCOPE) as s:
        payment = await s.get_one(Payment, payment_id)
    await set_strategy(
        db,
        payment.merchant_id,
        RetryStrategy.FIXED_SCHEDULE,
        end_action=EndAction.CANCEL_SUBSCRIPTION,
    )
    async with db.uow(SYSTEM_SCOPE) as uow:
        ctx = (await load_contexts(uow.session, [payment_id], now=clock.now(), lock=True))[
            payment_id
        ]
        no_time = DecisionMade(None, "nothing worth trying", RetryStrategy.FIXED_SCHEDULE)
        await run_event(uow, ctx, no_time, now=clock.now())
        await uow.commit()
    result = await run(db, settings, clock, PAYMENT, token=token, variables={"id": pid})
    assert result.errors is None, result.errors
    assert result.data is not None
    assert result.data["node"]["state"] == "EXHAUSTED"
    assert result.data["node"]["endAction"] == {
        "action": "CANCEL_SUBSCRIPTION",
        "status": "PENDING",
        "tries": 0,
        "detail": None,
        "lastError": None,
        "nextAttemptAt": clock.now().isoformat(),
        "createdAt": clock.now().isoformat(),
        "completedAt": None,
    }


async def test_retry_now_keeps_the_rules_and_cancel_ends_recovery(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    token, pid = await _decided_payment(db, clock)
    result = await run(
        db, settings, clock, RETRY_NOW, token=token, variables={"id": pid, "reason": "asked"}
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    payload = result.data["retryPaymentNow"]
    assert payload["errors"] == []
    assert payload["payment"]["state"] == "SCHEDULED"
    # Min spacing after the first failure still applies: "now" becomes a day later.
    assert payload["payment"]["nextRetryAt"] == (clock.now() + timedelta(days=1)).isoformat()
    assert "min_spacing" in payload["explanation"]
    blank = await run(
        db, settings, clock, RETRY_NOW, token=token, variables={"id": pid, "reason": " "}
    )
    assert blank.data is not None
    assert blank.data["retryPaymentNow"]["errors"][0]["code"] == "INVALID"

    result = await run(
        db, settings, clock, CANCEL, token=token, variables={"id": pid, "reason": "customer left"}
    )
    assert result.data is not None
    payload = result.data["cancelPaymentRecovery"]
    assert payload["errors"] == []
    assert payload["payment"]["state"] == "CANCELED"
    assert payload["payment"]["nextRetryAt"] is None
    # The timeline says why in the requester's words, not as one of the processor's events.
    assert payload["payment"]["timeline"][-1] == {
        "event": "recovery_canceled",
        "actor": "PORTAL",
        "requestedBy": "api_key:test",
        "reason": "recovery canceled: customer left",
    }
    again = await run(
        db, settings, clock, CANCEL, token=token, variables={"id": pid, "reason": "twice"}
    )
    assert again.data is not None
    assert again.data["cancelPaymentRecovery"]["errors"] == [
        {"code": "INVALID_STATE", "field": "paymentId"}
    ]
    retry = await run(
        db, settings, clock, RETRY_NOW, token=token, variables={"id": pid, "reason": "again"}
    )
    assert retry.data is not None
    assert retry.data["retryPaymentNow"]["errors"][0]["code"] == "INVALID_STATE"


async def test_recovery_fields_cost_the_same_statements_for_1_or_50_rows(
    connection: AsyncConnection, db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Counting recovery", now=clock.now())
    await make_payments(db, merchant, 50, now=clock.now(), attempts_each=2)
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    pages = await count_payment_pages(
        connection, db, settings, clock, PAGE, merchant_id=merchant.id, token=token
    )
    counts = {}
    for first, page in pages.items():
        assert len(page.edges) == first
        assert all(e["node"]["ledger"] is not None for e in page.edges)
        counts[first] = page.statements
    assert len(counts[1]) == len(counts[50]), "\n".join(s[:70] for s in counts[50])


PLACED = """query($id: ID!) { node(id: $id) { ... on Payment { state recoveredBy
  decision { reason } customer { country timezone } attempts { actor outcome } } } }"""


async def test_customer_place_decision_zone_and_who_paid_through_the_api(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    merchant = await make_merchant(db, "Who paid", now=clock.now())
    await set_strategy(db, merchant.id, RetryStrategy.FIXED_SCHEDULE)
    connection = await make_connection(db, merchant, clock.now())
    failed = stripe_charge("ch_z", created=clock.now(), customer="cus_z", billing=("CA", "BC"))
    [payment] = await ingest(db, connection, [failed], clock.now())
    await decide(db, clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    pid = encode_id("Payment", payment.id)
    result = await run(db, settings, clock, PLACED, token=token, variables={"id": pid})
    assert result.errors is None, result.errors
    assert result.data is not None
    node = result.data["node"]
    assert node["customer"] == {"country": "CA", "timezone": "America/Vancouver"}
    assert node["decision"]["reason"].endswith(
        "local time: America/Vancouver (the customer's time zone)"
    )
    # The customer pays the invoice on the hosted page (3-D Secure): theirs is the recovery.
    paid = stripe_charge(
        "ch_paid",
        created=clock.now() + timedelta(hours=2),
        status="succeeded",
        customer="cus_z",
        invoice="in_ch_z",
        secure=True,
    )
    await ingest(db, connection, [paid], clock.now() + timedelta(hours=2))
    result = await run(db, settings, clock, PLACED, token=token, variables={"id": pid})
    assert result.data is not None
    node = result.data["node"]
    assert (node["state"], node["recoveredBy"]) == ("RECOVERED", "CUSTOMER")
    assert node["attempts"] == [
        {"actor": "BILLING_SYSTEM", "outcome": "DECLINED"},
        {"actor": "CUSTOMER", "outcome": "SUCCEEDED"},
    ]
