"""The event feed (`Merchant.events`), the published event types (`webhookEventTypes`) and the
`paymentEvents` subscription, run in-process."""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlmodel import col, select

from app.clock import FixedClock
from app.db import Database
from app.enums import (
    Advice,
    DeclineCategory,
    EndAction,
    EndActionStatus,
    PaymentState,
    Processor,
    Role,
)
from app.event_notices import EventNotices, listener_client
from app.models.payment import Payment
from app.models.retry import OutboxEvent
from app.retry.events import PING_EVENT_TYPE
from app.services.retry.outbox import event_payload
from app.settings import Settings
from app.tenancy import SYSTEM_SCOPE
from app.webhook_events import BY_NAME, EVENT_TYPES
from app.workflows.webhook_delivery import webhook_body
from resolvers.ids import encode_event_cursor, encode_id
from tests.support.events import emit_events, first_results, sequence
from tests.support.factories import make_key, make_merchant, make_payments
from tests.support.graphql import codes, run, run_data

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

EVENTS = """query($id: ID!, $first: Int, $after: String, $types: [String!]) {
  merchant(id: $id) { events(first: $first, after: $after, types: $types) {
    edges { cursor node { id type version occurredAt payload cursor } }
    pageInfo { hasNextPage endCursor } totalCount isEstimate } } }"""
TYPES = "{ webhookEventTypes { type version description schema } }"
SUBSCRIBE = """subscription($id: ID!, $after: String) {
  paymentEvents(merchantId: $id, after: $after) { id type version payload cursor } }"""


@pytest.fixture
async def notices(redis: Redis) -> AsyncIterator[EventNotices]:
    hub = EventNotices(listener_client(redis))
    hub.start()
    yield hub
    await hub.close()


async def _merchant(db: Database, clock: FixedClock, name: str) -> tuple[Payment, str, str]:
    merchant = await make_merchant(db, name, now=clock.now())
    [payment] = await make_payments(db, merchant, 1, now=clock.now())
    token = await make_key(db, Role.MERCHANT, [merchant], now=clock.now())
    return payment, encode_id("Merchant", merchant.id), token


async def _page(
    db: Database, settings: Settings, clock: FixedClock, token: str, **variables: Any
) -> dict[str, Any]:
    data = await run_data(db, settings, clock, EVENTS, token, **variables)
    events: dict[str, Any] = data["merchant"]["events"]
    return events


async def _one_by_one(db: Database, clock: FixedClock, payment: Payment, *names: str) -> None:
    """Each event in its own transaction, a second after the one before (one sequencing
    batch orders its events by when they occurred)."""
    for name in names:
        clock.set(clock.now() + timedelta(seconds=1))
        await emit_events(db, payment, [name], now=clock.now())


def _types(page: dict[str, Any]) -> list[str]:
    return [e["node"]["type"] for e in page["edges"]]


async def test_feed_pages_in_order_and_reads_on_from_the_last_cursor(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    payment, merchant_id, token = await _merchant(db, clock, "Feed")
    await _one_by_one(db, clock, payment, "payment.scheduled", "payment.retrying")
    await _one_by_one(db, clock, payment, "payment.recovered")
    # Committed but not positioned yet: not in the feed.
    assert (await _page(db, settings, clock, token, id=merchant_id))["edges"] == []
    await sequence(db)

    first = await _page(db, settings, clock, token, id=merchant_id, first=2)
    assert _types(first) == ["payment.scheduled", "payment.retrying"]
    assert first["pageInfo"]["hasNextPage"] is True
    assert [e["cursor"] for e in first["edges"]] == [e["node"]["cursor"] for e in first["edges"]]
    rest = await _page(
        db, settings, clock, token, id=merchant_id, after=first["pageInfo"]["endCursor"]
    )
    assert _types(rest) == ["payment.recovered"]
    assert rest["pageInfo"]["hasNextPage"] is False

    # Later events come after the last cursor read, and only they.
    clock.set(clock.now() + timedelta(minutes=5))
    await emit_events(db, payment, ["payment.rescheduled"], now=clock.now())
    await sequence(db)
    later = await _page(
        db, settings, clock, token, id=merchant_id, after=rest["pageInfo"]["endCursor"]
    )
    assert _types(later) == ["payment.rescheduled"]
    node = later["edges"][0]["node"]
    assert node["version"] == 1
    assert node["occurredAt"] == clock.now().isoformat()
    assert node["payload"]["type"] == "payment.rescheduled"
    assert node["payload"]["payment_id"] == str(payment.id)


async def test_test_pings_to_an_endpoint_are_not_in_the_feed(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    payment, merchant_id, token = await _merchant(db, clock, "Pinged")
    async with db.uow(SYSTEM_SCOPE) as uow:
        uow.session.add(
            OutboxEvent(
                merchant_id=payment.merchant_id,
                payment_id=None,
                event_type=PING_EVENT_TYPE,
                payload={"type": PING_EVENT_TYPE},
                created_at=clock.now(),
                dispatched_at=clock.now(),
            )
        )
        await uow.commit()
    await _one_by_one(db, clock, payment, "payment.scheduled")
    await sequence(db)
    page = await _page(db, settings, clock, token, id=merchant_id)
    assert _types(page) == ["payment.scheduled"]
    assert (page["totalCount"], page["isEstimate"]) == (1, False)


async def test_feed_payload_is_the_webhook_body_data(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    payment, merchant_id, token = await _merchant(db, clock, "Same payload")
    await emit_events(db, payment, ["payment.end_action", "payment.canceled"], now=clock.now())
    await sequence(db)
    page = await _page(db, settings, clock, token, id=merchant_id)
    async with db.session(SYSTEM_SCOPE) as session:
        rows = {
            str(row.id): row
            for row in (
                await session.execute(
                    select(OutboxEvent).where(col(OutboxEvent.payment_id) == payment.id)
                )
            ).scalars()
        }
    for edge in page["edges"]:
        node = edge["node"]
        body = json.loads(webhook_body(rows[node["id"]]))
        assert body["data"] == node["payload"]
        assert (body["id"], body["type"], body["version"]) == (
            node["id"],
            node["type"],
            node["version"],
        )


async def test_feed_filters_by_type_and_refuses_unknown_types(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    payment, merchant_id, token = await _merchant(db, clock, "Types")
    names = ["payment.scheduled", "payment.retrying", "payment.scheduled", "payment.recovered"]
    await _one_by_one(db, clock, payment, *names)
    await sequence(db)
    only = await _page(
        db, settings, clock, token, id=merchant_id, types=["payment.scheduled", "payment.recovered"]
    )
    assert _types(only) == ["payment.scheduled", "payment.scheduled", "payment.recovered"]

    result = await run(
        db,
        settings,
        clock,
        EVENTS,
        token=token,
        variables={"id": merchant_id, "types": ["payment.exploded"]},
    )
    assert codes(result) == ["INVALID_ARGUMENT"]
    assert result.errors is not None
    assert "payment.exploded" in result.errors[0].message


async def test_bad_and_expired_cursors_are_typed_errors(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    _, merchant_id, token = await _merchant(db, clock, "Cursors")

    async def code(after: str) -> list[str]:
        result = await run(
            db, settings, clock, EVENTS, token=token, variables={"id": merchant_id, "after": after}
        )
        return codes(result)

    assert await code("not a cursor") == ["INVALID_CURSOR"]
    payment_cursor = "WyIyMDI2LTExLTAxVDAwOjAwOjAwKzAwOjAwIiwgIjEiXQ"
    assert await code(payment_cursor) == ["INVALID_CURSOR"]
    days = settings.outbox_retention_days
    assert await code(encode_event_cursor(5, clock.now() - timedelta(days=days))) == [
        "CURSOR_EXPIRED"
    ]
    assert await code(encode_event_cursor(5, clock.now() - timedelta(days=days - 1))) == []
    for first in (0, 101):
        result = await run(
            db, settings, clock, EVENTS, token=token, variables={"id": merchant_id, "first": first}
        )
        assert codes(result) == ["INVALID_ARGUMENT"]


async def test_webhook_event_types_publish_a_valid_schema_for_every_type(
    db: Database, settings: Settings, clock: FixedClock
) -> None:
    _, _, token = await _merchant(db, clock, "Schemas")
    data = await run_data(db, settings, clock, TYPES, token)
    published = {t["type"]: t for t in data["webhookEventTypes"]}
    assert set(published) == set(BY_NAME)
    for name, definition in published.items():
        assert definition["version"] == BY_NAME[name].version
        assert definition["description"]
        jsonschema.Draft202012Validator.check_schema(definition["schema"])
        # `type` is pinned to the type's own name.
        assert definition["schema"]["properties"]["type"]["const"] == name
    unauthenticated = await run(db, settings, clock, TYPES, token=None)
    assert codes(unauthenticated) == ["UNAUTHENTICATED"]


_TEXT = st.text(min_size=0, max_size=40)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    definition=st.sampled_from(EVENT_TYPES),
    state=st.sampled_from(PaymentState),
    previous=st.sampled_from(PaymentState),
    processor=st.sampled_from(Processor),
    amount=st.integers(min_value=0, max_value=2**62),
    currency=st.sampled_from(["EUR", "USD", "JPY", "KWD"]),
    refs=st.tuples(st.none() | _TEXT, st.none() | _TEXT),
    retry_in=st.none() | st.integers(min_value=0, max_value=10**6),
    reason=_TEXT,
    end_action=st.sampled_from(EndAction),
    end_status=st.sampled_from(EndActionStatus),
    detail=st.none() | _TEXT,
)
def test_every_payload_the_outbox_writes_validates_against_its_schema(
    definition: Any,
    state: PaymentState,
    previous: PaymentState,
    processor: Processor,
    amount: int,
    currency: str,
    refs: tuple[str | None, str | None],
    retry_in: int | None,
    reason: str,
    end_action: EndAction,
    end_status: EndActionStatus,
    detail: str | None,
) -> None:
    """Through `event_payload`, the one builder of stored payloads, for every type."""
    payment = Payment(
        customer_id=uuid.uuid4(),
        decline_category=DeclineCategory.INSUFFICIENT_FUNDS,
        decline_retryable=True,
        decline_advice=Advice.RETRY_LATER,
        processor=processor,
        processor_payment_id="ch_1",
        amount_minor=amount,
        currency=currency,
        invoice_ref=refs[0],
        subscription_ref=refs[1],
        state=state,
        next_retry_at=None if retry_in is None else NOW + timedelta(seconds=retry_in),
    )
    extra: dict[str, Any] = {}
    if "end_action" in definition.model.model_fields:
        extra = {"end_action": end_action, "end_action_status": end_status, "detail": detail}
    payload = event_payload(payment, definition.name, previous, reason, **extra)
    jsonschema.validate(payload, definition.schema(), cls=jsonschema.Draft202012Validator)
    # And a payload of another type is refused by this schema (the `type` is pinned).
    other = next(t for t in EVENT_TYPES if t.name != definition.name)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, other.schema(), cls=jsonschema.Draft202012Validator)


async def test_subscription_sends_the_events_after_the_cursor_then_new_ones(
    db: Database, settings: Settings, clock: FixedClock, notices: EventNotices, redis: Redis
) -> None:
    payment, merchant_id, token = await _merchant(db, clock, "Live")
    await _one_by_one(db, clock, payment, "payment.scheduled", "payment.retrying")
    await sequence(db)
    page = await _page(db, settings, clock, token, id=merchant_id, first=1)
    after = page["pageInfo"]["endCursor"]
    results = await first_results(
        db,
        settings,
        clock,
        SUBSCRIBE,
        token=token,
        notices=notices,
        count=1,
        variables={"id": merchant_id, "after": after},
    )
    assert [r.errors for r in results] == [None]
    assert [r.data["paymentEvents"]["type"] for r in results if r.data] == ["payment.retrying"]


async def test_subscription_refuses_unseen_merchants_and_missing_keys(
    db: Database, settings: Settings, clock: FixedClock, notices: EventNotices
) -> None:
    _, mine, token = await _merchant(db, clock, "Mine")
    _, theirs, _ = await _merchant(db, clock, "Theirs")
    cases = [
        (token, theirs, None, "NOT_FOUND"),
        (None, mine, None, "UNAUTHENTICATED"),
        (token, "bm90IGFuIGlk", None, "INVALID_ID"),
        (token, mine, "garbage", "INVALID_CURSOR"),
    ]
    for key, merchant_id, after, code in cases:
        [result] = await first_results(
            db,
            settings,
            clock,
            SUBSCRIBE,
            token=key,
            notices=notices,
            count=1,
            variables={"id": merchant_id, "after": after},
        )
        assert codes(result) == [code], (merchant_id, code)
