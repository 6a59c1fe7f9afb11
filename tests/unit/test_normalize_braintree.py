"""Braintree normalizer: XML transactions, collections, search results, amounts by exponent."""

from datetime import UTC, datetime, timedelta

import pytest

from app.enums import Advice, CardFunding, DeclineCategory, Processor
from app.processors.normalize.dispatch import (
    normalize_items,
    normalize_stored,
    record_to_json,
)
from app.processors.normalize.records import (
    CanonicalRecord,
    NormalizeError,
    RecordError,
    RejectedRecord,
    major_to_minor,
)
from tests.support.normalize import Normalizer, card_json, decline_json, failed_record_json

NORMALIZER = Normalizer(Processor.BRAINTREE)
load = NORMALIZER.load
run = NORMALIZER.run
one_record = NORMALIZER.one_record


def transaction(**fields: str) -> bytes:
    """A minimal declined transaction, with fields replaced or added."""
    base = {
        "id": "t_min",
        "status": "processor_declined",
        "type": "sale",
        "currency-iso-code": "USD",
        "amount": "1.00",
        "created-at": "2024-01-01T00:00:00Z",
        "processor-response-code": "2000",
    }
    base.update(fields)
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in base.items() if v != "")
    return f"<transaction>{inner}</transaction>".encode()


def test_processor_declined_renders_exactly() -> None:
    record = one_record(load("transaction_processor_declined.xml"))
    assert record_to_json(record) == failed_record_json(
        Processor.BRAINTREE,
        "k8q3m2vp",
        amount_minor=3330,
        currency="USD",
        customer_id="cust_81234",
        card=card_json("mastercard", "credit", "US", last4="4444", exp_month=7, exp_year=2027),
        decline=decline_json(
            "insufficient_funds",
            advice="retry_later",
            raw_code="2001",
            retryable=True,
            not_before="2024-03-01T10:15:42Z",
            network_decline_code="51",
            network_advice_code="24",
        ),
        attempted_at="2024-03-01T09:15:42Z",
        actor="billing_system",  # a Recurring Billing subscription's charge
    )
    assert record.subscription_ref == "sub_monthly_77"
    assert record.invoice_ref == "INV-2024-0042"
    assert record.card is not None
    assert record.card.bin == "555555"
    assert record.card.fingerprint == "c5d2f7a0b1e3"


def test_gateway_rejected_excessive_retry_is_never() -> None:
    record = one_record(load("transaction_gateway_rejected.xml"))
    decline = record.decline
    assert decline is not None
    assert decline.category is DeclineCategory.PROCESSOR_BLOCKED
    assert (decline.retryable, decline.advice) == (False, Advice.NEVER)
    assert decline.raw_code == "excessive_retry"
    assert record.card is not None
    # "Unknown" issuing country and flags stay unknown rather than guessed.
    assert record.card.country is None
    assert record.card.funding is CardFunding.UNKNOWN


def test_settled_jpy_transaction_has_no_minor_digits() -> None:
    record = one_record(load("transaction_settled_jpy.xml"))
    assert record.status == "succeeded"
    assert record.decline is None
    assert (record.amount_minor, record.currency) == (1500, "JPY")
    assert record.card is not None
    assert (record.card.brand, record.card.country, record.card.funding) == (
        "jcb",
        "JP",
        CardFunding.DEBIT,
    )
    assert record.card.bin == "35280000"


def test_collection_yields_each_transaction_and_dead_letters_the_bad_one() -> None:
    results = run(load("credit_card_transactions.xml"))
    assert len(results) == 4
    call_issuer, kwd, bad, new_card = results
    assert isinstance(call_issuer, CanonicalRecord)
    assert call_issuer.decline is not None
    assert call_issuer.decline.category is DeclineCategory.DO_NOT_HONOR
    assert call_issuer.decline.retryable is False  # Braintree said hard_declined
    assert call_issuer.card is not None
    assert (call_issuer.card.brand, call_issuer.card.country) == ("amex", "GB")
    assert isinstance(kwd, CanonicalRecord)
    assert (kwd.amount_minor, kwd.currency, kwd.card) == (12345, "KWD", None)
    assert isinstance(bad, RejectedRecord)
    assert "more decimals than USD" in bad.reason
    assert "b4dam0un" in bad.payload_excerpt
    assert isinstance(new_card, CanonicalRecord)
    assert (new_card.amount_minor, new_card.currency) == (5500, "BHD")
    assert new_card.attempted_at == datetime(2024, 5, 1, 9, 15, tzinfo=UTC)
    assert new_card.decline is not None
    assert new_card.decline.advice is Advice.UPDATE_CREDENTIALS
    assert new_card.decline.retryable is False
    assert new_card.card is not None
    assert new_card.card.country == "BH"


def test_full_card_number_element_is_never_kept() -> None:
    results = run(load("credit_card_transactions.xml"))
    assert "5105105105105100" not in repr(results)


def test_full_card_number_is_not_in_a_dead_letter_excerpt() -> None:
    body = (
        b"<transaction><id>x</id><status>voided</status>"
        b"<credit-card><number>5105105105105100</number><last-4>5100</last-4></credit-card>"
        b"<note>4111 1111 1111 1111</note></transaction>"
    )
    (letter,) = run(body)
    assert isinstance(letter, RejectedRecord)
    assert "voided" in letter.reason
    assert "5105105105105100" not in letter.payload_excerpt
    assert "4111 1111 1111 1111" not in letter.payload_excerpt
    assert "5100" in letter.payload_excerpt


def test_search_results_with_ids_only_yield_nothing() -> None:
    assert run(load("search_results_ids.xml")) == []


def test_webhook_notification_subject() -> None:
    inner = load("transaction_gateway_rejected.xml").split(b"?>", 1)[1]
    body = b"<notification><kind>transaction_disbursed</kind><subject>" + inner
    body += b"</subject></notification>"
    assert one_record(body).processor_payment_id == "r7t1x0zz"


def test_unknown_root_is_a_dead_letter() -> None:
    (letter,) = run(b"<customer><id>1</id></customer>")
    assert isinstance(letter, RejectedRecord)
    assert "<customer>" in letter.reason


def test_json_body_is_a_dead_letter() -> None:
    (letter,) = run(b'{"transaction": {"id": "x"}}')
    assert isinstance(letter, RejectedRecord)
    assert "XML" in letter.reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"33.30",
        b"<transaction><id>1</id>",
        b'{"broken": ',
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
        b"<transaction>&lol;</transaction>",
    ],
)
def test_a_body_that_is_not_xml_raises_normalize_error(body: bytes) -> None:
    with pytest.raises(NormalizeError) as info:
        run(body)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"created-at": "2024-01-01T00:00:00"}, "no time zone"),
        ({"created-at": "yesterday"}, "ISO-8601"),
        ({"status": "voided"}, "voided"),
        ({"type": "credit"}, "not a sale"),
        ({"amount": ""}, "amount"),
        ({"amount": "12,50"}, "not a decimal"),
        ({"amount": "-1.00"}, "non-negative"),
        ({"currency-iso-code": "US"}, "ISO 4217"),
        ({"id": ""}, "<id>"),
    ],
)
def test_bad_fields_become_specific_dead_letters(fields: dict[str, str], reason: str) -> None:
    (letter,) = run(transaction(**fields))
    assert isinstance(letter, RejectedRecord)
    assert reason in letter.reason


def test_nil_fields_are_absent() -> None:
    body = transaction(**{"order-id": "", "subscription-id": ""}).replace(
        b"</transaction>", b'<order-id nil="true"/><subscription-id nil="true"/></transaction>'
    )
    record = one_record(body)
    assert (record.invoice_ref, record.subscription_ref) == (None, None)


def test_customer_details_variant() -> None:
    body = transaction().replace(
        b"</transaction>", b"<customer-details><id>cd_1</id></customer-details></transaction>"
    )
    assert one_record(body).customer_id == "cd_1"


def test_prepaid_flag_wins_over_debit() -> None:
    body = transaction().replace(
        b"</transaction>",
        b"<credit-card><card-type>Visa</card-type><prepaid>Yes</prepaid><debit>Yes</debit>"
        b"</credit-card></transaction>",
    )
    card = one_record(body).card
    assert card is not None
    assert card.funding is CardFunding.PREPAID


def test_soft_verdict_on_2057_makes_it_retryable() -> None:
    record = one_record(
        transaction(
            **{"processor-response-code": "2057", "processor-response-type": "soft_declined"}
        )
    )
    assert record.decline is not None
    assert record.decline.category is DeclineCategory.NOT_PERMITTED
    assert record.decline.retryable is True


def test_mastercard_advice_02_from_braintree() -> None:
    body = transaction(**{"merchant-advice-code": "02"}).replace(
        b"</transaction>",
        b"<credit-card><card-type>MasterCard</card-type></credit-card></transaction>",
    )
    record = one_record(body)
    assert record.decline is not None
    assert record.decline.not_before is not None
    assert record.decline.not_before - record.attempted_at >= timedelta(hours=72)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("33.30", "USD", 3330),
        ("0.01", "EUR", 1),
        ("1500", "JPY", 1500),
        ("1500.00", "JPY", 1500),
        ("12.345", "KWD", 12345),
        ("5.5", "BHD", 5500),
        ("1.2345", "CLF", 12345),
        ("100", "USD", 10000),
    ],
)
def test_major_to_minor_uses_the_currency_exponent(amount: str, currency: str, minor: int) -> None:
    assert major_to_minor(amount, currency, "t") == minor


@pytest.mark.parametrize(
    ("amount", "currency"), [("1.5", "JPY"), ("1.001", "USD"), ("NaN", "USD"), ("inf", "USD")]
)
def test_major_to_minor_refuses_inexact_amounts(amount: str, currency: str) -> None:
    with pytest.raises(RecordError):
        major_to_minor(amount, currency, "t")


def test_additional_processor_response_supplies_the_network_code() -> None:
    body = transaction(**{"additional-processor-response": "14 : INVALID CARD NUMBER"}).replace(
        b"</transaction>", b"<credit-card><card-type>Visa</card-type></credit-card></transaction>"
    )
    decline = one_record(body).decline
    assert decline is not None
    assert decline.network_decline_code == "14"
    # Visa category 1 on a network code: never, whatever the generic 2000 says.
    assert (decline.category, decline.advice) == (DeclineCategory.DO_NOT_HONOR, Advice.NEVER)


def test_network_response_code_wins_over_additional_response() -> None:
    body = transaction(
        **{"network-response-code": "51", "additional-processor-response": "05 : DECLINE"}
    )
    decline = one_record(body).decline
    assert decline is not None
    assert decline.network_decline_code == "51"


def test_each_transaction_is_kept_raw_as_xml_and_replays() -> None:
    items = normalize_items(Processor.BRAINTREE, load("credit_card_transactions.xml"))
    assert len(items) == 4
    for item in items:
        assert isinstance(item.raw, dict)
        xml = item.raw["xml"]
        assert isinstance(xml, str)
        assert xml.startswith("<transaction>")
        assert "5105105105105100" not in xml
        assert normalize_stored(Processor.BRAINTREE, item.raw) == [item.result]


def test_replaying_a_malformed_raw_braintree_record_raises() -> None:
    with pytest.raises(NormalizeError):
        normalize_stored(Processor.BRAINTREE, {"transaction": "x"})
    with pytest.raises(NormalizeError):
        normalize_stored(Processor.BRAINTREE, {"xml": "<transaction>"})
