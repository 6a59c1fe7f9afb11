"""Who made each attempt, and where its payer is billed, as each processor's records say
(docs/actors.md, docs/domain.md §5)."""

import copy
import json
from typing import Any

import pytest

from app.enums import Actor, Processor
from app.processors.normalize.dispatch import record_to_json
from app.processors.normalize.records import NORMALIZER_VERSION
from tests.support.normalize import Normalizer

STRIPE = Normalizer(Processor.STRIPE)
BRAINTREE = Normalizer(Processor.BRAINTREE)
ADYEN = Normalizer(Processor.ADYEN)
CHECKOUT = Normalizer(Processor.CHECKOUT)

A = Actor
# (processor, fixture, actor, billing country, billing region): one row per kind of attempt
# each processor reports, in its own wire format.
CASES: list[tuple[Normalizer, str, Actor, str | None, str | None]] = [
    (STRIPE, "charge_portal_retry.json", A.PORTAL, None, None),
    (STRIPE, "charge_smart_retry_succeeded.json", A.BILLING_SYSTEM, None, None),
    (STRIPE, "charge_hosted_invoice_page.json", A.CUSTOMER, "US", "IL"),
    (STRIPE, "charge_succeeded.json", A.PROCESSOR, None, None),
    (BRAINTREE, "transaction_portal_retry.xml", A.PORTAL, None, None),
    (BRAINTREE, "transaction_subscription_retry.xml", A.BILLING_SYSTEM, None, None),
    (BRAINTREE, "transaction_customer_checkout.xml", A.CUSTOMER, "US", "IL"),
    (BRAINTREE, "transaction_braintree_retried.xml", A.PROCESSOR, None, None),
    (ADYEN, "notification_portal_retry.json", A.PORTAL, None, None),
    (ADYEN, "notification_contauth_subscription.json", A.BILLING_SYSTEM, None, None),
    (ADYEN, "notification_pay_by_link.json", A.CUSTOMER, "NL", "NH"),
    (ADYEN, "notification_autorescue.json", A.PROCESSOR, None, None),
    (CHECKOUT, "payment_portal_retry.json", A.PORTAL, None, None),
    (CHECKOUT, "payment_recurring_approved.json", A.BILLING_SYSTEM, None, None),
    (CHECKOUT, "payment_regular_3ds.json", A.CUSTOMER, "CA", "ON"),
    (CHECKOUT, "webhook_payment_approved.json", A.PROCESSOR, None, None),
]


def test_the_normalizer_version_says_records_now_carry_actors() -> None:
    assert NORMALIZER_VERSION == 2


@pytest.mark.parametrize(
    ("normalizer", "fixture", "actor", "country", "region"),
    CASES,
    ids=[f"{n.processor.value}-{f}" for n, f, *_ in CASES],
)
def test_each_kind_of_attempt_is_attributed_from_its_own_fields(
    normalizer: Normalizer, fixture: str, actor: Actor, country: str | None, region: str | None
) -> None:
    record = normalizer.one_record(normalizer.load(fixture))
    assert record.actor is actor
    assert (record.billing_country, record.billing_region) == (country, region)
    rendered = record_to_json(record)
    assert rendered["actor"] == actor.value
    expected = None if country is None else {"country": country, "region": region}
    assert rendered["billing"] == expected


def _json(normalizer: Normalizer, fixture: str) -> dict[str, Any]:
    doc = json.loads(normalizer.load(fixture))
    assert isinstance(doc, dict)
    return copy.deepcopy(doc)


# --- Stripe -----------------------------------------------------------------------------


def test_stripe_portal_marker_wins_over_an_invoice_and_3ds() -> None:
    charge = _json(STRIPE, "charge_hosted_invoice_page.json")
    charge["metadata"] = {"retry_of": "ch_original"}
    assert STRIPE.one_record(charge).actor is Actor.PORTAL


@pytest.mark.parametrize(
    ("result", "actor"),
    [
        ("authenticated", Actor.CUSTOMER),
        ("attempt_acknowledged", Actor.CUSTOMER),
        # Exempted or failed authentication does not show the cardholder in the flow.
        ("exempted", Actor.BILLING_SYSTEM),
        ("failed", Actor.BILLING_SYSTEM),
    ],
)
def test_stripe_3ds_result_decides_whether_the_customer_was_present(
    result: str, actor: Actor
) -> None:
    charge = _json(STRIPE, "charge_hosted_invoice_page.json")
    charge["payment_method_details"]["card"]["three_d_secure"]["result"] = result
    assert STRIPE.one_record(charge).actor is actor


def test_stripe_intent_reads_its_latest_charge_and_payment_method() -> None:
    hosted = _json(STRIPE, "charge_hosted_invoice_page.json")
    intent = {
        "id": "pi_3QFv2xJmW8nX1a0b0Pi00001",
        "object": "payment_intent",
        "amount": 4900,
        "currency": "usd",
        "created": 1730451600,
        "customer": "cus_RbK2mQ7wXz9LpA",
        "invoice": "in_1QFv2xJmW8nX1a0bInv00001",
        "status": "succeeded",
        "latest_charge": hosted,
    }
    record = STRIPE.one_record(intent)
    assert (record.actor, record.billing_country, record.billing_region) == (
        Actor.CUSTOMER,
        "US",
        "IL",
    )
    del hosted["payment_method_details"]["card"]["three_d_secure"]
    hosted["billing_details"]["address"]["country"] = None
    intent["payment_method"] = {
        "id": "pm_1",
        "object": "payment_method",
        "billing_details": {"address": {"country": "GB", "state": None}},
    }
    record = STRIPE.one_record(intent)
    assert (record.actor, record.billing_country) == (Actor.BILLING_SYSTEM, "GB")


def test_stripe_legacy_source_address_and_bad_country() -> None:
    charge = _json(STRIPE, "charge_failed_legacy_source.json")
    charge.pop("billing_details", None)
    charge["source"]["address_country"] = "usa"
    charge["source"]["address_state"] = "  New   York "
    record = STRIPE.one_record(charge)
    assert (record.billing_country, record.billing_region) == ("US", "New York")
    charge["source"]["address_country"] = "Narnia"
    assert STRIPE.one_record(charge).billing_country is None


# --- Braintree --------------------------------------------------------------------------


def _transaction(extra: str) -> bytes:
    return (
        "<transaction><id>t1</id><status>settled</status><type>sale</type>"
        "<currency-iso-code>USD</currency-iso-code><amount>1.00</amount>"
        "<created-at>2024-01-01T00:00:00Z</created-at><customer><id>c1</id></customer>"
        f"{extra}</transaction>"
    ).encode()


@pytest.mark.parametrize(
    ("extra", "actor"),
    [
        ('<recurring type="boolean">false</recurring>', Actor.CUSTOMER),
        ('<recurring type="boolean">true</recurring>', Actor.BILLING_SYSTEM),
        ("<subscription-id>sub_1</subscription-id>", Actor.BILLING_SYSTEM),
        (
            '<subscription-id>sub_1</subscription-id><recurring type="boolean">true</recurring>'
            "<retried-transaction-id>t0</retried-transaction-id>",
            Actor.PROCESSOR,
        ),
        (
            "<three-d-secure-info><status>authenticate_attempt_successful</status>"
            "</three-d-secure-info>",
            Actor.CUSTOMER,
        ),
        (
            "<three-d-secure-info><status>authenticate_failed</status></three-d-secure-info>",
            Actor.PROCESSOR,
        ),
        ("", Actor.PROCESSOR),
    ],
)
def test_braintree_flags_in_order(extra: str, actor: Actor) -> None:
    assert BRAINTREE.one_record(_transaction(extra)).actor is actor


def test_braintree_billing_alpha3_only() -> None:
    body = _transaction(
        "<billing><country-code-alpha3>CAN</country-code-alpha3><region>BC</region></billing>"
    )
    record = BRAINTREE.one_record(body)
    assert (record.billing_country, record.billing_region) == ("CA", "BC")


# --- Adyen ------------------------------------------------------------------------------


def _adyen_item(fixture: str) -> dict[str, Any]:
    item = _json(ADYEN, fixture)["notificationItems"][0]["NotificationRequestItem"]
    assert isinstance(item, dict)
    return item


@pytest.mark.parametrize(
    ("fields", "actor"),
    [
        ({"recurringProcessingModel": "UnscheduledCardOnFile"}, Actor.BILLING_SYSTEM),
        ({"recurringProcessingModel": "CardOnFile"}, Actor.CUSTOMER),
        ({"shopperInteraction": "Moto"}, Actor.CUSTOMER),
        ({"shopperInteraction": "ContAuth", "threeDAuthenticated": "true"}, Actor.CUSTOMER),
        ({"shopperInteraction": "ContAuth", "threeDAuthenticated": "false"}, Actor.BILLING_SYSTEM),
        ({}, Actor.PROCESSOR),
    ],
)
def test_adyen_interaction_and_processing_model(fields: dict[str, str], actor: Actor) -> None:
    item = _adyen_item("notification_contauth_subscription.json")
    extra = item["additionalData"]
    del extra["shopperInteraction"], extra["recurringProcessingModel"]
    extra.update(fields)
    assert ADYEN.one_record({"NotificationRequestItem": item}).actor is actor


def test_adyen_autorescue_success_is_the_processors_payment_of_the_invoice() -> None:
    record = ADYEN.one_record(ADYEN.load("notification_autorescue.json"))
    assert (record.status, record.processor_payment_id, record.invoice_ref) == (
        "succeeded",
        "R3SC5RBFJGXXGN86",
        "INV-1001",
    )
    assert record.card is not None
    assert record.card.brand == "visa"


def test_adyen_autorescue_that_failed_is_no_attempt() -> None:
    item = _adyen_item("notification_autorescue.json")
    item["success"] = "false"
    letter = ADYEN.one_dead_letter({"NotificationRequestItem": item})
    assert "AUTORESCUE" in letter.reason


# --- Checkout.com -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "actor"),
    [
        ({"payment_type": "Regular", "merchant_initiated": True}, Actor.BILLING_SYSTEM),
        ({"payment_type": "Recurring", "merchant_initiated": False}, Actor.CUSTOMER),
        ({"payment_type": "MOTO"}, Actor.CUSTOMER),
        ({"payment_type": "Unscheduled"}, Actor.BILLING_SYSTEM),
        ({"payment_type": "Regular"}, Actor.CUSTOMER),
        ({}, Actor.PROCESSOR),
    ],
)
def test_checkout_payment_type_and_merchant_initiated(
    fields: dict[str, object], actor: Actor
) -> None:
    payment = _json(CHECKOUT, "payment_recurring_approved.json")
    del payment["payment_type"], payment["merchant_initiated"]
    payment.update(fields)
    assert CHECKOUT.one_record(payment).actor is actor


def test_checkout_3ds_that_did_not_authenticate_shows_no_customer() -> None:
    payment = _json(CHECKOUT, "payment_regular_3ds.json")
    payment["payment_type"] = "Recurring"
    payment["3ds"]["authentication_response"] = "N"
    assert CHECKOUT.one_record(payment).actor is Actor.BILLING_SYSTEM


@pytest.mark.parametrize("value", [["Y"], {"value": "Y"}, 1])
def test_a_3ds_answer_of_another_type_is_no_answer_not_an_error(value: object) -> None:
    """A malformed 3-D Secure field makes a record without a customer present, never a
    normalizer bug (the answer used to be looked up in a set, which a list cannot be)."""
    payment = _json(CHECKOUT, "payment_regular_3ds.json")
    payment["payment_type"] = "Recurring"
    payment["3ds"]["authentication_response"] = value
    assert CHECKOUT.one_record(payment).actor is Actor.BILLING_SYSTEM
    charge = _json(STRIPE, "charge_hosted_invoice_page.json")
    charge["payment_method_details"]["card"]["three_d_secure"]["result"] = value
    assert STRIPE.one_record(charge).actor is Actor.BILLING_SYSTEM
