"""Adyen: signed AUTHORISATION notifications pushed to a webhook, and the /payments retry call."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import Any

import httpx
import orjson
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
from sandbox.state import Account, Charge, RetryRefused, Sandbox

BATCH_SIZE = 50
BATCHES_PER_TICK = 4
TICK_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_IDEMPOTENCY_KEY = 64
_FUNDING = {"credit": "CREDIT", "debit": "DEBIT", "prepaid": "PREPAID"}
_CET = timezone(timedelta(hours=1))


def signing_string(item: dict[str, Any]) -> str:
    """Adyen's HMAC payload: eight notification fields joined by colons."""
    amount = item.get("amount") or {}
    parts = (
        item.get("pspReference"),
        item.get("originalReference"),
        item.get("merchantAccountCode"),
        item.get("merchantReference"),
        amount.get("value") if isinstance(amount, dict) else None,
        amount.get("currency") if isinstance(amount, dict) else None,
        item.get("eventCode"),
        item.get("success"),
    )
    return ":".join("" if p is None else str(p) for p in parts)


def sign(item: dict[str, Any], key: bytes) -> str:
    """Base64 of the HMAC-SHA256 of the signing string."""
    mac = hmac.new(key, signing_string(item).encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def _refusal(charge: Charge) -> tuple[str, str, str]:
    """(refusalReasonCode, refusalReason, refusalReasonRaw) of a declined charge."""
    category = charge.category or "other"
    root_id = charge.root.id if charge.root else charge.id
    code, reason = codes.pick(codes.ADYEN_CODES[category], "adyen", root_id)
    network = charge.network_code or ""
    raw = f"{network} : {codes.NETWORK_TEXTS.get(network, 'Declined')}"
    if category == "card_expired" and charge.style % 2 == 0:
        raw = "DECLINED Expiry Incorrect"
    # Adyen answers many declines with the generic "Refused"; the raw text keeps the real code.
    if category != "processor_blocked" and charge.style % 3 == 0:
        code, reason = "2", "Refused"
    return code, reason, raw


def additional_data(charge: Charge) -> dict[str, str]:
    """additionalData fields of a charge (without the signature)."""
    card = charge.card
    data = {
        "cardSummary": card.last4,
        "cardBin": card.bin,
        "expiryDate": f"{card.exp_month}/{card.exp_year}",
        "issuerCountry": card.country or "unknown",
        "shopperReference": charge.customer,
    }
    if card.funding in _FUNDING:
        data["fundingSource"] = _FUNDING[card.funding]
    if charge.status == "failed":
        code, _, raw = _refusal(charge)
        data["refusalReasonRaw"] = raw
        data["refusalReasonCode"] = code
        if charge.advice_code:
            text = codes.MASTERCARD_ADVICE_TEXTS.get(charge.advice_code, "")
            data["merchantAdviceCode"] = f"{charge.advice_code} : {text}"
    for name, value in charge.metadata:
        data[f"metadata.{name}"] = value
    data.update(_interaction(charge))
    address = charge.address
    if address is not None:
        data["billingAddress.country"] = address[0]
        if address[1] is not None:
            data["billingAddress.stateOrProvince"] = address[1]
    return data


def _interaction(charge: Charge) -> dict[str, str]:
    """Who initiated the payment: a stored-details subscription charge (the merchant's billing
    system, and the portal's retries), or the shopper on a pay-by-link page."""
    if charge.paid_by == "customer":
        link = "PL" + codes.token("0123456789ABCDEF", 16, "link", charge.id)
        return {
            "shopperInteraction": "Ecommerce",
            "recurringProcessingModel": "CardOnFile",
            "paymentLinkId": link,
            "threeDAuthenticated": "true",
        }
    return {"shopperInteraction": "ContAuth", "recurringProcessingModel": "Subscription"}


def rescue_item(charge: Charge, account: Account) -> dict[str, Any]:
    """The AUTORESCUE item of a payment Auto Rescue retried and got approved (unsigned)."""
    root = charge.root or charge
    return {
        "additionalData": {
            "retry.rescueReference": root.id,
            "merchantOrderReference": root.reference,
        },
        "amount": {"currency": charge.currency, "value": charge.amount_minor},
        "eventCode": "AUTORESCUE",
        "eventDate": charge.created.replace(microsecond=0).isoformat(),
        "merchantAccountCode": account.account_id,
        "merchantReference": charge.reference,
        "originalReference": root.id,
        "paymentMethod": codes.ADYEN_METHODS[charge.card.brand],
        "pspReference": charge.id,
        "reason": "",
        "success": "true",
    }


def notification_item(charge: Charge, account: Account) -> dict[str, Any]:
    """The NotificationRequestItem of a charge's AUTHORISATION (unsigned); a payment Auto
    Rescue approved is told by its AUTORESCUE item instead."""
    if charge.paid_by == "processor":
        return rescue_item(charge, account)
    paid = charge.status == "succeeded"
    card = charge.card
    when = charge.created.replace(microsecond=0)
    if charge.style % 2:
        when = when.astimezone(_CET)
    if paid:
        auth = codes.token("0123456789ABCDEF", 6, "auth", charge.id)
        reason = f"{auth}:{card.last4}:{card.exp_month:02d}/{card.exp_year}"
    else:
        reason = _refusal(charge)[1]
    return {
        "additionalData": additional_data(charge),
        "amount": {"currency": charge.currency, "value": charge.amount_minor},
        "eventCode": "AUTHORISATION",
        "eventDate": when.isoformat(),
        "merchantAccountCode": account.account_id,
        "merchantReference": charge.reference,
        "paymentMethod": codes.ADYEN_METHODS[card.brand],
        "pspReference": charge.id,
        "reason": reason,
        "success": "true" if paid else "false",
    }


def _corrupt_item(item: dict[str, Any], kind: str) -> dict[str, Any]:
    return corrupt_json(item, kind)


def _signed(item: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    if key is not None:
        extra = dict(item.get("additionalData") or {})
        extra["hmacSignature"] = sign(item, key)
        item = {**item, "additionalData": extra}
    return {"NotificationRequestItem": item}


@dataclass
class _Outbox:
    """Delivery state of one account's webhook."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    backoff: float = 0.0
    next_attempt: float = 0.0
    last_error: str | None = None
    delivered: int = 0
    repeated: set[str] = field(default_factory=set)


class Pusher:
    """Pushes due AUTHORISATION notifications to each Adyen account's webhook, with retries."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.client: httpx.AsyncClient | None = None
        self._state: dict[str, _Outbox] = {}

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=5.0, trust_env=False)
        return self.client

    async def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def run(self) -> None:
        """Push forever, every tick, what became due since the last push."""
        while True:
            for account in list(self.sandbox.accounts.values()):
                if account.pushes:
                    await self.push(account, force=False, max_batches=BATCHES_PER_TICK)
            await asyncio.sleep(TICK_SECONDS)

    async def push(self, account: Account, *, force: bool, max_batches: int) -> dict[str, Any]:
        """Send batches until the outbox is empty, a delivery fails, or max_batches were sent."""
        state = self._state.setdefault(account.account_id, _Outbox())
        sent = batches = 0
        async with state.lock:
            account.advance(self.sandbox.clock.now())
            if not force and time.monotonic() < state.next_attempt:
                return self._summary(account, state, sent, batches)
            while account.outbox and batches < max_batches:
                batch = [account.outbox[i] for i in range(min(BATCH_SIZE, len(account.outbox)))]
                if await self._deliver(account, state, batch):
                    for _ in batch:
                        account.outbox.popleft()
                    sent += len(batch)
                    batches += 1
                    state.delivered += len(batch)
                    state.backoff = 0.0
                    if account.faults.duplicates and batch[0].id not in state.repeated:
                        # A duplicate delivery: the first item of this batch comes again later.
                        state.repeated.add(batch[0].id)
                        account.outbox.append(batch[0])
                else:
                    state.backoff = min(max(state.backoff * 2, TICK_SECONDS), MAX_BACKOFF_SECONDS)
                    state.next_attempt = time.monotonic() + state.backoff
                    break
        return self._summary(account, state, sent, batches)

    @staticmethod
    def _summary(account: Account, state: _Outbox, sent: int, batches: int) -> dict[str, Any]:
        return {
            "sent": sent,
            "batches": batches,
            "pending": len(account.outbox),
            "delivered": state.delivered,
            "last_error": state.last_error,
        }

    async def _deliver(self, account: Account, state: _Outbox, batch: list[Charge]) -> bool:
        items = [notification_item(c, account) for c in batch]
        items = page_effects(account, items, None)
        items = corrupt_page(account, items, _corrupt_item)
        # Signed after any corruption: the sender is authentic, its records are broken.
        key = account.hmac_key
        if key is not None and account.faults.bad_signature > 0:
            account.faults.bad_signature -= 1
            key = bytes(b ^ 0xFF for b in key)
        body = {"live": "false", "notificationItems": [_signed(i, key) for i in items]}
        assert account.webhook_url is not None  # noqa: S101 -- only pushing accounts get here
        try:
            response = await self._client().post(
                account.webhook_url,
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if response.status_code == 200 and response.content.strip() == b"[accepted]":
            state.last_error = None
            return True
        state.last_error = f"HTTP {response.status_code}: {response.content[:200]!r}"
        return False


def _error(status: int, code: str, message: str, kind: str) -> Response:
    return json_response(
        {"status": status, "errorCode": code, "message": message, "errorType": kind}, status
    )


def _fault_response(kind: str) -> Response:
    if kind == "rate_limit":
        response = _error(429, "429", "Too many requests", "validation")
        response.headers["Retry-After"] = "1"
        return response
    return _error(500, "905", "Internal error", "internal")


def render_payment(charge: Charge) -> dict[str, Any]:
    """The /payments response for a charge."""
    body: dict[str, Any] = {
        "additionalData": additional_data(charge),
        "amount": {"currency": charge.currency, "value": charge.amount_minor},
        "merchantReference": charge.reference,
        "pspReference": charge.id,
        "resultCode": "Authorised" if charge.status == "succeeded" else "Refused",
    }
    if charge.status == "failed":
        code, reason, _ = _refusal(charge)
        body["refusalReason"] = reason
        body["refusalReasonCode"] = code
    return body


async def payments(request: Request) -> Response:
    """POST /v71/payments: a recurring (ContAuth) retry of an earlier payment."""
    account = sandbox_of(request).by_key("adyen", request.headers.get("x-api-key", ""))
    if account is None:
        return _error(401, "000", "HTTP Status Response - Unauthorized", "security")
    # Adyen has no list API, so request faults apply to this call.
    fault = await request_fault(account)
    if fault:
        return _fault_response(fault)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "702", "Structure of the request is invalid", "validation")
    if not isinstance(body, dict):
        return _error(400, "702", "Structure of the request is invalid", "validation")
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        return _error(422, "702", "Idempotency-Key must be 1 to 64 characters", "validation")
    print_ = fingerprint(body)
    if key is not None and key in account.idempotency:
        stored = account.idempotency[key]
        if stored.fingerprint != print_:
            return _error(422, "704", "request already processed or in progress", "validation")
        account.replays[key] = account.replays.get(key, 0) + 1
        return replay(stored)
    if body.get("merchantAccount") != account.account_id:
        return _error(403, "901", "Invalid Merchant Account", "security")
    amount = body.get("amount")
    metadata = body.get("metadata")
    retry_of = metadata.get("retry_of") if isinstance(metadata, dict) else None
    if (
        not isinstance(amount, dict)
        or not isinstance(amount.get("value"), int)
        or not isinstance(amount.get("currency"), str)
    ):
        return _error(
            422, "100", "Required field 'amount' is not provided or invalid", "validation"
        )
    if not isinstance(retry_of, str) or not retry_of:
        return _error(
            422, "100", "Required field 'metadata.retry_of' is not provided", "validation"
        )
    if not isinstance(body.get("reference"), str) or not body["reference"]:
        return _error(422, "130", "Required field 'reference' is not provided", "validation")
    shopper = body.get("shopperReference")
    method = body.get("paymentMethod")
    stored_id = method.get("storedPaymentMethodId") if isinstance(method, dict) else None
    try:
        charge = account.retry(
            sandbox_of(request).clock.now(),
            retry_of=retry_of,
            idempotency_key=key,
            amount_minor=amount["value"],
            currency=amount["currency"],
            customer=shopper if isinstance(shopper, str) else None,
            reference=body["reference"],
            payment_method=stored_id if isinstance(stored_id, str) else None,
        )
    except RetryRefused as exc:
        return _error(422, "167", exc.message, "validation")
    return remember(account, key, print_, json_response(render_payment(charge)))


routes = [Route("/v71/payments", payments, methods=["POST"])]
