"""Stripe's charges API: list, fetch and create (retry) charges in Stripe's wire format."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import codes
from sandbox.common import (
    corrupt_json,
    corrupt_page,
    fingerprint,
    json_response,
    page_effects,
    remember,
    replay,
    request_fault,
    sandbox_of,
)
from sandbox.state import Account, Charge, RetryRefused

MAX_IDEMPOTENCY_KEY = 255


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    return json_response({"error": {"message": message, "type": type_, **extra}}, status, headers)


def _fault_response(kind: str) -> Response:
    if kind == "rate_limit":
        return _error(
            429,
            "Too many requests hit the API too quickly. We recommend an exponential backoff.",
            code="rate_limit",
            headers={
                "Stripe-Rate-Limited-Reason": "global-rate",
                "Stripe-Should-Retry": "true",
                "Retry-After": "1",
            },
        )
    return _error(
        500,
        "An unknown error occurred",
        type_="api_error",
        headers={"Stripe-Should-Retry": "true"},
    )


def _account(request: Request) -> Account | Response:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    account = None
    if scheme.lower() == "bearer" and key:
        account = sandbox_of(request).by_key("stripe", key.strip())
    if account is None:
        shown = f"{key[:7]}****{key[-4:]}" if len(key) > 11 else "****"
        return _error(401, f"Invalid API Key provided: {shown}")
    return account


def _reason(charge: Charge) -> tuple[str, str]:
    category = charge.category or "other"
    return codes.pick(
        codes.STRIPE_REASONS[category], "stripe", charge.root.id if charge.root else charge.id
    )


def _outcome(charge: Charge, with_advice: bool) -> dict[str, Any]:
    if charge.status == "succeeded":
        out: dict[str, Any] = {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": charge.style % 60,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
        if with_advice:
            out.update(advice_code=None, network_advice_code=None, network_decline_code=None)
        return out
    category = charge.category or "other"
    reason, _ = _reason(charge)
    if category == "processor_blocked":
        out = {
            "network_status": "not_sent_to_network",
            "reason": reason,
            "risk_level": "normal",
            "seller_message": (
                "Stripe blocked this payment because the card was previously declined."
            ),
            "type": "blocked",
        }
    else:
        vague = category == "do_not_honor" and not with_advice and (charge.style >> 24) % 3 == 0
        out = {
            "network_status": "declined_by_network",
            # Older charges often carry no reason at all: the bank gave no further details.
            "reason": None if vague else reason,
            "risk_level": "normal",
            "risk_score": charge.style % 60,
            "seller_message": (
                "The bank did not return any further details with this decline."
                if vague
                else f"The bank returned the decline code `{reason}`."
            ),
            "type": "issuer_declined",
        }
    if with_advice:
        out["advice_code"] = codes.STRIPE_ADVICE.get(category, codes.STRIPE_HARD_ADVICE)
        out["network_decline_code"] = (
            None if category == "processor_blocked" else charge.network_code
        )
        out["network_advice_code"] = charge.advice_code
    return out


# What the hosted invoice page's 3-D Secure step leaves on the charge it makes.
_HOSTED_3DS = {
    "authentication_flow": "challenge",
    "result": "authenticated",
    "result_reason": None,
    "version": "2.2.0",
}


def _billing_details(charge: Charge) -> dict[str, Any]:
    """`billing_details` as Stripe renders it: every key present, null when not collected."""
    address = charge.address
    country, state = address if address is not None else (None, None)
    return {
        "address": {
            "city": None,
            "country": country,
            "line1": None,
            "line2": None,
            "postal_code": None,
            "state": state,
        },
        "email": None,
        "name": None,
        "phone": None,
    }


def _legacy_source(charge: Charge) -> dict[str, Any]:
    card = charge.card
    address = charge.address
    return {
        "id": codes.stripe_id("card_", charge.customer, card.fingerprint),
        "object": "card",
        "address_country": address[0] if address else None,
        "address_state": address[1] if address else None,
        "address_zip_check": "pass",
        "brand": codes.STRIPE_LEGACY_BRANDS[card.brand],
        "country": card.country,
        "customer": charge.customer,
        "cvc_check": None,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "fingerprint": card.fingerprint,
        "funding": card.funding,
        "last4": card.last4,
    }


def _card_details(charge: Charge) -> dict[str, Any]:
    card = charge.card
    details: dict[str, Any] = {
        "brand": codes.STRIPE_BRANDS[card.brand],
        "country": card.country,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "fingerprint": card.fingerprint,
        "funding": card.funding,
        "last4": card.last4,
        "network": codes.STRIPE_BRANDS[card.brand],
    }
    if charge.paid_by == "customer":
        details["three_d_secure"] = dict(_HOSTED_3DS)
    return details


def render(charge: Charge) -> dict[str, Any]:
    """A charge as Stripe renders it; the shape varies with the API version of the charge.

    A charge paid by Stripe Billing's own retry, or by the customer on the hosted invoice page,
    names its invoice and the invoice's PaymentIntent; the customer's carries the page's 3-D
    Secure result and the billing address the page collected."""
    style = charge.style
    payer = charge.paid_by
    legacy = style % 10 < 3 and payer is None
    with_advice = not legacy and (style >> 8) % 10 < 6
    paid = charge.status == "succeeded"
    category = charge.category or "other"
    _, failure_code = _reason(charge) if not paid else (None, None)
    body: dict[str, Any] = {
        "id": charge.id,
        "object": "charge",
        "amount": charge.amount_minor,
        "amount_captured": charge.amount_minor if paid else 0,
        "amount_refunded": 0,
        "balance_transaction": codes.stripe_id("txn_", charge.id) if paid else None,
        "billing_details": _billing_details(charge),
        "captured": paid,
        "created": int(charge.created.timestamp()),
        "currency": charge.currency.lower(),
        "customer": charge.customer,
        "description": "Subscription update",
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None if paid else failure_code,
        "failure_message": None
        if paid
        else codes.STRIPE_MESSAGES.get(category, codes.STRIPE_DEFAULT_MESSAGE),
        "livemode": False,
        "metadata": dict(charge.metadata),
        "outcome": _outcome(charge, with_advice),
        "paid": paid,
        "refunded": False,
        "status": charge.status,
    }
    if legacy or payer is not None or (style >> 16) % 2 == 0:
        # Charges rendered by API versions before 2025 still name their invoice.
        body["invoice"] = codes.stripe_id("in_", charge.reference)
    if legacy:
        body["source"] = _legacy_source(charge)
        return body
    # A retry of an invoice confirms the invoice's own PaymentIntent again.
    intent_of = charge.root.id if payer is not None and charge.root else charge.id
    body["payment_intent"] = codes.stripe_id("pi_", intent_of)
    body["payment_method"] = codes.stripe_id("pm_", charge.customer, charge.card.fingerprint)
    body["payment_method_details"] = {"card": _card_details(charge), "type": "card"}
    return body


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    return int(raw)


async def list_charges(request: Request) -> Response:
    """GET /v1/charges: newest first; starting_after / ending_before cursors; created filters."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(fault)
    try:
        limit = _int_param(request, "limit")
        bounds = {op: _int_param(request, f"created[{op}]") for op in ("gte", "gt", "lte", "lt")}
        exact = _int_param(request, "created")
    except ValueError:
        return _error(400, "Invalid integer parameter", code="parameter_invalid_integer")
    if limit is None:
        limit = 10
    if not 1 <= limit <= 100:
        return _error(
            400,
            "Invalid limit: must be between 1 and 100",
            code="parameter_invalid_integer",
            param="limit",
        )
    now = sandbox_of(request).clock.now()
    hi = account.visible(now)
    lo = 0
    if exact is not None:
        bounds["gte"], bounds["lte"] = exact, exact
    if bounds["gte"] is not None:
        lo = max(lo, account.first_at_or_after(bounds["gte"]))
    if bounds["gt"] is not None:
        lo = max(lo, account.first_at_or_after(bounds["gt"] + 1))
    if bounds["lte"] is not None:
        hi = min(hi, account.first_at_or_after(bounds["lte"] + 1))
    if bounds["lt"] is not None:
        hi = min(hi, account.first_at_or_after(bounds["lt"]))
    starting_after = request.query_params.get("starting_after")
    ending_before = request.query_params.get("ending_before")
    if starting_after and ending_before:
        return _error(400, "You may only specify one of starting_after and ending_before.")
    name = "starting_after" if starting_after else "ending_before"
    cursor: Charge | None = None
    if starting_after or ending_before:
        cursor = account.get(starting_after or ending_before or "", now)
        if cursor is None:
            return _error(
                400,
                f"No such charge: '{starting_after or ending_before}'",
                code="resource_missing",
                param=name,
            )
    if cursor is not None and ending_before:
        # The page just newer than the cursor, still newest first; has_more means newer ones.
        lo = max(lo, account.index_of(cursor) + 1)
        stop = min(hi, lo + limit)
        page = [account.items[i] for i in range(stop - 1, lo - 1, -1)]
        has_more = stop < hi
        repeat = cursor if account.index_of(cursor) < hi else None
    else:
        if cursor is not None:
            hi = min(hi, account.index_of(cursor))
        stop = max(lo, hi - limit)
        page = [account.items[i] for i in range(hi - 1, stop - 1, -1)]
        has_more = stop > lo
        repeat = cursor if cursor is not None and lo <= account.index_of(cursor) else None
    page = page_effects(account, page, repeat)
    data = corrupt_page(account, [render(c) for c in page], corrupt_json)
    return json_response(
        {"object": "list", "url": "/v1/charges", "has_more": has_more, "data": data}
    )


async def get_charge(request: Request) -> Response:
    """GET /v1/charges/{id}."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(fault)
    charge_id = request.path_params["charge_id"]
    charge = account.get(charge_id, sandbox_of(request).clock.now())
    if charge is None:
        return _error(404, f"No such charge: '{charge_id}'", code="resource_missing", param="id")
    return json_response(render(charge))


def decline_error(charge: Charge) -> dict[str, Any]:
    """Stripe's card_error envelope for a declined charge."""
    rendered = render(charge)
    outcome = rendered["outcome"]
    error: dict[str, Any] = {
        "charge": charge.id,
        "code": rendered["failure_code"],
        "decline_code": _reason(charge)[0],
        "doc_url": "https://stripe.com/docs/error-codes/card-declined",
        "message": rendered["failure_message"],
        "type": "card_error",
    }
    for name in ("advice_code", "network_decline_code", "network_advice_code"):
        if outcome.get(name) is not None:
            error[name] = outcome[name]
    return {"error": error}


async def create_charge(request: Request) -> Response:
    """POST /v1/charges (form-encoded): a retry of an earlier charge, honouring Idempotency-Key."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account, write=True)
    if fault:
        return _fault_response(fault)
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        return _error(400, "Idempotency-Key must be 1 to 255 characters", code="parameter_invalid")
    params = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    print_ = fingerprint(params)
    if key is not None and key in account.idempotency:
        stored = account.idempotency[key]
        if stored.fingerprint != print_:
            return _error(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type_="idempotency_error",
            )
        account.replays[key] = account.replays.get(key, 0) + 1
        return replay(stored)
    form = dict(params)
    for name in ("amount", "currency"):
        if not form.get(name):
            return _error(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
    retry_of = form.get("metadata[retry_of]")
    if not retry_of:
        return _error(
            400,
            "Missing required param: metadata[retry_of]; the sandbox only retries charges.",
            code="parameter_missing",
            param="metadata[retry_of]",
        )
    try:
        amount = int(form["amount"])
    except ValueError:
        return _error(
            400, "Invalid integer: amount", code="parameter_invalid_integer", param="amount"
        )
    now: datetime = sandbox_of(request).clock.now()
    try:
        charge = account.retry(
            now,
            retry_of=retry_of,
            idempotency_key=key,
            amount_minor=amount,
            currency=form["currency"],
            customer=form.get("customer"),
            reference=None,
            payment_method=form.get("source") or None,
        )
    except RetryRefused as exc:
        missing = exc.param in ("retry_of", "payment_method")
        param = {"retry_of": "metadata[retry_of]", "payment_method": "source"}
        return _error(
            400,
            exc.message,
            code="resource_missing" if missing else "parameter_invalid",
            param=param.get(exc.param or "", exc.param),
        )
    if charge.status == "succeeded":
        response = json_response(render(charge))
    else:
        response = json_response(decline_error(charge), 402)
    return remember(account, key, print_, response)


routes = [
    Route("/v1/charges", list_charges, methods=["GET"]),
    Route("/v1/charges", create_charge, methods=["POST"]),
    Route("/v1/charges/{charge_id}", get_charge, methods=["GET"]),
]
