"""Checkout.com normalizer: payment objects, list pages and webhook envelopes."""

import copy
import json
from datetime import UTC, datetime

import pytest

from app.enums import Advice, CardFunding, DeclineCategory, Processor
from app.processors.normalize.dispatch import record_to_json
from app.processors.normalize.records import CanonicalRecord, NormalizeError, RejectedRecord
from tests.support.normalize import Normalizer, card_json, decline_json, failed_record_json

NORMALIZER = Normalizer(Processor.CHECKOUT)
load = NORMALIZER.load
run = NORMALIZER.run
one_record = NORMALIZER.one_record
one_dead_letter = NORMALIZER.one_dead_letter


def payment() -> dict[str, object]:
    doc = json.loads(load("payment_declined.json"))
    assert isinstance(doc, dict)
    return copy.deepcopy(doc)


def test_declined_payment_renders_exactly() -> None:
    record = one_record(load("payment_declined.json"))
    assert record_to_json(record) == failed_record_json(
        Processor.CHECKOUT,
        "pay_mbabizu24mvu3mela5njyhpit4",
        amount_minor=6540,
        currency="USD",
        customer_id="cus_y3oqhf46pyzuxjbcn2giaqnb44",
        card=card_json("visa", "credit", "US", last4="4242", exp_month=6, exp_year=2027),
        decline=decline_json(
            "insufficient_funds", advice="retry", raw_code="20051", retryable=True
        ),
        # Seven fractional digits are cut to Python's six.
        attempted_at="2024-02-20T14:15:23.456789Z",
        actor="billing_system",  # payment_type Recurring
        billing={"country": "GB", "region": None},
    )
    assert record.invoice_ref == "ORD-5023-4E89"
    assert record.raw_kind == "payment"
    assert record.card is not None
    assert record.card.bin == "424242"


def test_list_page() -> None:
    results = run(load("payments_list.json"))
    assert len(results) == 4
    expired, captured, pickup, pending = results
    assert isinstance(expired, CanonicalRecord)
    assert expired.decline is not None
    # 20054 sits in the "soft" 20xxx range yet is a hard expired-card decline.
    assert expired.decline.category is DeclineCategory.CARD_EXPIRED
    assert expired.decline.retryable is False
    assert isinstance(captured, CanonicalRecord)
    assert captured.status == "succeeded"
    assert captured.decline is None
    assert isinstance(pickup, CanonicalRecord)
    assert pickup.card is not None
    assert (pickup.card.brand, pickup.card.last4) == ("visa", "1111")  # `last_4`, "Visa"
    assert pickup.decline is not None
    assert pickup.decline.category is DeclineCategory.LOST_STOLEN
    assert isinstance(pending, RejectedRecord)
    assert "Pending" in pending.reason


def test_declined_webhook() -> None:
    record = one_record(load("webhook_payment_declined.json"))
    assert record.raw_kind == "webhook"
    assert record.processor_payment_id == "pay_wh00000000000000000000001"
    assert record.attempted_at == datetime(2024, 4, 5, 8, 0, tzinfo=UTC)
    assert record.card is not None
    assert (record.card.funding, record.card.last4, record.card.bin) == (
        CardFunding.DEBIT,
        "0002",
        "40000000",
    )
    assert record.decline is not None
    assert record.decline.category is DeclineCategory.INVALID_ACCOUNT
    assert record.decline.advice is Advice.UPDATE_CREDENTIALS


def test_approved_webhook() -> None:
    record = one_record(load("webhook_payment_approved.json"))
    assert (record.status, record.decline) == ("succeeded", None)


def test_other_webhook_types_are_dead_letters() -> None:
    event = json.loads(load("webhook_payment_declined.json"))
    event["type"] = "payment_refunded"
    assert "payment_refunded" in one_dead_letter(event).reason


def test_webhook_falls_back_to_the_event_time() -> None:
    event = json.loads(load("webhook_payment_declined.json"))
    del event["data"]["processed_on"]
    assert one_record(event).attempted_at == datetime(2024, 4, 5, 8, 0, 1, tzinfo=UTC)


def test_webhook_with_wrong_data_shape() -> None:
    event = json.loads(load("webhook_payment_declined.json"))
    event["data"] = "pay_1"
    assert "data" in one_dead_letter(event).reason


def test_approved_flag_alone_decides_status() -> None:
    body = payment()
    del body["status"]
    assert one_record(body).status == "failed"


def test_status_contradicting_approved_is_a_dead_letter() -> None:
    body = payment()
    body["approved"] = True
    assert "contradicts" in one_dead_letter(body).reason


def test_integer_response_code_is_read_as_text() -> None:
    body = payment()
    body["response_code"] = 20054
    decline = one_record(body).decline
    assert decline is not None
    assert (decline.raw_code, decline.category) == ("20054", DeclineCategory.CARD_EXPIRED)


def test_risk_response_is_fraud() -> None:
    body = payment()
    body["response_code"] = "40101"
    decline = one_record(body).decline
    assert decline is not None
    assert decline.category is DeclineCategory.FRAUD_SUSPECTED
    assert decline.advice is Advice.NEVER


def test_new_credentials_code() -> None:
    body = payment()
    body["response_code"] = "20108"
    decline = one_record(body).decline
    assert decline is not None
    assert decline.advice is Advice.UPDATE_CREDENTIALS


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": "65.40"}, "amount is str"),
        ({"amount": None}, "amount is missing"),
        ({"currency": "usd dollars"}, "ISO 4217"),
        ({"processed_on": None, "requested_on": None}, "no processed_on"),
        ({"processed_on": 1708438523}, "ISO-8601"),
        ({"status": "Voided"}, "Voided"),
        ({"id": None}, "payment.id"),
        ({"source": "src_123"}, "payment.source"),
    ],
)
def test_bad_payments_become_specific_dead_letters(change: dict[str, object], reason: str) -> None:
    body = payment()
    body.update(change)
    assert reason in one_dead_letter(body).reason


def test_card_number_in_source_is_never_kept() -> None:
    body = payment()
    source = body["source"]
    assert isinstance(source, dict)
    source["number"] = "4242424242424242"
    source["last4"] = "4242424242424242"
    record = one_record(body)
    assert record.card is not None
    # A full number where last4 belongs is dropped, not trimmed.
    assert record.card.last4 is None
    assert "4242424242424242" not in repr(record)
    body["amount"] = "bad"
    assert "4242424242424242" not in one_dead_letter(body).payload_excerpt


@pytest.mark.parametrize("body", [b"", b"pay_123", b"{'single': 'quotes'}"])
def test_a_body_that_is_not_json_raises_normalize_error(body: bytes) -> None:
    with pytest.raises(NormalizeError):
        run(body)
