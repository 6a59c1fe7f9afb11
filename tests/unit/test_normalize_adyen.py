"""Adyen normalizer: AUTHORISATION notifications, batches, refusal reasons and card summaries."""

import copy
import json
from datetime import UTC, datetime

import pytest

from app.enums import Advice, CardFunding, DeclineCategory, Processor
from app.processors.normalize.dispatch import record_to_json
from app.processors.normalize.records import CanonicalRecord, NormalizeError, RejectedRecord
from tests.support.normalize import Normalizer

NORMALIZER = Normalizer(Processor.ADYEN)
load = NORMALIZER.load
run = NORMALIZER.run
one_record = NORMALIZER.one_record


def single_item() -> dict[str, object]:
    item = json.loads(load("notification_single.json"))["NotificationRequestItem"]
    assert isinstance(item, dict)
    return copy.deepcopy(item)


def test_batch_yields_one_result_per_item() -> None:
    results = run(load("notification_batch.json"))
    assert [type(r).__name__ for r in results] == [
        "CanonicalRecord",
        "CanonicalRecord",
        "CanonicalRecord",
        "RejectedRecord",
        "CanonicalRecord",
    ]


def test_refused_with_raw_do_not_honor_renders_exactly() -> None:
    first = run(load("notification_batch.json"))[0]
    assert isinstance(first, CanonicalRecord)
    assert record_to_json(first) == {
        "processor": "adyen",
        "processor_payment_id": "QFQTPCQ8HXSKGK82",
        "status": "failed",
        "amount_minor": 1099,
        "currency": "EUR",
        "customer_id": "shopper_001",
        "card": {
            "brand": "visa",
            "funding": "credit",
            "country": "NL",
            "last4": "1111",
            "exp_month": 3,
            "exp_year": 2030,
        },
        "decline": {
            "category": "do_not_honor",
            "retryable": True,
            "advice": "retry",
            "not_before": None,
            "raw_code": "2",
            "network_decline_code": "05",
            "network_advice_code": None,
        },
        "attempted_at": "2024-06-01T08:00:00Z",
        "actor": "processor",
        "billing": None,
    }
    assert first.invoice_ref == "INV-1001"
    assert first.card is not None
    assert first.card.bin == "411111"


def test_expiry_text_decides_over_generic_refused() -> None:
    second = run(load("notification_batch.json"))[1]
    assert isinstance(second, CanonicalRecord)
    assert second.customer_id == "shopper_002"
    assert second.decline is not None
    assert second.decline.category is DeclineCategory.CARD_EXPIRED
    assert second.decline.retryable is False
    assert second.card is not None
    assert second.card.brand == "mastercard"


def test_success_true_string_is_succeeded() -> None:
    third = run(load("notification_batch.json"))[2]
    assert isinstance(third, CanonicalRecord)
    assert third.status == "succeeded"
    assert third.decline is None
    assert third.card is not None
    assert (third.card.brand, third.card.funding) == ("amex", CardFunding.DEBIT)


def test_non_authorisation_event_is_a_dead_letter() -> None:
    fourth = run(load("notification_batch.json"))[3]
    assert isinstance(fourth, RejectedRecord)
    assert "REFUND" in fourth.reason


def test_specific_reason_with_raw_network_code() -> None:
    fifth = run(load("notification_batch.json"))[4]
    assert isinstance(fifth, CanonicalRecord)
    assert fifth.card is not None
    assert fifth.card.brand == "mastercard"  # from the "mc_applepay" variant
    assert fifth.decline is not None
    assert fifth.decline.raw_code == "24"
    assert fifth.decline.network_decline_code == "N7"
    assert fifth.decline.category is DeclineCategory.CARD_DATA_INCORRECT


def test_single_item_with_new_account_advice() -> None:
    record = one_record(load("notification_single.json"))
    assert record.attempted_at == datetime(2024, 7, 15, 4, 45, 10, tzinfo=UTC)
    assert record.card is not None
    assert (record.card.funding, record.card.country) == (CardFunding.PREPAID, "DE")
    assert (record.card.exp_month, record.card.exp_year) == (2, 2029)
    decline = record.decline
    assert decline is not None
    assert decline.network_advice_code == "01"
    assert (decline.retryable, decline.advice) == (False, Advice.UPDATE_CREDENTIALS)


def test_bare_item_without_wrapper() -> None:
    assert one_record(single_item()).processor_payment_id == "M9KZ4RBFJGXXGN82"


def test_refusal_46_and_bad_items_in_a_batch() -> None:
    blocked, bad_amount, bad_success = run(load("notification_blocked_46.json"))
    assert isinstance(blocked, CanonicalRecord)
    assert blocked.decline is not None
    assert blocked.decline.category is DeclineCategory.PROCESSOR_BLOCKED
    assert blocked.decline.advice is Advice.NEVER
    assert blocked.card is not None
    assert blocked.card.brand == "cartes_bancaires"
    assert isinstance(bad_amount, RejectedRecord)
    assert "amount.value" in bad_amount.reason
    assert isinstance(bad_success, RejectedRecord)
    assert "success" in bad_success.reason


@pytest.mark.parametrize(("success", "status"), [(True, "succeeded"), ("FALSE", "failed")])
def test_success_variants(success: object, status: str) -> None:
    item = single_item()
    item["success"] = success
    assert one_record(item).status == status


@pytest.mark.parametrize(
    ("method", "variant", "brand"),
    [
        ("visa", None, "visa"),
        ("mc", None, "mastercard"),
        ("mccredit", None, "mastercard"),
        ("visadebit", None, "visa"),
        ("amex_applepay", None, "amex"),
        ("cup", None, "unionpay"),
        ("scheme", "mc_googlepay", "mastercard"),
        ("applepay", "visa_applepay", "visa"),
        ("discover", None, "discover"),
    ],
)
def test_payment_method_variants(method: str, variant: str | None, brand: str) -> None:
    item = single_item()
    item["paymentMethod"] = method
    extra = item["additionalData"]
    assert isinstance(extra, dict)
    if variant is not None:
        extra["paymentMethodVariant"] = variant
    card = one_record(item).card
    assert card is not None
    assert card.brand == brand


def test_mastercard_advice_is_ignored_on_a_visa_card() -> None:
    item = single_item()
    item["paymentMethod"] = "visa"
    decline = one_record(item).decline
    assert decline is not None
    assert decline.advice is Advice.RETRY


def test_reason_text_without_code() -> None:
    item = single_item()
    extra = item["additionalData"]
    assert isinstance(extra, dict)
    del extra["refusalReasonCode"]
    del extra["refusalReasonRaw"]
    del extra["merchantAdviceCode"]
    item["reason"] = "Not enough balance"
    decline = one_record(item).decline
    assert decline is not None
    assert (decline.raw_code, decline.category) == ("12", DeclineCategory.INSUFFICIENT_FUNDS)


def test_item_without_additional_data_has_no_card_fields() -> None:
    item = single_item()
    del item["additionalData"]
    item["paymentMethod"] = None
    record = one_record(item)
    assert record.card is None
    assert record.customer_id is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"eventDate": "2024-07-15T06:45:10"}, "time zone"),
        ({"amount": {"currency": "EUR"}}, "amount.value is missing"),
        ({"amount": {"currency": "EURO", "value": 1}}, "ISO 4217"),
        ({"amount": 4999}, "expected an object"),
        ({"pspReference": None}, "pspReference"),
        ({"eventCode": "CAPTURE"}, "CAPTURE"),
    ],
)
def test_bad_items_become_specific_dead_letters(change: dict[str, object], reason: str) -> None:
    item = single_item()
    item.update(change)
    (letter,) = run({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})
    assert isinstance(letter, RejectedRecord)
    assert reason in letter.reason


def test_wrong_nesting_is_a_dead_letter() -> None:
    (letter,) = run({"notificationItems": {"NotificationRequestItem": single_item()}})
    assert isinstance(letter, RejectedRecord)
    assert "notificationItems" in letter.reason


@pytest.mark.parametrize("body", [b"", b"live=false", b"<xml/>"])
def test_a_body_that_is_not_json_raises_normalize_error(body: bytes) -> None:
    with pytest.raises(NormalizeError):
        run(body)
