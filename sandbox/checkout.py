"""Checkout.com's payments API: skip-paged list (oldest first), fetch by id, request a payment."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import codes
from sandbox.common import (
    corrupt_json,
    corrupt_page,
    fingerprint,
    iso,
    json_response,
    page_effects,
    parse_time,
    remember,
    replay,
    request_fault,
    sandbox_of,
)
from sandbox.state import Account, Charge, RetryRefused

_CARD_TYPES = {"credit": "CREDIT", "debit": "DEBIT", "prepaid": "PREPAID"}


def _request_id(request: Request) -> str:
    return "req_" + codes.token("0123456789abcdefghijklmnopqrstuvwxyz", 26, id(request))


def _error(request: Request, status: int, error_type: str, *error_codes: str) -> Response:
    return json_response(
        {
            "request_id": _request_id(request),
            "error_type": error_type,
            "error_codes": list(error_codes),
        },
        status,
    )


def _fault_response(request: Request, kind: str) -> Response:
    if kind == "rate_limit":
        return Response(b"", 429, {"Retry-After": "1"})
    return Response(b"", 502)


def _account(request: Request) -> Account | Response:
    header = request.headers.get("authorization", "").strip()
    key = header[7:].strip() if header.lower().startswith("bearer ") else header
    account = sandbox_of(request).by_key("checkout", key) if key else None
    if account is None:
        return Response(b"", 401, {"WWW-Authenticate": "Bearer"})
    return account


def render(charge: Charge, now: datetime) -> dict[str, Any]:
    """A charge as a Checkout.com payment; card spellings vary as between its API and webhooks."""
    card = charge.card
    style = charge.style
    paid = charge.status == "succeeded"
    schemes = codes.CHECKOUT_SCHEMES[card.brand]
    source: dict[str, Any] = {
        "id": "src_" + codes.token("0123456789abcdefghijklmnopqrstuvwxyz", 26, card.fingerprint),
        "type": "card",
        "scheme": schemes[style % 2],
        "expiry_month": card.exp_month,
        "expiry_year": card.exp_year,
        "bin": card.bin,
        "fingerprint": card.fingerprint,
    }
    source["last_4" if (style >> 4) % 2 else "last4"] = card.last4
    if card.funding in _CARD_TYPES:
        source["card_type"] = _CARD_TYPES[card.funding]
    if card.country:
        source["issuer_country"] = card.country
    address = charge.address
    if address is not None:
        source["billing_address"] = {"country": address[0], "state": address[1]}
    if paid:
        code, summary = "10000", "Approved"
        status = "Captured" if charge.created < now - timedelta(hours=1) else "Authorized"
    else:
        root_id = charge.root.id if charge.root else charge.id
        code, summary = codes.pick(
            codes.CHECKOUT_CODES[charge.category or "other"], "checkout", root_id
        )
        status = "Declined"
    body: dict[str, Any] = {
        "id": charge.id,
        "requested_on": iso(charge.created),
        "amount": charge.amount_minor,
        "currency": charge.currency,
        # The customer paying by themselves is a regular (customer-initiated) payment; every
        # other charge of a subscription is a recurring one.
        "payment_type": "Regular" if charge.paid_by == "customer" else "Recurring",
        "reference": charge.reference,
        "status": status,
        "approved": paid,
        "response_code": code,
        "response_summary": summary,
        "customer": {"id": charge.customer},
        "source": source,
    }
    if charge.paid_by == "customer":
        body["3ds"] = {
            "downgraded": False,
            "enrolled": "Y",
            "authentication_response": "Y",
            "version": "2.2.0",
        }
    if charge.metadata:
        body["metadata"] = dict(charge.metadata)
    return body


async def list_payments(request: Request) -> Response:
    """GET /payments: oldest first, stable order, limit/skip paging from an optional `from`."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(request, fault)
    params = request.query_params
    try:
        limit = int(params.get("limit", "10"))
        skip = int(params.get("skip", "0"))
        since = parse_time(params["from"]) if params.get("from") else None
        until = parse_time(params["to"]) if params.get("to") else None
    except ValueError:
        return _error(request, 422, "request_invalid", "paging_invalid")
    if not 1 <= limit <= 100:
        return _error(request, 422, "request_invalid", "limit_invalid")
    if skip < 0:
        return _error(request, 422, "request_invalid", "skip_invalid")
    now = sandbox_of(request).clock.now()
    hi = account.visible(now)
    lo = account.first_at_or_after(since.timestamp()) if since else 0
    if until is not None:
        hi = min(hi, account.first_at_or_after(until.timestamp() + 1e-6))
    reference = params.get("reference")
    if reference:
        rows = [c for c in account.items[lo:hi] if c.reference == reference]
        total = len(rows)
        page = rows[skip : skip + limit]
        repeat = rows[skip - 1] if 0 < skip <= total else None
    else:
        # Index arithmetic, not a copy of the window: pages of big histories stay cheap.
        total = max(hi - lo, 0)
        page = account.items[lo + skip : min(hi, lo + skip + limit)]
        repeat = account.items[lo + skip - 1] if 0 < skip <= total else None
    page = page_effects(account, page, repeat)
    data = corrupt_page(account, [render(c, now) for c in page], corrupt_json)
    return json_response({"limit": limit, "skip": skip, "total_count": total, "data": data})


async def get_payment(request: Request) -> Response:
    """GET /payments/{id}."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(request, fault)
    now = sandbox_of(request).clock.now()
    charge = account.get(request.path_params["payment_id"], now)
    if charge is None:
        return Response(b"", 404)
    return json_response(render(charge, now))


async def request_payment(request: Request) -> Response:
    """POST /payments: a merchant-initiated retry of an earlier payment, by Cko-Idempotency-Key."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account, write=True)
    if fault:
        return _fault_response(request, fault)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(request, 422, "request_invalid", "payload_invalid")
    if not isinstance(body, dict):
        return _error(request, 422, "request_invalid", "payload_invalid")
    key = request.headers.get("cko-idempotency-key")
    print_ = fingerprint(body)
    if key is not None and key in account.idempotency:
        stored = account.idempotency[key]
        if stored.fingerprint != print_:
            return _error(request, 409, "request_invalid", "idempotency_key_in_use")
        account.replays[key] = account.replays.get(key, 0) + 1
        return replay(stored)
    metadata = body.get("metadata")
    retry_of = metadata.get("retry_of") if isinstance(metadata, dict) else None
    amount = body.get("amount")
    currency = body.get("currency")
    customer = body.get("customer")
    if not isinstance(amount, int) or isinstance(amount, bool):
        return _error(request, 422, "request_invalid", "amount_invalid")
    if not isinstance(currency, str):
        return _error(request, 422, "request_invalid", "currency_required")
    if not isinstance(retry_of, str) or not retry_of:
        return _error(request, 422, "request_invalid", "metadata_retry_of_required")
    reference = body.get("reference")
    source = body.get("source")
    instrument = source.get("id") if isinstance(source, dict) else None
    try:
        charge = account.retry(
            sandbox_of(request).clock.now(),
            retry_of=retry_of,
            idempotency_key=key,
            amount_minor=amount,
            currency=currency,
            customer=customer.get("id") if isinstance(customer, dict) else None,
            reference=reference if isinstance(reference, str) else None,
            payment_method=instrument if isinstance(instrument, str) else None,
        )
    except RetryRefused as exc:
        code = {
            "retry_of": "payment_not_found",
            "customer": "customer_invalid",
            "payment_method": "source_invalid",
        }.get(exc.param or "", f"{exc.param or 'payment'}_invalid")
        return _error(request, 422, "request_invalid", code)
    now = sandbox_of(request).clock.now()
    payment = render(charge, now)
    payment["processed_on"] = payment["requested_on"]
    payment["action_id"] = "act_" + charge.id[4:]
    return remember(account, key, print_, json_response(payment, 201))


routes = [
    Route("/payments", list_payments, methods=["GET"]),
    Route("/payments", request_payment, methods=["POST"]),
    Route("/payments/{payment_id}", get_payment, methods=["GET"]),
]
