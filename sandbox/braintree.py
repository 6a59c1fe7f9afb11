"""Braintree's XML gateway: transaction id search, batched fetch, fetch by id and sale."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import ElementTree as SafeTree
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import codes
from sandbox.common import (
    corrupt_page,
    fingerprint,
    iso,
    page_effects,
    parse_time,
    remember,
    replay,
    request_fault,
    sandbox_of,
)
from sandbox.state import Account, Charge, RetryRefused

PAGE_SIZE = 50
# Braintree caps a search's result set; a client narrows the window (its `min`) and searches again.
MAX_SEARCH_IDS = 50_000
XML = "application/xml"
_FUNDING_FLAGS = {
    "credit": ("No", "No"),
    "debit": ("Yes", "No"),
    "prepaid": ("No", "Yes"),
    "unknown": ("Unknown", "Unknown"),
}


def _xml(root: Element, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="utf-8")
    return Response(body, status, headers, media_type=XML)


def _api_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    root = Element("api-error-response")
    SubElement(SubElement(root, "errors"), "errors", type="array")
    SubElement(root, "message").text = message
    return _xml(root, status, headers)


def _fault_response(kind: str) -> Response:
    if kind == "rate_limit":
        return Response("Too Many Requests", 429, {"Retry-After": "1"}, media_type="text/plain")
    return Response("Service Unavailable", 503, {"Retry-After": "1"}, media_type="text/plain")


def _account(request: Request) -> Account | Response:
    merchant = request.path_params["merchant_id"]
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    account = None
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        found = sandbox_of(request).accounts.get(user)
        if (
            found is not None
            and found.processor == "braintree"
            and found.api_key == password
            and user == merchant
        ):
            account = found
    if account is None:
        return Response("", 401, media_type=XML)
    return account


def _text(parent: Element, tag: str, value: str | None, type: str | None = None) -> None:
    if value is None:
        SubElement(parent, tag, nil="true")
    elif type is None:
        SubElement(parent, tag).text = value
    else:
        SubElement(parent, tag, type=type).text = value


def render(charge: Charge, account: Account, now: datetime) -> Element:
    """A charge as a Braintree <transaction> element."""
    card = charge.card
    paid = charge.status == "succeeded"
    category = charge.category or "other"
    tx = Element("transaction")
    _text(tx, "id", charge.id)
    if paid:
        settled = charge.created < now - timedelta(days=1)
        status = "settled" if settled else "submitted_for_settlement"
    else:
        status = "gateway_rejected" if category == "processor_blocked" else "processor_declined"
    _text(tx, "status", status)
    _text(tx, "type", "sale")
    _text(tx, "currency-iso-code", charge.currency)
    _text(tx, "amount", codes.major_units(charge.amount_minor, charge.currency))
    _text(tx, "merchant-account-id", account.account_id)
    _text(tx, "order-id", charge.reference)
    # The subscription's own charges (its billing cycles, and its retries of a past-due
    # balance) name it; a customer's checkout or an API sale (the portal's retry) does not.
    if charge.kind == "stream" or charge.paid_by == "billing_system":
        _text(tx, "subscription-id", account.billing.subscription_of(charge.customer).id)
    # Braintree renders whole seconds.
    created = iso(charge.created.replace(microsecond=0))
    _text(tx, "created-at", created, type="datetime")
    _text(tx, "updated-at", created, type="datetime")
    customer = SubElement(tx, "customer")
    _text(customer, "id", charge.customer)
    network_in_field = charge.style % 4 != 0
    if paid:
        _text(tx, "processor-response-code", "1000")
        _text(tx, "processor-response-text", "Approved")
        _text(tx, "processor-response-type", "approved")
        _text(tx, "additional-processor-response", None)
        _text(tx, "network-response-code", "00")
        _text(tx, "network-response-text", "Successful approval/completion")
        _text(tx, "gateway-rejection-reason", None)
    elif category == "processor_blocked":
        _text(tx, "processor-response-code", None)
        _text(tx, "processor-response-text", None)
        _text(tx, "processor-response-type", None)
        _text(tx, "gateway-rejection-reason", "excessive_retry")
    else:
        root_id = charge.root.id if charge.root else charge.id
        code, text = codes.pick(codes.BRAINTREE_CODES[category], "braintree", root_id)
        hard = category in codes.BRAINTREE_HARD_CATEGORIES
        network = charge.network_code or ""
        network_text = codes.NETWORK_TEXTS.get(network, "Declined")
        _text(tx, "processor-response-code", code)
        _text(tx, "processor-response-text", text)
        _text(tx, "processor-response-type", "hard_declined" if hard else "soft_declined")
        _text(tx, "additional-processor-response", f"{network} : {network_text.upper()}")
        # Older transactions carry the network code only inside additional-processor-response.
        if network_in_field:
            _text(tx, "network-response-code", network)
            _text(tx, "network-response-text", network_text)
        if charge.advice_code:
            _text(tx, "merchant-advice-code", charge.advice_code)
            _text(
                tx,
                "merchant-advice-code-text",
                codes.MASTERCARD_ADVICE_TEXTS.get(charge.advice_code, ""),
            )
        _text(tx, "gateway-rejection-reason", None)
    _initiator(tx, charge)
    _billing(tx, charge)
    cc = SubElement(tx, "credit-card")
    debit, prepaid = _FUNDING_FLAGS.get(card.funding, ("Unknown", "Unknown"))
    _text(cc, "token", codes.token("0123456789abcdefghijklmnopqrstuvwxyz", 7, charge.customer))
    _text(cc, "bin", card.bin)
    _text(cc, "last-4", card.last4)
    _text(cc, "card-type", codes.BRAINTREE_BRANDS[card.brand])
    _text(cc, "expiration-month", f"{card.exp_month:02d}")
    _text(cc, "expiration-year", str(card.exp_year))
    _text(cc, "customer-location", "US" if card.country == "US" else "International")
    _text(cc, "prepaid", prepaid)
    _text(cc, "debit", debit)
    _text(cc, "country-of-issuance", codes.ALPHA3.get(card.country or "", "Unknown"))
    _text(cc, "unique-number-identifier", card.fingerprint)
    return tx


def _initiator(tx: Element, charge: Charge) -> None:
    """What says who made the transaction: Recurring Billing's own retry (its subscription,
    which `render` names), Braintree's retry of a declined transaction, the customer's own
    checkout (not recurring, 3-D Secure), or the portal's retry (its custom field)."""
    payer = charge.paid_by
    root = charge.root
    if payer == "processor" and root is not None:
        _text(tx, "retried-transaction-id", root.id)
    _text(tx, "recurring", "false" if payer == "customer" else "true", type="boolean")
    if payer == "customer":
        secure = SubElement(tx, "three-d-secure-info")
        _text(secure, "enrolled", "Y")
        _text(secure, "liability-shifted", "true", type="boolean")
        _text(secure, "liability-shift-possible", "true", type="boolean")
        _text(secure, "status", "authenticate_successful")
    if charge.retry_of:
        fields = SubElement(tx, "custom-fields")
        _text(fields, "retry-of", charge.retry_of)


def _billing(tx: Element, charge: Charge) -> None:
    """The billing address, as Braintree renders a transaction's `billing` details."""
    address = charge.address
    if address is None:
        return
    country, region = address
    billing = SubElement(tx, "billing")
    _text(billing, "country-code-alpha2", country)
    _text(billing, "country-code-alpha3", codes.ALPHA3.get(country))
    _text(billing, "region", region)


def corrupt(tx: Element, kind: str) -> Element:
    """A broken copy of a <transaction>: a non-numeric amount and no currency, or cut short."""
    out = Element("transaction")
    children = list(tx)
    if kind == "truncated":
        out.extend(children[:2])
        return out
    for child in children:
        if child.tag == "currency-iso-code":
            continue
        if child.tag == "amount":
            bad = Element("amount")
            bad.text = "12,34"
            out.append(bad)
        else:
            out.append(child)
    return out


async def _parse(request: Request) -> Element | Response:
    try:
        root: Element = SafeTree.fromstring(await request.body())
    except Exception:  # any parse failure means the client sent malformed XML
        return _api_error(400, "Malformed XML")
    return root


async def search_ids(request: Request) -> Response:
    """POST advanced_search_ids: ids of transactions created in [min, max], oldest first."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(fault)
    search = await _parse(request)
    if isinstance(search, Response):
        return search
    now = sandbox_of(request).clock.now()
    hi = account.visible(now)
    lo = 0
    try:
        low = search.findtext("created-at/min")
        high = search.findtext("created-at/max")
        if low:
            lo = account.first_at_or_after(parse_time(low).timestamp())
        if high:
            hi = min(hi, account.first_at_or_after(parse_time(high).timestamp() + 1e-6))
    except ValueError:
        return _api_error(422, "Invalid created_at range")
    ids = [account.items[i].id for i in range(lo, min(hi, lo + MAX_SEARCH_IDS))]
    if account.faults.duplicates or account.faults.out_of_order:
        chunks = [ids[i : i + PAGE_SIZE] for i in range(0, len(ids), PAGE_SIZE)]
        ids = []
        for n, chunk in enumerate(chunks):
            # Each batch a client fetches repeats the last id of the batch before it.
            ids.extend(page_effects(account, chunk, chunks[n - 1][-1] if n else None))
    root = Element("search-results")
    _text(root, "page-size", str(PAGE_SIZE), type="integer")
    items = SubElement(root, "ids", type="array")
    for tx_id in ids:
        SubElement(items, "item").text = tx_id
    return _xml(root)


async def search(request: Request) -> Response:
    """POST advanced_search: fetch up to 50 transactions by id."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(fault)
    query = await _parse(request)
    if isinstance(query, Response):
        return query
    wanted = [item.text or "" for item in query.findall("ids/item")]
    if len(wanted) > PAGE_SIZE:
        return _api_error(400, f"Too many ids: at most {PAGE_SIZE} per request")
    now = sandbox_of(request).clock.now()
    found = [c for c in (account.get(i, now) for i in wanted) if c is not None]
    found = page_effects(account, found, found[0] if found else None)
    txs = corrupt_page(account, [render(c, account, now) for c in found], corrupt)
    root = Element("credit-card-transactions", type="collection")
    _text(root, "current-page-number", "1", type="integer")
    _text(root, "page-size", str(PAGE_SIZE), type="integer")
    _text(root, "total-items", str(len(txs)), type="integer")
    root.extend(txs)
    return _xml(root)


async def get_transaction(request: Request) -> Response:
    """GET transactions/{id}."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account)
    if fault:
        return _fault_response(fault)
    now = sandbox_of(request).clock.now()
    charge = account.get(request.path_params["transaction_id"], now)
    if charge is None:
        return Response("", 404, media_type=XML)
    return _xml(render(charge, account, now))


def _validation_error(attribute: str, code: str, message: str) -> Response:
    root = Element("api-error-response")
    errors = SubElement(SubElement(root, "errors"), "transaction")
    inner = SubElement(errors, "errors", type="array")
    error = SubElement(inner, "error")
    _text(error, "code", code)
    _text(error, "attribute", attribute)
    _text(error, "message", message)
    _text(root, "message", message)
    return _xml(root, 422)


async def create_transaction(request: Request) -> Response:
    """POST transactions: a sale retrying an earlier transaction; idempotent by Idempotency-Key."""
    account = _account(request)
    if isinstance(account, Response):
        return account
    fault = await request_fault(account, write=True)
    if fault:
        return _fault_response(fault)
    body = await _parse(request)
    if isinstance(body, Response):
        return body
    fields = {
        "type": body.findtext("type") or "",
        "amount": body.findtext("amount") or "",
        "customer-id": body.findtext("customer-id"),
        "retry-of": body.findtext("custom-fields/retry-of") or "",
        "order-id": body.findtext("order-id"),
        "payment-method-token": body.findtext("payment-method-token"),
    }
    key = request.headers.get("idempotency-key")
    print_ = fingerprint(fields)
    if key is not None and key in account.idempotency:
        stored = account.idempotency[key]
        if stored.fingerprint != print_:
            return _api_error(409, "Idempotency-Key was already used with different parameters")
        account.replays[key] = account.replays.get(key, 0) + 1
        return replay(stored)
    if fields["type"] != "sale":
        return _validation_error("type", "91523", "Transaction type is invalid.")
    if not fields["retry-of"]:
        return _validation_error("retry_of", "92917", "custom-fields/retry-of is required.")
    now = sandbox_of(request).clock.now()
    original = account.get(fields["retry-of"], now)
    try:
        if original is None:
            raise RetryRefused(f"No such transaction: {fields['retry-of']}", "retry_of")
        amount = codes.minor_units(fields["amount"] or "", original.currency)
        charge = account.retry(
            now,
            retry_of=fields["retry-of"],
            idempotency_key=key,
            amount_minor=amount,
            currency=original.currency,
            customer=fields["customer-id"],
            reference=fields["order-id"],
            payment_method=fields["payment-method-token"],
        )
    except ValueError:
        return _validation_error("amount", "81503", "Amount is an invalid format.")
    except RetryRefused as exc:
        return _validation_error(exc.param or "base", "91500", exc.message)
    tx = render(charge, account, now)
    if charge.status == "succeeded":
        response = _xml(tx, 201)
    else:
        root = Element("api-error-response")
        SubElement(SubElement(root, "errors"), "errors", type="array")
        _text(root, "message", tx.findtext("processor-response-text") or "Gateway Rejected")
        root.append(tx)
        response = _xml(root, 422)
    return remember(account, key, print_, response)


routes = [
    Route(
        "/merchants/{merchant_id}/transactions/advanced_search_ids", search_ids, methods=["POST"]
    ),
    Route("/merchants/{merchant_id}/transactions/advanced_search", search, methods=["POST"]),
    Route("/merchants/{merchant_id}/transactions", create_transaction, methods=["POST"]),
    Route(
        "/merchants/{merchant_id}/transactions/{transaction_id}",
        get_transaction,
        methods=["GET"],
    ),
]
