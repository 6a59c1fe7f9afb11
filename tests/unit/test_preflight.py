"""Pre-flight's reading of processor answers and its choice of a replacement card."""

import json
from collections.abc import Callable

import httpx
import pytest

from app.enums import Processor
from app.processors.adapters import adapter_for
from app.processors.base import (
    BillingRefs,
    BillingState,
    ConnectionInfo,
    ProcessorAdapter,
    StoredMethod,
)
from app.processors.stripe import _subscription_stop, invoice_subscription, stored_method
from app.retry.events import CustomerDeleted, InvoiceVoided, PaidElsewhere, SubscriptionCanceled
from app.workflows.retry_attempt import _Card, _replacement, _stop_event

CARD = _Card("fpA", "4242", 4, 2029)


def _method(
    ref: str, fingerprint: str | None, last4: str = "4242", exp: int = 2029
) -> StoredMethod:
    return StoredMethod(ref, "visa", last4, 4, exp, fingerprint)


def test_invoice_names_its_subscription_in_either_api_version() -> None:
    assert invoice_subscription({"subscription": "sub_1"}) == "sub_1"
    assert invoice_subscription({"subscription": {"id": "sub_2", "object": "subscription"}}) == (
        "sub_2"
    )
    parent = {"subscription_details": {"subscription": "sub_3"}, "type": "subscription_details"}
    assert invoice_subscription({"subscription": None, "parent": parent}) == "sub_3"
    assert invoice_subscription({"parent": None}) is None


def test_subscription_canceled_or_ended_at_its_scheduled_end() -> None:
    assert _subscription_stop({"status": "active"}, "sub") is None
    assert _subscription_stop({"status": "past_due"}, "sub") is None
    canceled = {"status": "canceled", "canceled_at": 10, "ended_at": 10, "cancel_at": None}
    assert _subscription_stop(canceled, "sub") == (
        "subscription_canceled",
        "subscription sub is canceled",
    )
    ended = {"status": "canceled", "cancel_at": 10, "ended_at": 10}
    assert _subscription_stop(ended, "sub") == (
        "subscription_ended",
        "subscription sub ended at its scheduled end",
    )


def test_stored_method_from_a_payment_method_or_a_legacy_card() -> None:
    card = {"brand": "visa", "last4": "4242", "exp_month": 4, "exp_year": 2029, "fingerprint": "f"}
    pm = {"id": "pm_1", "object": "payment_method", "card": card}
    assert stored_method(pm) == StoredMethod("pm_1", "visa", "4242", 4, 2029, "f")
    legacy = {"id": "card_1", "object": "card", **card}
    assert stored_method(legacy) == StoredMethod("card_1", "visa", "4242", 4, 2029, "f")
    assert stored_method("pm_1") is None
    assert stored_method(None) is None


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        # The default is the failed card: charge the default as always.
        (BillingState(method=_method("pm_a", "fpA")), None),
        (BillingState(method=_method("pm_b", "fpB", "1111")), "pm_b"),
        # Same card renewed with a new expiry is another credential.
        (BillingState(method=_method("pm_r", "fpA", exp=2031)), "pm_r"),
        # Without fingerprints, last four digits and expiry decide.
        (BillingState(method=_method("pm_c", None)), None),
        (BillingState(method=_method("pm_d", None, "9999")), "pm_d"),
        # An id alone describes no card: nothing to compare, nothing changed.
        (BillingState(method=StoredMethod("pm_e", None, None, None, None)), None),
        # No default named (Adyen): the one stored card, when the failed one is gone.
        (BillingState(methods=(_method("x1", None, "9999"),)), "x1"),
        (BillingState(methods=(_method("x1", None, "9999"), _method("x2", None, "8888"))), None),
        (BillingState(methods=(_method("x0", None),)), None),
        (BillingState(), None),
    ],
)
def test_replacement_only_when_the_processor_now_charges_another_card(
    state: BillingState, expected: str | None
) -> None:
    chosen = _replacement(state, CARD)
    assert (chosen.ref if chosen else None) == expected


def test_no_replacement_without_a_known_card() -> None:
    assert _replacement(BillingState(method=_method("pm_b", "fpB", "1111")), None) is None


def test_derived_card_identity_is_compared_by_what_is_visible() -> None:
    derived = _Card("derived:abc", "4242", 4, 2029)
    assert _replacement(BillingState(method=_method("pm_a", "fpZ")), derived) is None


def test_each_stop_is_its_transition() -> None:
    def stop(name: str) -> BillingState:
        return BillingState(stop=name, detail="seen")  # type: ignore[arg-type]

    assert isinstance(_stop_event(stop("invoice_paid")), PaidElsewhere)
    assert _stop_event(stop("invoice_voided")) == InvoiceVoided("pre-flight: seen")
    assert _stop_event(stop("subscription_canceled")) == SubscriptionCanceled("pre-flight: seen")
    assert _stop_event(stop("subscription_ended")) == SubscriptionCanceled("pre-flight: seen")
    assert _stop_event(stop("customer_deleted")) == CustomerDeleted("pre-flight: seen")
    assert _stop_event(BillingState()) is None


def _adapter(
    kind: Processor, handler: Callable[[httpx.Request], httpx.Response]
) -> ProcessorAdapter:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    credentials = {"api_key": "k", "public_key": "p", "private_key": "s", "hmac_key_hex": "00"}
    return adapter_for(ConnectionInfo(kind, "http://processor.test", credentials, "acct"), client)


async def test_stripe_unknown_customer_tells_nothing_but_a_deleted_one_stops() -> None:
    answers = {"cus_gone": (200, {"id": "cus_gone", "object": "customer", "deleted": True})}

    def handle(request: httpx.Request) -> httpx.Response:
        status, body = answers.get(request.url.path.rsplit("/", 1)[-1], (404, {"error": {}}))
        return httpx.Response(status, json=body)

    adapter = _adapter(Processor.STRIPE, handle)
    unknown = await adapter.billing_state(BillingRefs("cus_unknown"))
    assert (unknown.stop, unknown.checked) == (None, frozenset())
    gone = await adapter.billing_state(BillingRefs("cus_gone"))
    assert gone.stop == "customer_deleted"


async def test_adyen_reads_two_digit_years_and_skips_other_methods() -> None:
    stored = [
        {"id": "A1", "type": "scheme", "lastFour": "1111", "expiryMonth": "03", "expiryYear": "30"},
        {"id": "B1", "type": "sepadirectdebit", "iban": "NL00"},
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.params["shopperReference"] == "shopper_1"
        assert request.url.params["merchantAccount"] == "acct"
        return httpx.Response(200, json={"storedPaymentMethods": stored})

    state = await _adapter(Processor.ADYEN, handle).billing_state(BillingRefs("shopper_1"))
    assert state.methods == (StoredMethod("A1", None, "1111", 3, 2030),)
    assert state.method is None


async def test_checkout_deleted_customer_is_a_404_and_its_default_instrument_is_named() -> None:
    customer = {
        "id": "cus_1",
        "default": "src_2",
        "instruments": [
            {"id": "src_1", "type": "card", "last4": "1111", "expiry_month": 1,
             "expiry_year": 2030},
            {"id": "src_2", "type": "card", "last4": "2222", "expiry_month": 2,
             "expiry_year": 2031, "fingerprint": "fp2", "scheme": "Visa"},
        ],
    }  # fmt: skip

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("cus_1"):
            return httpx.Response(200, content=json.dumps(customer))
        return httpx.Response(404)

    adapter = _adapter(Processor.CHECKOUT, handle)
    found = await adapter.billing_state(BillingRefs("cus_1"))
    assert found.method == StoredMethod("src_2", "Visa", "2222", 2, 2031, "fp2")
    gone = await adapter.billing_state(BillingRefs("cus_2"))
    assert gone.stop == "customer_deleted"
