"""Each processor's billing endpoints, in its own wire format: Stripe invoices, subscriptions
(read and cancel) and customers; Braintree subscriptions (read and cancel) and customers in
XML; Adyen stored payment methods; Checkout.com customers and their instruments."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ml.simulator.stream import StreamCard
from sandbox import adyen, braintree, checkout, codes, stripe
from sandbox.billing import StoredCard, Subscription
from sandbox.common import fingerprint, json_response, remember, replay, request_fault
from sandbox.common import sandbox_of as _sandbox
from sandbox.state import Account

# --- Stripe ------------------------------------------------------------------------------


def _stripe_card(card: StreamCard) -> dict[str, Any]:
    return {
        "brand": codes.STRIPE_BRANDS[card.brand],
        "country": card.country,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "fingerprint": card.fingerprint,
        "funding": card.funding,
        "last4": card.last4,
    }


def stripe_payment_method(stored: StoredCard, customer: str) -> dict[str, Any]:
    """A card PaymentMethod."""
    return {
        "id": stored.id,
        "object": "payment_method",
        "type": "card",
        "customer": customer,
        "card": _stripe_card(stored.card),
        "livemode": False,
    }


def _ts(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp())


def stripe_subscription(account: Account, sub: Subscription) -> dict[str, Any]:
    """A Subscription; an open one is past_due while its customer's latest charge failed."""
    latest = account.billing.latest.get(sub.customer)
    if sub.open:
        status = "past_due" if latest is not None and latest.status == "failed" else "active"
    else:
        status = "canceled"
    return {
        "id": sub.id,
        "object": "subscription",
        "customer": sub.customer,
        "status": status,
        "cancel_at": _ts(sub.cancel_at),
        "canceled_at": _ts(sub.canceled_at),
        "ended_at": _ts(sub.ended_at),
        # Invoices fall back to the customer's invoice_settings.default_payment_method.
        "default_payment_method": None,
        "livemode": False,
    }


def stripe_invoice(account: Account, reference: str, now: datetime) -> dict[str, Any]:
    """An Invoice; its subscription is named the way its API version names it."""
    charges = account.billing.invoice_charges(reference, now)
    root = charges[0].root or charges[0]
    status = account.billing.invoice_status(reference, now)
    sub = account.billing.subscription_of(root.customer)
    body: dict[str, Any] = {
        "id": account.billing.invoice_id(reference),
        "object": "invoice",
        "customer": root.customer,
        "number": reference,
        "currency": root.currency.lower(),
        "amount_due": root.amount_minor,
        "amount_paid": root.amount_minor if status == "paid" else 0,
        "amount_remaining": root.amount_minor if status == "open" else 0,
        "attempt_count": len(charges),
        "created": int(root.created.timestamp()),
        "status": status,
        "livemode": False,
    }
    if (root.style >> 20) % 2:
        # API versions from 2025-03-31 name the subscription under `parent`.
        body["parent"] = {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub.id},
        }
    else:
        body["subscription"] = sub.id
    return body


def _stripe_missing(kind: str, ident: str) -> Response:
    return stripe._error(404, f"No such {kind}: '{ident}'", code="resource_missing", param="id")


async def _stripe_account(request: Request, *, write: bool = False) -> Account | Response:
    account = stripe._account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account, write=write)
    return stripe._fault_response(fault) if fault else account


async def stripe_get_invoice(request: Request) -> Response:
    """GET /v1/invoices/{id}."""
    account = await _stripe_account(request)
    if isinstance(account, Response):
        return account
    invoice_id = request.path_params["invoice_id"]
    now = _sandbox(request).clock.now()
    account.visible(now)
    reference = account.billing.invoice(invoice_id)
    if reference is None or not account.billing.invoice_charges(reference, now):
        return _stripe_missing("invoice", invoice_id)
    return json_response(stripe_invoice(account, reference, now))


async def stripe_get_subscription(request: Request) -> Response:
    """GET /v1/subscriptions/{id} (`expand[]=default_payment_method` accepted: it is null)."""
    account = await _stripe_account(request)
    if isinstance(account, Response):
        return account
    sub = account.billing.subscription(request.path_params["subscription_id"])
    if sub is None:
        return _stripe_missing("subscription", request.path_params["subscription_id"])
    return json_response(stripe_subscription(account, sub))


async def stripe_cancel_subscription(request: Request) -> Response:
    """DELETE /v1/subscriptions/{id}: cancel now; idempotent by Idempotency-Key."""
    account = await _stripe_account(request, write=True)
    if isinstance(account, Response):
        return account
    sub_id = request.path_params["subscription_id"]
    key = request.headers.get("idempotency-key")
    print_ = fingerprint([("DELETE", sub_id)])
    if key is not None and key in account.idempotency:
        stored = account.idempotency[key]
        if stored.fingerprint != print_:
            return stripe._error(
                400,
                f"Keys for idempotent requests can only be reused: '{key}'",
                type_="idempotency_error",
            )
        account.replays[key] = account.replays.get(key, 0) + 1
        return replay(stored)
    sub = account.billing.subscription(sub_id)
    if sub is None:
        return _stripe_missing("subscription", sub_id)
    sub.cancel_requests += 1
    if not sub.open:
        return stripe._error(400, f"The subscription {sub_id} is already canceled.")
    account.billing.end_subscription(sub.customer, _sandbox(request).clock.now(), scheduled=False)
    return remember(account, key, print_, json_response(stripe_subscription(account, sub)))


async def stripe_get_customer(request: Request) -> Response:
    """GET /v1/customers/{id}; `expand[]=invoice_settings.default_payment_method` expands it.
    A deleted customer is `{"id", "object": "customer", "deleted": true}`."""
    account = await _stripe_account(request)
    if isinstance(account, Response):
        return account
    customer = request.path_params["customer_id"]
    account.visible(_sandbox(request).clock.now())
    if customer in account.billing.deleted:
        return json_response({"id": customer, "object": "customer", "deleted": True})
    if not account.billing.exists(customer):
        return _stripe_missing("customer", customer)
    default = account.billing.default(customer)
    expand = request.query_params.getlist("expand[]")
    method: Any = None
    if default is not None:
        expanded = "invoice_settings.default_payment_method" in expand
        method = stripe_payment_method(default, customer) if expanded else default.id
    return json_response(
        {
            "id": customer,
            "object": "customer",
            "default_source": None,
            "invoice_settings": {"default_payment_method": method},
            "livemode": False,
        }
    )


# --- Braintree -----------------------------------------------------------------------------

_BRAINTREE_STATUS = {"active": "Active", "canceled": "Canceled", "ended": "Expired"}


def braintree_subscription(account: Account, sub: Subscription) -> Element:
    """A <subscription>; it charges the customer's default card."""
    root = Element("subscription")
    latest = account.billing.latest.get(sub.customer)
    status = _BRAINTREE_STATUS[sub.status]
    if sub.open and latest is not None and latest.status == "failed":
        status = "Past Due"
    braintree._text(root, "id", sub.id)
    braintree._text(root, "status", status)
    braintree._text(root, "plan-id", "monthly")
    default = account.billing.default(sub.customer)
    braintree._text(root, "payment-method-token", default.id if default else None)
    braintree._text(root, "merchant-account-id", account.account_id)
    if latest is not None:
        price = codes.major_units(latest.amount_minor, latest.currency)
        braintree._text(root, "price", price)
        braintree._text(root, "balance", price if status == "Past Due" else "0.00")
    braintree._text(root, "never-expires", "false" if sub.cancel_at else "true", type="boolean")
    ended = sub.ended_at.date().isoformat() if sub.ended_at else None
    braintree._text(root, "billing-period-end-date", ended, type="date")
    return root


def braintree_customer(account: Account, customer: str) -> Element:
    """A <customer> with its <credit-cards>; the newest is the default."""
    root = Element("customer")
    braintree._text(root, "id", customer)
    cards = SubElement(root, "credit-cards", type="array")
    stored = account.billing.stored(customer)
    for i, item in enumerate(stored):
        cc = SubElement(cards, "credit-card")
        card = item.card
        braintree._text(cc, "token", item.id)
        braintree._text(cc, "default", "true" if i == len(stored) - 1 else "false", "boolean")
        braintree._text(cc, "customer-id", customer)
        braintree._text(cc, "bin", card.bin)
        braintree._text(cc, "last-4", card.last4)
        braintree._text(cc, "card-type", codes.BRAINTREE_BRANDS[card.brand])
        braintree._text(cc, "expiration-month", f"{card.exp_month:02d}")
        braintree._text(cc, "expiration-year", str(card.exp_year))
        braintree._text(cc, "unique-number-identifier", card.fingerprint)
    return root


async def _braintree_account(request: Request, *, write: bool = False) -> Account | Response:
    account = braintree._account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account, write=write)
    return braintree._fault_response(fault) if fault else account


async def braintree_get_subscription(request: Request) -> Response:
    """GET merchants/{id}/subscriptions/{id}; 404 empty for an unknown id."""
    account = await _braintree_account(request)
    if isinstance(account, Response):
        return account
    sub = account.billing.subscription(request.path_params["subscription_id"])
    if sub is None:
        return Response(b"", 404, media_type=braintree.XML)
    return braintree._xml(braintree_subscription(account, sub))


async def braintree_cancel_subscription(request: Request) -> Response:
    """PUT merchants/{id}/subscriptions/{id}/cancel; 422 with error 81905 once canceled."""
    account = await _braintree_account(request, write=True)
    if isinstance(account, Response):
        return account
    sub = account.billing.subscription(request.path_params["subscription_id"])
    if sub is None:
        return Response(b"", 404, media_type=braintree.XML)
    sub.cancel_requests += 1
    if sub.status == "canceled":
        root = Element("api-error-response")
        errors = SubElement(SubElement(root, "errors"), "subscription")
        error = SubElement(SubElement(errors, "errors", type="array"), "error")
        braintree._text(error, "code", "81905")
        braintree._text(error, "attribute", "status")
        braintree._text(error, "message", "Subscription has already been canceled.")
        braintree._text(root, "message", "Subscription has already been canceled.")
        return braintree._xml(root, 422)
    if sub.status == "ended":
        return braintree._validation_error("status", "81906", "Subscription has expired.")
    account.billing.end_subscription(sub.customer, _sandbox(request).clock.now(), scheduled=False)
    return braintree._xml(braintree_subscription(account, sub))


async def braintree_get_customer(request: Request) -> Response:
    """GET merchants/{id}/customers/{id}; 404 empty once deleted (or never known)."""
    account = await _braintree_account(request)
    if isinstance(account, Response):
        return account
    customer = request.path_params["customer_id"]
    account.visible(_sandbox(request).clock.now())
    if not account.billing.exists(customer):
        return Response(b"", 404, media_type=braintree.XML)
    return braintree._xml(braintree_customer(account, customer))


# --- Adyen ---------------------------------------------------------------------------------


def adyen_stored_method(item: StoredCard) -> dict[str, Any]:
    card = item.card
    return {
        "id": item.id,
        "type": "scheme",
        "brand": codes.ADYEN_METHODS[card.brand],
        "lastFour": card.last4,
        "expiryMonth": f"{card.exp_month:02d}",
        "expiryYear": f"{card.exp_year % 100:02d}",
        "holderName": "Checkout Shopper",
        "supportedRecurringProcessingModels": ["Subscription", "UnscheduledCardOnFile"],
        "supportedShopperInteractions": ["ContAuth", "Ecommerce"],
    }


async def adyen_stored_methods(request: Request) -> Response:
    """GET /v71/storedPaymentMethods?merchantAccount=&shopperReference=."""
    account = _sandbox(request).by_key("adyen", request.headers.get("x-api-key", ""))
    if account is None:
        return adyen._error(401, "000", "HTTP Status Response - Unauthorized", "security")
    fault = await request_fault(account)
    if fault:
        return adyen._fault_response(fault)
    if request.query_params.get("merchantAccount") != account.account_id:
        return adyen._error(403, "901", "Invalid Merchant Account", "security")
    shopper = request.query_params.get("shopperReference")
    if not shopper:
        return adyen._error(422, "130", "shopperReference is required", "validation")
    account.visible(_sandbox(request).clock.now())
    stored = [adyen_stored_method(s) for s in account.billing.stored(shopper)]
    body: dict[str, Any] = {"merchantAccount": account.account_id, "shopperReference": shopper}
    if stored:
        body["storedPaymentMethods"] = stored
    return json_response(body)


# --- Checkout.com --------------------------------------------------------------------------


def checkout_instrument(item: StoredCard, customer: str) -> dict[str, Any]:
    card = item.card
    instrument: dict[str, Any] = {
        "id": item.id,
        "type": "card",
        "fingerprint": card.fingerprint,
        "expiry_month": card.exp_month,
        "expiry_year": card.exp_year,
        "scheme": codes.CHECKOUT_SCHEMES[card.brand][0],
        "last4": card.last4,
        "bin": card.bin,
        "customer": {"id": customer},
    }
    if card.country:
        instrument["issuer_country"] = card.country
    return instrument


async def checkout_get_customer(request: Request) -> Response:
    """GET /customers/{id}: the customer with its instruments and default; 404 once deleted."""
    account = checkout._account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return checkout._fault_response(request, fault)
    customer = request.path_params["customer_id"]
    account.visible(_sandbox(request).clock.now())
    if not account.billing.exists(customer):
        return Response(b"", 404)
    stored = account.billing.stored(customer)
    return json_response(
        {
            "id": customer,
            "email": f"{customer}@customers.example",
            "default": stored[-1].id if stored else None,
            "instruments": [checkout_instrument(s, customer) for s in stored],
        }
    )


def _braintree_routes() -> list[Route]:
    base = "/merchants/{merchant_id}"
    return [
        Route(f"{base}/subscriptions/{{subscription_id}}", braintree_get_subscription),
        Route(
            f"{base}/subscriptions/{{subscription_id}}/cancel",
            braintree_cancel_subscription,
            methods=["PUT"],
        ),
        Route(f"{base}/customers/{{customer_id}}", braintree_get_customer),
    ]


stripe_routes = [
    Route("/v1/invoices/{invoice_id}", stripe_get_invoice),
    Route("/v1/subscriptions/{subscription_id}", stripe_get_subscription, methods=["GET"]),
    Route("/v1/subscriptions/{subscription_id}", stripe_cancel_subscription, methods=["DELETE"]),
    Route("/v1/customers/{customer_id}", stripe_get_customer),
]
braintree_routes = _braintree_routes()
adyen_routes = [Route("/v71/storedPaymentMethods", adyen_stored_methods)]
checkout_routes = [Route("/customers/{customer_id}", checkout_get_customer)]

__all__ = ["adyen_routes", "braintree_routes", "checkout_routes", "stripe_routes"]
