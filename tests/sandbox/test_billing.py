"""The sandbox's billing objects in each processor's wire format: Stripe invoices,
subscriptions and customers; Braintree subscriptions and customers (XML); Adyen stored payment
methods; Checkout.com customers; the admin events that change them; retries on a stored card."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from defusedxml.ElementTree import fromstring
from starlette.applications import Starlette

from sandbox.app import create_app
from tests.support.sandbox import NOW


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox")


@pytest.fixture
def app() -> Starlette:
    return create_app(lambda: NOW)


@pytest.fixture
async def local(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app) as client:
        yield client


async def _account(local: httpx.AsyncClient, processor: str) -> dict[str, str]:
    body: dict[str, Any] = {
        "processor": processor,
        "account_id": f"{processor}_b",
        "merchant_seed": 9,
        "api_key": f"key_{processor}",
        "history_days": 30,
        "customers": 150,
    }
    response = await local.post("/_sandbox/accounts", json=body)
    assert response.status_code == 201, response.text
    return {"account_id": body["account_id"], "api_key": body["api_key"]}


async def _event(local: httpx.AsyncClient, kind: str, charge_id: str, account: str) -> Any:
    response = await local.post(
        f"/_sandbox/accounts/{account}/events", json={"kind": kind, "charge_id": charge_id}
    )
    assert response.status_code == 200, response.text
    return response.json()


# --- Stripe -------------------------------------------------------------------------------

STRIPE_AUTH = {"Authorization": "Bearer key_stripe"}


async def _stripe_failures(local: httpx.AsyncClient) -> list[dict[str, Any]]:
    page = await local.get("/stripe/v1/charges", params={"limit": 100}, headers=STRIPE_AUTH)
    return [c for c in page.json()["data"] if c["status"] == "failed" and c.get("invoice")]


def _subscription_of(invoice: dict[str, Any]) -> str:
    if "subscription" in invoice:
        return str(invoice["subscription"])
    return str(invoice["parent"]["subscription_details"]["subscription"])


async def test_stripe_invoice_opens_then_is_paid_or_void(local: httpx.AsyncClient) -> None:
    await _account(local, "stripe")
    first, second, *_ = await _stripe_failures(local)
    invoice = await local.get(f"/stripe/v1/invoices/{first['invoice']}", headers=STRIPE_AUTH)
    assert invoice.status_code == 200
    body = invoice.json()
    assert (body["object"], body["status"], body["customer"]) == (
        "invoice",
        "open",
        first["customer"],
    )
    assert body["amount_remaining"] == first["amount"]
    assert _subscription_of(body).startswith("sub_")
    await _event(local, "paid_elsewhere", first["id"], "stripe_b")
    paid = await local.get(f"/stripe/v1/invoices/{first['invoice']}", headers=STRIPE_AUTH)
    assert (paid.json()["status"], paid.json()["amount_paid"]) == ("paid", first["amount"])
    await _event(local, "invoice_voided", second["id"], "stripe_b")
    void = await local.get(f"/stripe/v1/invoices/{second['invoice']}", headers=STRIPE_AUTH)
    assert void.json()["status"] == "void"
    missing = await local.get("/stripe/v1/invoices/in_nothing", headers=STRIPE_AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"


async def test_stripe_subscription_cancel_end_and_delete(local: httpx.AsyncClient) -> None:
    await _account(local, "stripe")
    first, second, *_ = await _stripe_failures(local)
    invoice = await local.get(f"/stripe/v1/invoices/{first['invoice']}", headers=STRIPE_AUTH)
    sub_id = _subscription_of(invoice.json())
    sub = (await local.get(f"/stripe/v1/subscriptions/{sub_id}", headers=STRIPE_AUTH)).json()
    assert (sub["status"], sub["ended_at"]) in {("past_due", None), ("active", None)}
    headers = {**STRIPE_AUTH, "Idempotency-Key": "cancel-1"}
    canceled = await local.delete(f"/stripe/v1/subscriptions/{sub_id}", headers=headers)
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["canceled_at"] == canceled.json()["ended_at"] is not None
    replayed = await local.delete(f"/stripe/v1/subscriptions/{sub_id}", headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.content == canceled.content
    again = await local.delete(
        f"/stripe/v1/subscriptions/{sub_id}", headers={**STRIPE_AUTH, "Idempotency-Key": "c2"}
    )
    assert again.status_code == 400
    ended = await _event(local, "subscription_ended", second["id"], "stripe_b")
    sub2 = await local.get(f"/stripe/v1/subscriptions/{ended['subscription']}", headers=STRIPE_AUTH)
    assert sub2.json()["status"] == "canceled"
    assert sub2.json()["cancel_at"] == sub2.json()["ended_at"] is not None


async def test_stripe_customer_default_card_change_and_deletion(local: httpx.AsyncClient) -> None:
    await _account(local, "stripe")
    first, second, *_ = await _stripe_failures(local)
    customer = first["customer"]
    params = {"expand[]": "invoice_settings.default_payment_method"}
    before = await local.get(f"/stripe/v1/customers/{customer}", params=params, headers=STRIPE_AUTH)
    method = before.json()["invoice_settings"]["default_payment_method"]
    assert (method["object"], method["customer"]) == ("payment_method", customer)
    updated = await _event(local, "card_updated", first["id"], "stripe_b")
    after = await local.get(f"/stripe/v1/customers/{customer}", params=params, headers=STRIPE_AUTH)
    fresh = after.json()["invoice_settings"]["default_payment_method"]
    assert fresh["id"] == updated["payment_method"] != method["id"]
    assert (fresh["card"]["last4"], fresh["card"]["fingerprint"]) == (
        updated["last4"],
        updated["fingerprint"],
    )
    unexpanded = await local.get(f"/stripe/v1/customers/{customer}", headers=STRIPE_AUTH)
    assert unexpanded.json()["invoice_settings"]["default_payment_method"] == fresh["id"]
    # A retry naming the old card charges the old card; the default is the new one.
    form = {
        "amount": str(first["amount"]),
        "currency": first["currency"],
        "metadata[retry_of]": first["id"],
        "source": method["id"],
    }
    await local.post("/stripe/v1/charges", data=form, headers=STRIPE_AUTH)
    [charge] = (await local.get("/_sandbox/accounts/stripe_b/charges")).json()["data"]
    assert charge["card_fingerprint"] == method["card"]["fingerprint"]
    unknown = await local.post(
        "/stripe/v1/charges", data={**form, "source": "pm_nothing"}, headers=STRIPE_AUTH
    )
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "source")
    await _event(local, "customer_deleted", second["id"], "stripe_b")
    gone = await local.get(f"/stripe/v1/customers/{second['customer']}", headers=STRIPE_AUTH)
    assert gone.json() == {"id": second["customer"], "object": "customer", "deleted": True}
    refused = await local.post(
        "/stripe/v1/charges",
        data={"amount": "100", "currency": second["currency"], "metadata[retry_of]": second["id"]},
        headers=STRIPE_AUTH,
    )
    assert refused.status_code == 400
    missing = await local.get("/stripe/v1/customers/cus_nobody", headers=STRIPE_AUTH)
    assert missing.status_code == 404


# --- Braintree ------------------------------------------------------------------------------

BT_AUTH = httpx.BasicAuth("braintree_b", "key_braintree")
BT = "/braintree/merchants/braintree_b"


async def _braintree_failures(local: httpx.AsyncClient) -> list[Any]:
    found = await local.post(
        f"{BT}/transactions/advanced_search_ids", content=b"<search/>", auth=BT_AUTH
    )
    ids = [i.text for i in fromstring(found.content).iter("item")][:50]
    xml = "".join(f"<item>{i}</item>" for i in ids)
    page = await local.post(
        f"{BT}/transactions/advanced_search",
        content=f'<search><ids type="array">{xml}</ids></search>'.encode(),
        auth=BT_AUTH,
    )
    return [
        t
        for t in fromstring(page.content).iter("transaction")
        if t.findtext("status") == "processor_declined"
    ]


async def test_braintree_subscription_and_customer(local: httpx.AsyncClient) -> None:
    await _account(local, "braintree")
    first, second, *_ = await _braintree_failures(local)
    sub_id = first.findtext("subscription-id")
    customer = first.findtext("customer/id")
    sub = fromstring((await local.get(f"{BT}/subscriptions/{sub_id}", auth=BT_AUTH)).content)
    assert sub.findtext("status") in {"Active", "Past Due"}
    token = first.findtext("credit-card/token")
    assert sub.findtext("payment-method-token") == token
    found = await local.get(f"{BT}/customers/{customer}", auth=BT_AUTH)
    [card] = fromstring(found.content).findall("credit-cards/credit-card")
    assert (card.findtext("token"), card.findtext("default")) == (token, "true")
    updated = await _event(local, "card_updated", first.findtext("id") or "", "braintree_b")
    cards = fromstring((await local.get(f"{BT}/customers/{customer}", auth=BT_AUTH)).content)
    defaults = [c.findtext("default") for c in cards.findall("credit-cards/credit-card")]
    assert defaults == ["false", "true"]
    sub = fromstring((await local.get(f"{BT}/subscriptions/{sub_id}", auth=BT_AUTH)).content)
    assert sub.findtext("payment-method-token") == updated["payment_method"]
    canceled = await local.put(f"{BT}/subscriptions/{sub_id}/cancel", auth=BT_AUTH)
    assert fromstring(canceled.content).findtext("status") == "Canceled"
    again = await local.put(f"{BT}/subscriptions/{sub_id}/cancel", auth=BT_AUTH)
    assert again.status_code == 422
    assert [e.findtext("code") for e in fromstring(again.content).iter("error")] == ["81905"]
    ended = await _event(local, "subscription_ended", second.findtext("id") or "", "braintree_b")
    sub2 = await local.get(f"{BT}/subscriptions/{ended['subscription']}", auth=BT_AUTH)
    assert fromstring(sub2.content).findtext("status") == "Expired"
    await _event(local, "customer_deleted", second.findtext("id") or "", "braintree_b")
    gone = await local.get(f"{BT}/customers/{second.findtext('customer/id')}", auth=BT_AUTH)
    assert gone.status_code == 404
    assert (await local.get(f"{BT}/subscriptions/nothing", auth=BT_AUTH)).status_code == 404


# --- Adyen and Checkout.com ------------------------------------------------------------------


async def _any_charge(local: httpx.AsyncClient, account: str) -> str:
    history = (await local.get(f"/_sandbox/accounts/{account}/history")).json()
    return str(history["failed"][0])


async def test_adyen_stored_payment_methods_replace_the_updated_card(
    app: Starlette, local: httpx.AsyncClient
) -> None:
    await _account(local, "adyen")
    charge_id = await _any_charge(local, "adyen_b")
    # Adyen has no read API: the shopper of a charge is what its notifications name.
    shopper = app.state.sandbox.accounts["adyen_b"].customer_of(charge_id, NOW)
    headers = {"X-API-Key": "key_adyen"}
    params = {"merchantAccount": "adyen_b", "shopperReference": shopper}
    before = await local.get("/adyen/v71/storedPaymentMethods", params=params, headers=headers)
    [old] = before.json()["storedPaymentMethods"]
    assert old["type"] == "scheme"
    assert len(old["expiryYear"]) == 2
    updated = await _event(local, "card_updated", charge_id, "adyen_b")
    after = await local.get("/adyen/v71/storedPaymentMethods", params=params, headers=headers)
    [new] = after.json()["storedPaymentMethods"]
    assert (new["id"], new["lastFour"]) == (updated["payment_method"], updated["last4"])
    wrong = await local.get(
        "/adyen/v71/storedPaymentMethods",
        params={**params, "merchantAccount": "other"},
        headers=headers,
    )
    assert wrong.status_code == 403
    await _event(local, "customer_deleted", charge_id, "adyen_b")
    gone = await local.get("/adyen/v71/storedPaymentMethods", params=params, headers=headers)
    assert "storedPaymentMethods" not in gone.json()


async def test_checkout_customer_default_instrument_and_deletion(
    local: httpx.AsyncClient,
) -> None:
    await _account(local, "checkout")
    charge_id = await _any_charge(local, "checkout_b")
    headers = {"Authorization": "Bearer key_checkout"}
    payment = (await local.get(f"/checkout/payments/{charge_id}", headers=headers)).json()
    customer = payment["customer"]["id"]
    found = (await local.get(f"/checkout/customers/{customer}", headers=headers)).json()
    assert found["default"] == payment["source"]["id"]
    assert [i["fingerprint"] for i in found["instruments"]] == [payment["source"]["fingerprint"]]
    updated = await _event(local, "card_updated", charge_id, "checkout_b")
    after = (await local.get(f"/checkout/customers/{customer}", headers=headers)).json()
    assert after["default"] == updated["payment_method"]
    assert len(after["instruments"]) == 2
    await _event(local, "customer_deleted", charge_id, "checkout_b")
    assert (await local.get(f"/checkout/customers/{customer}", headers=headers)).status_code == 404


async def test_billing_events_need_a_known_kind_and_charge(local: httpx.AsyncClient) -> None:
    await _account(local, "stripe")
    unknown = await local.post(
        "/_sandbox/accounts/stripe_b/events", json={"kind": "refunded", "charge_id": "ch_x"}
    )
    assert unknown.status_code == 400
    assert "customer_deleted" in unknown.json()["error"]
    missing = await local.post(
        "/_sandbox/accounts/stripe_b/events",
        json={"kind": "subscription_canceled", "charge_id": "ch_x"},
    )
    assert missing.status_code == 404
