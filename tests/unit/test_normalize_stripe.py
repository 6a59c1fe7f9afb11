"""Stripe normalizer: charges (modern, legacy), lists, events, PaymentIntents, error envelopes."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from app.enums import Advice, CardFunding, DeclineCategory, Processor
from app.processors.normalize.dispatch import (
    normalize_items,
    normalize_payload,
    normalize_stored,
    record_to_json,
)
from app.processors.normalize.records import CanonicalRecord, NormalizeError, RejectedRecord
from tests.support.normalize import Normalizer, card_json, decline_json, failed_record_json

NORMALIZER = Normalizer(Processor.STRIPE)
load = NORMALIZER.load
run = NORMALIZER.run
one_record = NORMALIZER.one_record
one_dead_letter = NORMALIZER.one_dead_letter


def test_modern_charge_renders_exactly() -> None:
    record = one_record(load("charge_failed_modern.json"))
    assert record_to_json(record) == failed_record_json(
        Processor.STRIPE,
        "ch_3PqK2LJmW8nX1a0b1cD2eF3g",
        amount_minor=2900,
        currency="USD",
        customer_id="cus_QhXb3v8TnM4s2k",
        card=card_json("visa", "debit", "US", last4="0341", exp_month=8, exp_year=2027),
        decline=decline_json(
            "insufficient_funds",
            advice="retry",
            raw_code="insufficient_funds",
            retryable=True,
            network_decline_code="51",
        ),
        attempted_at="2024-06-10T16:00:00Z",
        # No invoice, no portal marker, no 3-D Secure: nothing says who made it.
        actor="processor",
        billing={"country": "US", "region": None},
    )
    assert record.card is not None
    assert record.card.fingerprint == "Xt5EWLLDS7FJjR1c"
    assert record.raw_kind == "charge"


def test_legacy_source_card_and_bare_card_declined() -> None:
    record = one_record(load("charge_failed_legacy_source.json"))
    assert record.card is not None
    assert record.card.brand == "visa"
    assert record.card.funding is CardFunding.CREDIT
    assert record.card.country == "DE"
    assert record.invoice_ref == "in_1A2b3C4d5E6f7G8h"
    assert record.decline is not None
    # `card_declined` with no reason is the generic soft decline.
    assert record.decline.category is DeclineCategory.DO_NOT_HONOR
    assert record.decline.retryable is True


def test_full_card_number_in_the_payload_is_never_kept() -> None:
    record = one_record(load("charge_failed_legacy_source.json"))
    assert "4242424242424242" not in repr(record)
    assert "4242424242424242" not in json.dumps(record_to_json(record))


def test_blocked_charge_is_processor_blocked_and_expanded_customer_is_read() -> None:
    record = one_record(load("charge_blocked.json"))
    assert record.customer_id == "cus_QzBlocked001"
    assert record.decline is not None
    assert record.decline.category is DeclineCategory.PROCESSOR_BLOCKED
    assert record.decline.advice is Advice.NEVER
    assert record.decline.raw_code == "previously_declined_do_not_retry"


def test_succeeded_charge_has_no_decline_and_keeps_zero_decimal_amount() -> None:
    record = one_record(load("charge_succeeded.json"))
    assert record.status == "succeeded"
    assert record.decline is None
    assert (record.amount_minor, record.currency) == (1000, "JPY")
    assert record_to_json(record)["decline"] is None


def test_list_page_gives_one_result_per_charge_in_order() -> None:
    results = run(load("charges_list_page.json"))
    assert [type(r).__name__ for r in results] == [
        "CanonicalRecord",
        "CanonicalRecord",
        "RejectedRecord",
        "RejectedRecord",
    ]
    failed, succeeded, pending, broken = results
    assert isinstance(failed, CanonicalRecord)
    assert isinstance(succeeded, CanonicalRecord)
    assert failed.decline is not None
    assert failed.decline.category is DeclineCategory.CARD_EXPIRED
    assert failed.card is not None
    assert failed.card.brand == "amex"
    assert succeeded.status == "succeeded"
    assert isinstance(pending, RejectedRecord)
    assert "pending" in pending.reason
    assert isinstance(broken, RejectedRecord)
    assert "amount" in broken.reason
    assert "float" in broken.reason
    assert "List004" in broken.payload_excerpt


def test_charge_failed_event_applies_mastercard_advice() -> None:
    record = one_record(load("event_charge_failed.json"))
    assert record.processor_payment_id == "ch_3Q1111JmW8nX1a0b0Evt0001"
    assert record.attempted_at == datetime.fromtimestamp(1720100000, UTC)
    assert record.card is not None
    assert record.card.funding is CardFunding.PREPAID
    decline = record.decline
    assert decline is not None
    assert decline.category is DeclineCategory.INSUFFICIENT_FUNDS
    assert (decline.advice, decline.network_advice_code) == (Advice.RETRY_LATER, "24")
    assert decline.not_before == record.attempted_at + timedelta(hours=1)


def test_payment_intent_failed_event_keys_by_charge_and_uses_event_time() -> None:
    record = one_record(load("event_payment_intent_failed.json"))
    assert record.processor_payment_id == "ch_3Q2222JmW8nX1a0b0Ch00002"
    assert record.attempted_at == datetime.fromtimestamp(1730000100, UTC)
    assert record.raw_kind == "payment_intent"
    assert record.card is not None
    assert (record.card.brand, record.card.last4) == ("visa", "1881")
    decline = record.decline
    assert decline is not None
    assert decline.category is DeclineCategory.INVALID_ACCOUNT
    # do_not_try_again (rule 1) outranks new_account_information_available (rule 2).
    assert decline.advice is Advice.NEVER


def test_payment_intent_with_decline_code() -> None:
    record = one_record(load("payment_intent_failed.json"))
    assert record.processor_payment_id == "ch_3Q3333JmW8nX1a0b0Ch00003"
    assert record.invoice_ref == "in_1Q3333JmW8nX1a0bIn000003"
    assert record.attempted_at == datetime.fromtimestamp(1730500000, UTC)
    assert record.decline is not None
    assert record.decline.raw_code == "call_issuer"
    assert record.decline.category is DeclineCategory.DO_NOT_HONOR
    assert record.decline.retryable is True


def test_payment_intent_succeeded_with_expanded_latest_charge() -> None:
    intent: dict[str, object] = {
        "id": "pi_ok",
        "object": "payment_intent",
        "amount": 990,
        "currency": "usd",
        "created": 1700000000,
        "status": "succeeded",
        "latest_charge": {
            "id": "ch_ok",
            "object": "charge",
            "created": 1700000050,
            "payment_method_details": {"type": "card", "card": {"brand": "visa", "last4": "1111"}},
        },
    }
    record = one_record(intent)
    assert record.status == "succeeded"
    assert record.processor_payment_id == "ch_ok"
    assert record.attempted_at == datetime.fromtimestamp(1700000050, UTC)
    assert record.card is not None
    assert record.card.last4 == "1111"


def test_payment_intent_still_processing_is_a_dead_letter() -> None:
    letter = one_dead_letter(
        {
            "id": "pi_x",
            "object": "payment_intent",
            "amount": 1,
            "currency": "usd",
            "status": "processing",
        }
    )
    assert "processing" in letter.reason


def test_error_envelope_with_payment_intent() -> None:
    record = one_record(load("error_envelope_with_intent.json"))
    assert record.raw_kind == "error"
    assert record.processor_payment_id == "ch_3Q4444JmW8nX1a0b0Ch00004"
    assert (record.amount_minor, record.currency) == (2500, "CAD")
    assert record.card is not None
    assert (record.card.brand, record.card.funding) == ("mastercard", CardFunding.DEBIT)
    decline = record.decline
    assert decline is not None
    assert decline.category is DeclineCategory.VELOCITY_EXCEEDED
    assert decline.not_before is not None
    assert decline.not_before - record.attempted_at >= timedelta(hours=24)


def test_error_envelope_without_payment_details_is_a_dead_letter() -> None:
    letter = one_dead_letter(load("error_envelope_charge_only.json"))
    assert "ch_1B2c3D4e5F6g7H8i9J0kL1mN" in letter.reason
    assert "fetch the charge" in letter.reason


def test_error_envelope_that_is_not_a_decline() -> None:
    letter = one_dead_letter(
        {"error": {"type": "invalid_request_error", "code": "parameter_missing"}}
    )
    assert "not a payment decline" in letter.reason


def test_oldest_charges_carry_the_card_under_card() -> None:
    charge: dict[str, object] = {
        "id": "ch_old",
        "object": "charge",
        "amount": 500,
        "currency": "usd",
        "created": 1400000000,
        "status": "failed",
        "failure_code": "card_declined",
        "card": {"brand": "MasterCard", "last4": "5100", "funding": "credit", "country": "US"},
    }
    record = one_record(charge)
    assert record.card is not None
    assert record.card.brand == "mastercard"


def test_sources_api_nests_the_card() -> None:
    charge: dict[str, object] = {
        "id": "ch_src",
        "object": "charge",
        "amount": 500,
        "currency": "usd",
        "created": 1500000000,
        "status": "failed",
        "failure_code": "expired_card",
        "source": {
            "object": "source",
            "type": "card",
            "card": {
                "brand": "American Express",
                "last4": "0005",
                "exp_month": 1,
                "exp_year": 2020,
            },
        },
    }
    record = one_record(charge)
    assert record.card is not None
    assert (record.card.brand, record.card.exp_year) == ("amex", 2020)
    assert record.decline is not None
    assert record.decline.category is DeclineCategory.CARD_EXPIRED


def test_expanded_invoice_gives_subscription_ref() -> None:
    charge = json.loads(load("charge_failed_modern.json"))
    charge["invoice"] = {"id": "in_9", "object": "invoice", "subscription": "sub_9"}
    record = one_record(charge)
    assert (record.invoice_ref, record.subscription_ref) == ("in_9", "sub_9")


def test_object_without_type_is_recognized_by_its_id() -> None:
    charge = json.loads(load("charge_succeeded.json"))
    del charge["object"]
    assert one_record(charge).processor_payment_id == "ch_3PqL0aJmW8nX1a0b0Ok00001"


def test_unsupported_object_in_an_event_is_a_dead_letter() -> None:
    event = {
        "object": "event",
        "type": "invoice.payment_failed",
        "created": 1700000000,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
    }
    assert "invoice" in one_dead_letter(event).reason


def test_event_without_data_object_is_a_dead_letter() -> None:
    assert "data.object" in one_dead_letter({"object": "event", "data": {}}).reason


def test_unknown_currency_is_a_dead_letter() -> None:
    charge = json.loads(load("charge_succeeded.json"))
    charge["currency"] = "zzz"
    assert "ISO 4217" in one_dead_letter(charge).reason


def test_top_level_array_and_scalar() -> None:
    both = [json.loads(load("charge_succeeded.json")), json.loads(load("charge_blocked.json"))]
    results = normalize_payload(Processor.STRIPE, json.dumps(both).encode())
    assert all(isinstance(r, CanonicalRecord) for r in results)
    assert len(results) == 2
    scalar = normalize_payload(Processor.STRIPE, b"42")
    assert len(scalar) == 1
    assert isinstance(scalar[0], RejectedRecord)


def test_dead_letter_excerpt_never_carries_a_card_number() -> None:
    charge = json.loads(load("charge_failed_legacy_source.json"))
    charge["status"] = "weird"
    charge["description"] = "customer typed 4000 0566 5566 5556 into the note"
    letter = one_dead_letter(charge)
    assert "4242424242424242" not in letter.payload_excerpt
    assert "4000 0566 5566 5556" not in letter.payload_excerpt
    assert "[redacted]" in letter.payload_excerpt


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"<transaction/>", b'{"a": NaN}', b"\xff\xfe\x00", b'{"a": 1']
)
def test_a_body_that_is_not_json_raises_normalize_error(body: bytes) -> None:
    with pytest.raises(NormalizeError) as info:
        normalize_payload(Processor.STRIPE, body)
    assert "\n" not in str(info.value)
    assert "stripe" in str(info.value)


def test_record_json_has_exactly_the_documented_fields() -> None:
    rendered = record_to_json(one_record(load("event_charge_failed.json")))
    assert set(rendered) == {
        "processor",
        "processor_payment_id",
        "status",
        "amount_minor",
        "currency",
        "customer_id",
        "card",
        "decline",
        "attempted_at",
        "actor",
        "billing",
    }
    card = rendered["card"]
    decline = rendered["decline"]
    assert isinstance(card, dict)
    assert isinstance(decline, dict)
    assert set(card) == {"brand", "funding", "country", "last4", "exp_month", "exp_year"}
    assert set(decline) == {
        "category",
        "retryable",
        "advice",
        "not_before",
        "raw_code",
        "network_decline_code",
        "network_advice_code",
    }
    assert decline["not_before"] == "2024-07-04T14:33:20Z"
    json.dumps(rendered)


def test_raw_payload_of_an_event_record_is_the_whole_event() -> None:
    (item,) = normalize_items(Processor.STRIPE, load("event_payment_intent_failed.json"))
    assert isinstance(item.raw, dict)
    assert item.raw["object"] == "event"
    # The event time is needed to replay the PaymentIntent's attempt time.
    assert normalize_stored(Processor.STRIPE, item.raw) == [item.result]


def test_raw_payload_drops_the_card_number_field() -> None:
    (item,) = normalize_items(Processor.STRIPE, load("charge_failed_legacy_source.json"))
    assert isinstance(item.raw, dict)
    source = item.raw["source"]
    assert isinstance(source, dict)
    assert "number" not in source
    assert source["last4"] == "4242"


def test_list_items_are_stored_one_by_one() -> None:
    items = normalize_items(Processor.STRIPE, load("charges_list_page.json"))
    assert [i.raw["id"] for i in items if isinstance(i.raw, dict)] == [
        "ch_3Q0000JmW8nX1a0b0List001",
        "ch_3Q0000JmW8nX1a0b0List002",
        "ch_3Q0000JmW8nX1a0b0List003",
        "ch_3Q0000JmW8nX1a0b0List004",
    ]
